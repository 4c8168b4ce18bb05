"""Atari env stepping (not a test): Shoal's ale-py backends against EnvPool, same games, same run.

    python benchmarks/atari_env_throughput.py                        # ALE/Pong-v5, 16 envs, 8 s each
    python benchmarks/atari_env_throughput.py --env ALE/Breakout-v5 --seconds 4

Agent steps per second of 16 games with random actions (drawn up front), each with the same
preprocessing: frame skip 4 with max-pooling, 84x84 grayscale, 4 stacked frames, 30 no-ops,
sticky actions 0.25 (v5), life loss as episode end, clipped rewards:

- shoal serial: shoal.atari's wrappers, every game stepped in this process;
- shoal multiprocessing: the same in --workers shared-memory worker processes (what the derived
  recipe runs);
- envpool, when installed (`pip install envpool`), with 1 and --workers threads.

On a shared machine trust the ratios of one run, not the absolute figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable

import numpy as np

from shoal.vector import make

NUM_ENVS = 16
ACTION_BLOCK = 64


def steps_per_second(step: Callable[[np.ndarray], object], actions: np.ndarray, seconds: float) -> float:
    step(actions[0])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(actions[count % ACTION_BLOCK])
        count += 1
    return count * actions.shape[1] / (time.perf_counter() - start)


def bench_shoal(env_id: str, backend: str, workers: int, actions: np.ndarray, seconds: float) -> float:
    env = make(f"gym:{env_id}", backend=backend, num_envs=NUM_ENVS, num_workers=workers, seed=0)
    try:
        env.reset(seed=0)
        return steps_per_second(env.step, actions, seconds)
    finally:
        env.close()


def bench_envpool(env_id: str, threads: int, actions: np.ndarray, seconds: float) -> float:
    import envpool

    task = env_id.removeprefix("ALE/")
    env = envpool.make(
        task,
        env_type="gymnasium",
        num_envs=NUM_ENVS,
        batch_size=NUM_ENVS,
        num_threads=threads,
        seed=0,
        episodic_life=True,
        reward_clip=True,
        repeat_action_probability=0.25,
        noop_max=30,
        stack_num=4,
        img_height=84,
        img_width=84,
    )
    try:
        env.reset()
        return steps_per_second(env.step, actions, seconds)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ALE/Pong-v5", help="an ale-py id (ALE/<Game>-v5)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=2, help="worker processes / EnvPool threads")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    probe = make(f"gym:{args.env}", num_envs=1)
    actions_n = int(probe.single_action_space.n)
    probe.close()
    actions = np.random.default_rng(0).integers(0, actions_n, size=(ACTION_BLOCK, NUM_ENVS)).astype(np.int32)
    results = {
        "shoal serial": bench_shoal(args.env, "serial", 1, actions, args.seconds),
        f"shoal multiprocessing x{args.workers}": bench_shoal(
            args.env, "multiprocessing", args.workers, actions, args.seconds
        ),
    }
    if importlib.util.find_spec("envpool") is not None:
        for threads in sorted({1, args.workers}):
            results[f"envpool {threads} thread(s)"] = bench_envpool(args.env, threads, actions, args.seconds)
    else:
        print("envpool is not installed (pip install envpool): measured Shoal's backends only")
    base = results["shoal serial"]
    print(f"{args.env}, {NUM_ENVS} envs, random actions, {args.seconds:g} s per measurement")
    for name, sps in results.items():
        print(f"  {name:<28} {sps:>9,.0f} agent steps/s  ({sps / base:.2f}x shoal serial)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
