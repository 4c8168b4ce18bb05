"""One trained Atari policy played on both backends (not a test): ale-py in this process and
EnvPool. Equivalent envs give the same mean score, within its standard error.

    python benchmarks/atari_same_policy.py runs/pong/model.pt --games 24
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shoal.atari_pool import make_envpool_atari
from shoal.emulation import make_gymnasium
from shoal.train.checkpoint import load_agent


def play(agent, env, games: int) -> list[float]:
    """Scores of the first `games` whole games `agent` plays in `env` (sampled actions)."""
    obs, _ = env.reset()
    scores: list[float] = []
    with torch.no_grad():
        while len(scores) < games:
            obs, *_, infos = env.step(agent.act(obs))
            scores += [float(info["score"]) for info in infos if "score" in info]
    env.close()
    return scores[:games]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a run folder, model.pt or checkpoint.pt of an ale-py game")
    parser.add_argument("--games", type=int, default=24)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    agent = load_agent(args.checkpoint)
    env_id = agent.config.env.name.removeprefix("gym:")
    options = agent.config.env.options
    backends = {
        "envpool": lambda: make_envpool_atari(env_id, num_envs=args.envs, seed=args.seed, **options),
        "ale-py": lambda: make_gymnasium(env_id, args.envs, args.seed, **options),
    }
    print(f"{env_id}, {args.games} games per backend, {args.envs} envs, torch threads 2")
    for name, make in backends.items():
        start = time.perf_counter()
        scores = np.array(play(agent, make(), args.games))
        sem = scores.std(ddof=1) / np.sqrt(len(scores))
        print(f"  {name:8s} mean score {scores.mean():+.2f} +- {sem:.2f} (standard error), "
              f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
