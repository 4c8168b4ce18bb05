"""Time-to-score benchmarks (not a test): CartPole to 475 and Breakout against PufferLib 3.0.

    python benchmarks/learning.py cartpole --seeds 3
    python benchmarks/learning.py cartpole --seeds 3 --reference none
    python benchmarks/learning.py breakout --seeds 3
    python benchmarks/learning.py breakout --seeds 1 --minutes 1 -- --train.total-steps 5000000
    python benchmarks/learning.py breakout --out benchmarks/results/processes2 -- --train.processes 2
    python benchmarks/learning.py atari-pong --minutes 30 --seeds 3 --target 18    # benchmarks/atari.py
    python benchmarks/learning.py atari-breakout --minutes 60 --references none

Each run trains with shoal/configs/<env>.toml (plus any config flags after `--`), then the script
prints and saves (in --out) a JSON summary and PNG curves of score against agent steps and
against wall time, every seed and (with several) their min-max band.

CartPole stops at its target. Breakout runs its whole schedule, so that the whole curve can be
set against PufferLib 3.0's (drawn beside ours): the script prints every seed's score_100 at each
point of PufferLib's curve and whether the worst seed is at least PufferLib's score there, and
reads the time to a mean score of 700 off the curve.

For CartPole the reference is measured in the same run: Stable-Baselines3 PPO with the RL Zoo's
tuned CartPole-v1 hyperparameters (SB3_CARTPOLE) on Gymnasium's CartPole-v1, 8 envs in a
DummyVecEnv. Per seed ours runs first and SB3 right after it, so machine noise hits both; both
use the same number of torch threads (ours' train.torch_threads, 1 in shoal/configs/cartpole.toml).
It needs the optional extra `pip install -e ".[bench]"` (stable-baselines3); without it the
script says so and runs ours only (`--reference none` skips it on purpose).

How the two clocks are read, the same way for both: time starts when training starts, after
the envs, the policy and the optimizer are built and the envs reset (ours: the trainer's
wall_time; SB3: its callback's on_training_start, after `learn`'s own setup), and stops at the
first moment the mean return of the last (up to) 100 finished episodes is >= 475. Ours checks
that once per epoch (512 steps), after the epoch's update; SB3's callback checks after every
vector step (8 steps), so if anything the reference is credited earlier than ours.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from shoal.core.config import load_config  # noqa: E402
from shoal.train import launch, train  # noqa: E402

# PufferLib 3.0 on Breakout: (agent steps, score), at about 110K steps/s on this machine.
PUFFER_BREAKOUT = [
    (3.4e6, 5),
    (11e6, 9),
    (15e6, 22),
    (20e6, 100),
    (26e6, 281),
    (32e6, 361),
    (43e6, 416),
    (61e6, 508),
    (73e6, 731),
    (79e6, 754),
    (90e6, 761),
]
PUFFER_SPS = 110_000
# Snake: a mean length at death of 30 (a random policy dies at length ~1.2; the longest is 128).
SNAKE_TARGET = 30.0
TARGETS = {"cartpole": 475.0, "breakout": 700.0, "pong": 20.0, "snake": SNAKE_TARGET}
# What each game's curve shows: score_100 (the game's score: CartPole's and Breakout's are their
# returns, Snake's is the length at death), or return_100 for Pong, whose score counts only the
# points won while its return is the point difference (+21 = every game won 21-0).
MEASURES = {"cartpole": "score_100", "breakout": "score_100", "pong": "return_100", "snake": "score_100"}
# Games that stop at their target (the others run their whole schedule, for the whole curve).
STOP_AT_TARGET = {"cartpole", "pong"}

# The RL Zoo's tuned PPO settings for CartPole-v1 (rl-baselines3-zoo, hyperparams/ppo.yml):
#   n_envs 8, n_timesteps 1e5, policy MlpPolicy, n_steps 32, batch_size 256, gae_lambda 0.8,
#   gamma 0.98, n_epochs 20, ent_coef 0.0, learning_rate lin_0.001, clip_range lin_0.2.
# Everything else is SB3's PPO default (64x64 tanh MLP, vf_coef 0.5, max_grad_norm 0.5, ...).
# "lin_X" is the zoo's linear_schedule: X * progress_remaining, decaying over n_timesteps.
SB3_CARTPOLE: dict[str, Any] = {
    "env_id": "CartPole-v1",
    "n_envs": 8,
    "n_timesteps": 100_000,
    "policy": "MlpPolicy",
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": "lin_0.001",
    "clip_range": "lin_0.2",
}
SB3_MISSING = (
    "stable-baselines3 is not installed, so the in-run SB3 reference is skipped and only Shoal "
    'runs; install it with `pip install -e ".[bench]"` (or `pip install stable-baselines3`).'
)


class Linear:
    """The RL Zoo's linear schedule: `initial * progress_remaining` (1 at the start, 0 at the end)."""

    def __init__(self, initial: float) -> None:
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial


def zoo_value(value: Any) -> Any:
    """A zoo hyperparameter as SB3 takes it: "lin_X" becomes a linear schedule from X."""
    if isinstance(value, str) and value.startswith("lin_"):
        return Linear(float(value[4:]))
    return value


class EpisodeTracker:
    """Mean return of the last `window` finished episodes, from SB3's Monitor infos, and the first
    time and step count at which it reached `target` (kept apart from SB3 so tests need no SB3)."""

    def __init__(self, target: float | None, window: int = 100) -> None:
        self.target = target
        self.returns: deque[float] = deque(maxlen=window)
        self.episodes = 0
        self.time_to_target: float | None = None
        self.steps_to_target: int | None = None

    def mean(self) -> float:
        return sum(self.returns) / len(self.returns) if self.returns else float("nan")

    def update(self, infos: list[dict[str, Any]], steps: int, elapsed: float) -> bool:
        """Take one vector step's infos; True once the target is (or already was) reached."""
        for info in infos:
            episode = info.get("episode")
            if episode is not None:
                self.returns.append(float(episode["r"]))
                self.episodes += 1
        if (
            self.time_to_target is None
            and self.target is not None
            and self.returns
            and self.mean() >= self.target
        ):
            self.time_to_target, self.steps_to_target = elapsed, steps
        return self.time_to_target is not None


def sb3_available() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def run_sb3(seed: int, minutes: float | None, threads: int, target: float | None) -> dict:
    """SB3 PPO with the zoo's CartPole-v1 settings until the target, the zoo's step budget, or the
    wall-time limit, whichever comes first."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    hp = SB3_CARTPOLE
    limit = None if minutes is None else minutes * 60.0
    tracker = EpisodeTracker(target)
    curve: list[list[float]] = []

    class StopAtTarget(BaseCallback):
        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            elapsed = time.perf_counter() - self.start
            reached = tracker.update(self.locals["infos"], self.num_timesteps, elapsed)
            if reached or (limit is not None and elapsed >= limit):
                curve.append([self.num_timesteps, elapsed, tracker.mean()])
                return False
            return True

        def _on_rollout_end(self) -> None:
            curve.append([self.num_timesteps, time.perf_counter() - self.start, tracker.mean()])

    torch.set_num_threads(threads)
    env = make_vec_env(hp["env_id"], n_envs=hp["n_envs"], seed=seed, vec_env_cls=DummyVecEnv)
    skip = {"env_id", "n_envs", "n_timesteps", "policy"}
    kwargs = {k: zoo_value(v) for k, v in hp.items() if k not in skip}
    model = PPO(hp["policy"], env, seed=seed, device="cpu", verbose=0, **kwargs)
    callback = StopAtTarget()
    model.learn(total_timesteps=hp["n_timesteps"], callback=callback)
    wall_time = time.perf_counter() - callback.start
    env.close()
    steps = int(model.num_timesteps)
    return {
        "seed": seed,
        "reached": tracker.time_to_target is not None,
        "time_to_target": tracker.time_to_target,
        "steps_to_target": tracker.steps_to_target,
        "final_score_100": tracker.mean(),
        "agent_steps": steps,
        "wall_time": wall_time,
        "mean_sps": steps / max(wall_time, 1e-9),
        "torch_threads": torch.get_num_threads(),
        "curve": curve,
    }


def run_one(env: str, seed: int, minutes: float | None, flags: list[str], run_dir: str) -> dict:
    """Train one seed. CartPole stops at its target; Breakout runs its whole schedule so that
    the whole curve can be set against PufferLib's, and its time to the target is read from the
    curve (the first epoch whose score_100 reaches it)."""
    overrides = [
        "--train.seed",
        str(seed),
        "--run.dir",
        run_dir,
        "--run.name",
        f"{env}_seed{seed}",
        "--run.quiet",
        "true",
        *flags,
    ]
    cfg = load_config(env, overrides)
    target = TARGETS.get(env)
    measure = MEASURES.get(env, "score_100")
    if env == "cartpole" and cfg.train.target_score is not None:
        target = cfg.train.target_score
    stop_at_target = env in STOP_AT_TARGET and target is not None
    limit = None if minutes is None else minutes * 60.0

    def on_epoch(metrics: dict) -> bool:
        if stop_at_target and metrics.get(measure, math.nan) >= target:
            return False
        return limit is None or metrics["wall_time"] < limit

    if cfg.train.processes > 1:
        history = run_processes(env, cfg.train.processes, overrides, Path(run_dir) / f"{env}_seed{seed}")
    else:
        history = train(cfg, on_epoch=on_epoch).history
    last = history[-1]
    curve = [[m["agent_steps"], m["wall_time"], m.get(measure, m["score"])] for m in history]
    first = next((point for point in curve if target is not None and point[2] >= target), None)
    return {
        "seed": seed,
        "reached": first is not None,
        "time_to_target": None if first is None else first[1],
        "steps_to_target": None if first is None else first[0],
        "measure": measure,
        "final_score_100": last.get(measure),
        "agent_steps": last["agent_steps"],
        "wall_time": last["wall_time"],
        "mean_sps": last["agent_steps"] / max(last["wall_time"], 1e-9),
        "torch_threads": last.get("torch_threads", torch.get_num_threads()),
        "processes": cfg.train.processes,
        "curve": curve,
    }


def plot(
    env: str, runs: list[dict], target: float | None, out: Path, reference: list[dict] | None = None
) -> list[Path]:
    paths = []
    for axis, label in ((0, "agent steps"), (1, "wall time (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, run in enumerate(runs):
            xs = [p[axis] for p in run["curve"]]
            ys = [p[2] for p in run["curve"]]
            color = plt.cm.Blues(0.5 + 0.4 * i / max(len(runs), 1))
            ax.plot(xs, ys, color=color, label=f"Shoal seed {run['seed']}")
        for i, run in enumerate(reference or []):
            xs = [p[axis] for p in run["curve"]]
            ys = [p[2] for p in run["curve"]]
            color = plt.cm.Oranges(0.5 + 0.4 * i / max(len(reference or []), 1))
            ax.plot(xs, ys, "--", color=color, label=f"SB3 PPO, RL Zoo settings, seed {run['seed']}")
        if len(runs) > 1:
            grid = np.linspace(0, min(r["curve"][-1][axis] for r in runs if r["curve"]), 200)
            stack = np.array(
                [np.interp(grid, [p[axis] for p in r["curve"]], [p[2] for p in r["curve"]]) for r in runs]
            )
            ax.fill_between(
                grid,
                stack.min(axis=0),
                stack.max(axis=0),
                color="tab:blue",
                alpha=0.15,
                label=f"Shoal, min-max over {len(runs)} seeds",
            )
        if env == "breakout":
            ref_x = [s if axis == 0 else s / PUFFER_SPS for s, _ in PUFFER_BREAKOUT]
            ax.plot(
                ref_x,
                [v for _, v in PUFFER_BREAKOUT],
                "k--o",
                markersize=3,
                label="PufferLib 3.0" + ("" if axis == 0 else f" (at {PUFFER_SPS // 1000}K steps/s)"),
            )
        if target is not None:
            ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(label)
        what = "return" if MEASURES.get(env) == "return_100" else "score"
        ax.set_ylabel(f"{what} (mean of last 100 episodes)")
        ax.set_title(f"{env}: {what} vs {label}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"{env}_score_vs_{'steps' if axis == 0 else 'time'}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def versus_puffer(runs: list[dict]) -> list[dict]:
    """Each seed's score_100 at every point of PufferLib's curve (linear between our epochs;
    None past the end of a run), and whether the worst seed is at least PufferLib's score
    (None where some run stopped before that point)."""
    rows = []
    for steps, puffer in PUFFER_BREAKOUT:
        ours = []
        for run in runs:
            xs = [p[0] for p in run["curve"]]
            ys = [p[2] for p in run["curve"]]
            ours.append(float(np.interp(steps, xs, ys)) if xs and xs[0] <= steps <= xs[-1] else None)
        known = [s for s in ours if s is not None]
        worst = min(known) if len(known) == len(ours) else None
        rows.append(
            {
                "agent_steps": steps,
                "puffer": puffer,
                "shoal": ours,
                "shoal_min": worst,
                "at_least_puffer": None if worst is None else worst >= puffer,
            }
        )
    return rows


def medians(runs: list[dict]) -> tuple[float | None, float | None]:
    """Median time and steps to the target; a run that missed it counts as infinitely slow."""
    if not runs:
        return None, None
    times = [r["time_to_target"] if r["reached"] else math.inf for r in runs]
    steps = [r["steps_to_target"] if r["reached"] else math.inf for r in runs]
    return statistics.median(times), statistics.median(steps)


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def run_line(name: str, run: dict) -> str:
    return (
        f"seed {run['seed']} {name + ':':<6} reached={run['reached']} "
        f"time_to_target={fmt(run['time_to_target'], '.2f')} s steps_to_target={run['steps_to_target']} "
        f"steps={run['agent_steps']} score_100={fmt(run['final_score_100'], '.1f')} "
        f"sps={run['mean_sps']:.0f} torch_threads={run['torch_threads']}"
    )


def run_processes(env: str, processes: int, overrides: list[str], folder: Path) -> list[dict]:
    """A train.processes > 1 run: `shoal train` starts the processes; its metrics come back
    from the run folder (every epoch's line of metrics.jsonl)."""
    status = launch.run_processes(processes, ["train", env, *overrides])
    metrics = folder / "metrics.jsonl"
    if status != 0 or not metrics.is_file():
        raise RuntimeError(f"the {processes}-process run of {env} failed (exit status {status})")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


# Atari from pixels lives in benchmarks/atari.py (Shoal vs SB3 with the RL Zoo's Atari settings,
# same wall budget); these names hand the rest of the command line to it.
ATARI = {"atari-pong": "ALE/Pong-v5", "atari-breakout": "ALE/Breakout-v5"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ATARI:
        import atari

        return atari.main([ATARI[argv[0]], *argv[1:]])
    flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", choices=list(TARGETS))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time limit per run")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNGs")
    parser.add_argument(
        "--reference",
        choices=["auto", "sb3", "none"],
        default="auto",
        help="in-run reference for cartpole: Stable-Baselines3 PPO with the RL Zoo's settings "
        "(auto: when stable-baselines3 is installed; needs the 'bench' extra)",
    )
    args = parser.parse_args(argv)
    if args.minutes is not None and load_config(args.env, flags).train.processes > 1:
        parser.error("--minutes stops a run from inside its process; it can't take train.processes > 1")
    if args.env != "cartpole" and args.reference == "sb3":
        parser.error("--reference sb3 is for cartpole (Breakout is drawn against PufferLib 3.0's curve)")

    use_sb3 = args.env == "cartpole" and args.reference != "none"
    if use_sb3 and not sb3_available():
        print(SB3_MISSING, flush=True)
        use_sb3 = False
    target = TARGETS.get(args.env)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    reference: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shoal_bench_") as run_dir:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_one(args.env, seed, args.minutes, flags, run_dir)
            runs.append(run)
            print(run_line("shoal", run), flush=True)
            if use_sb3:
                ref = run_sb3(seed, args.minutes, run["torch_threads"], target)
                reference.append(ref)
                print(run_line("sb3", ref), flush=True)
    median_time, median_steps = medians(runs)
    summary: dict[str, Any] = {
        "env": args.env,
        "flags": flags,
        "target": target,
        "median_time_to_target": median_time,
        "median_steps_to_target": median_steps,
        "torch_threads": sorted({r["torch_threads"] for r in runs}),
        "runs": runs,
    }
    if args.env == "breakout":
        summary["versus_puffer"] = versus_puffer(runs)
    if reference:
        ref_time, ref_steps = medians(reference)
        ratio = ref_time / median_time if median_time and ref_time is not None else None
        summary["reference"] = {
            "name": "stable-baselines3 PPO, RL Zoo tuned CartPole-v1 settings",
            "stable_baselines3": __import__("stable_baselines3").__version__,
            "hyperparameters": SB3_CARTPOLE,
            "median_time_to_target": ref_time,
            "median_steps_to_target": ref_steps,
            "time_ratio_sb3_over_shoal": ratio,
            "runs": reference,
        }
    (out / f"{args.env}_learning.json").write_text(json.dumps(summary, indent=1) + "\n")
    paths = plot(args.env, runs, target, out, reference)
    if reference:
        print(f"\ntime and agent steps to a mean return of {target:g} (last 100 episodes):")
        print(f"{'seed':>4}  {'shoal s':>8}  {'shoal steps':>11}  {'sb3 s':>8}  {'sb3 steps':>9}")
        for ours, ref in zip(runs, reference, strict=True):
            print(
                f"{ours['seed']:>4}  {fmt(ours['time_to_target'], '8.2f'):>8}  "
                f"{fmt(ours['steps_to_target'], '11d'):>11}  {fmt(ref['time_to_target'], '8.2f'):>8}  "
                f"{fmt(ref['steps_to_target'], '9d'):>9}"
            )
        ref_summary = summary["reference"]
        print(
            f"{'med':>4}  {fmt(median_time, '8.2f'):>8}  {fmt(median_steps, '11.0f'):>11}  "
            f"{fmt(ref_summary['median_time_to_target'], '8.2f'):>8}  "
            f"{fmt(ref_summary['median_steps_to_target'], '9.0f'):>9}"
        )
        print(
            f"SB3/Shoal ratio of median times: {fmt(ref_summary['time_ratio_sb3_over_shoal'], '.2f')} "
            f"(torch threads {summary['torch_threads']} for both)"
        )
    if args.env == "breakout":
        print("\nscore_100 at the points of PufferLib 3.0's curve (agent steps):")
        print(
            f"{'steps':>6}  {'puffer':>6}  "
            + "  ".join(f"{'seed ' + str(r['seed']):>7}" for r in runs)
            + "  min>=puffer"
        )
        for row in summary["versus_puffer"]:
            cells = "  ".join(f"{fmt(v, '7.1f'):>7}" for v in row["shoal"])
            verdict = "-" if row["at_least_puffer"] is None else row["at_least_puffer"]
            print(f"{row['agent_steps'] / 1e6:>5.1f}M  {row['puffer']:>6}  {cells}  {verdict}")
    print(
        f"median time to {target}: {fmt(median_time, '.2f')} s; wrote "
        + ", ".join(str(p) for p in [out / f"{args.env}_learning.json", *paths])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
