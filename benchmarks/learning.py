"""Time-to-score benchmarks (not a test): CartPole to 475 and Breakout against PufferLib 3.0.

    python benchmarks/learning.py cartpole --seeds 3
    python benchmarks/learning.py breakout --seeds 1 --minutes 20
    python benchmarks/learning.py breakout --minutes 1 -- --env.num-envs 1024 --train.batch-size 65536

Each run trains with configs/<env>.toml (plus any config flags after `--`), then the script
prints and saves (in --out) a JSON summary and PNG curves of score against agent steps and
against wall time. For Breakout the PufferLib 3.0 reference curve is drawn beside ours.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shoal.config import load_config  # noqa: E402
from shoal.train import train  # noqa: E402

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
TARGETS = {"cartpole": 475.0, "breakout": 700.0}


def run_one(env: str, seed: int, minutes: float | None, flags: list[str], run_dir: str) -> dict:
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
    if cfg.train.target_score is None and env in TARGETS:
        cfg.train.target_score = TARGETS[env]
    limit = None if minutes is None else minutes * 60.0

    def on_epoch(metrics: dict) -> bool:
        return limit is None or metrics["wall_time"] < limit

    result = train(cfg, on_epoch=on_epoch)
    curve = [[m["agent_steps"], m["wall_time"], m.get("score_100", m["score"])] for m in result.history]
    reached = result.time_to_target is not None
    steps_to_target = next(
        (m["agent_steps"] for m in result.history if m.get("time_to_target") is not None), None
    )
    return {
        "seed": seed,
        "reached": reached,
        "time_to_target": result.time_to_target,
        "steps_to_target": steps_to_target,
        "final_score_100": result.metrics.get("score_100"),
        "agent_steps": result.metrics["agent_steps"],
        "wall_time": result.metrics["wall_time"],
        "mean_sps": result.metrics["agent_steps"] / max(result.metrics["wall_time"], 1e-9),
        "curve": curve,
    }


def plot(env: str, runs: list[dict], target: float | None, out: Path) -> list[Path]:
    paths = []
    for axis, label in ((0, "agent steps"), (1, "wall time (s)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run in runs:
            xs = [p[axis] for p in run["curve"]]
            ys = [p[2] for p in run["curve"]]
            ax.plot(xs, ys, label=f"Shoal seed {run['seed']}")
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
        ax.set_ylabel("score (mean of last 100 episodes)")
        ax.set_title(f"{env}: score vs {label}")
        ax.legend()
        fig.tight_layout()
        path = out / f"{env}_score_vs_{'steps' if axis == 0 else 'time'}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", choices=["cartpole", "breakout"])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-time limit per run")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNGs")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="shoal_bench_") as run_dir:
        for seed in range(args.seeds):
            run = run_one(args.env, seed, args.minutes, flags, run_dir)
            runs.append(run)
            print(
                f"seed {seed}: reached={run['reached']} time_to_target={run['time_to_target']} "
                f"steps={run['agent_steps']} score_100={run['final_score_100']:.1f} "
                f"sps={run['mean_sps']:.0f}",
                flush=True,
            )
    times = [r["time_to_target"] if r["reached"] else math.inf for r in runs]
    summary = {
        "env": args.env,
        "flags": flags,
        "target": TARGETS.get(args.env),
        "median_time_to_target": statistics.median(times) if times else None,
        "torch_threads_default": min(2, os.cpu_count() or 1),
        "runs": runs,
    }
    (out / f"{args.env}_learning.json").write_text(json.dumps(summary, indent=1) + "\n")
    paths = plot(args.env, runs, TARGETS.get(args.env), out)
    print(
        f"median time to {TARGETS.get(args.env)}: {summary['median_time_to_target']} s; wrote "
        + ", ".join(str(p) for p in [out / f"{args.env}_learning.json", *paths])
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
