"""Adaptive-horizon advantage vs tuned GAE, and the adaptive horizon at K = 64 vs K = 256.

    python benchmarks/adaptive_horizon.py                      # cartpole, memory, breakout; 3 seeds
    python benchmarks/adaptive_horizon.py --envs memory --seeds 2 --breakout-steps 2000000

Variants per env:
- ``gae``: the env's own config (shoal/configs/<env>.toml), tuned for GAE;
- ``gae_geo``: GAE with the adaptive variants' rollout geometry (below), which separates the
  effect of the advantage from that of the geometry;
- ``ah64`` / ``ah256``: the same config with ``train.advantage = "adaptive_horizon"`` (the
  estimator of shoal/train/horizon.py) and ``train.max_horizon`` 64 / 256. Lags past the
  rollout's steps per agent are never observed, so both adaptive variants use a rollout of at
  least 256 steps per agent (fewer envs, same batch size) — the same geometry for both, so K is
  the only difference between them.

Every run trains with ``shoal.train.train`` for a fixed number of agent steps (no early stop),
seeds interleaved (seed 0 of every variant, then seed 1, ...) so that machine noise falls on all
variants alike. Prints, per env and variant, the final mean score of the last 100 episodes
(median and range over seeds), the area under the score-vs-steps curve (mean score over the run),
wall time and steps/s, and the horizons the adaptive runs settled on. Writes
``OUT/adaptive_horizon.json`` and ``OUT/adaptive_horizon.png`` (score against agent steps and
against wall time, one row per env, median line and min-max band over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.core.config import load_config  # noqa: E402

# Rollout geometry for the adaptive variants: at least 256 steps per agent, same batch size.
AH_GEOMETRY = {
    "cartpole": ["--env.num-envs", "2", "--train.batch-size", "512"],
    "memory": ["--env.num-envs", "16", "--train.batch-size", "4096"],
    "breakout": ["--env.num-envs", "256", "--train.batch-size", "65536"],
}
DEFAULT_STEPS = {"cartpole": 150_000, "memory": 300_000, "breakout": 5_000_000}
VARIANTS = ("gae", "gae_geo", "ah64", "ah256")


def variant_flags(env: str, variant: str) -> list[str]:
    if variant == "gae":
        return []
    if variant == "gae_geo":
        return AH_GEOMETRY[env]
    horizon = {"ah64": 64, "ah256": 256}[variant]
    return [*AH_GEOMETRY[env], "--train.advantage", "adaptive_horizon", "--train.max-horizon", str(horizon)]


def compact(m: dict[str, Any]) -> dict[str, Any]:
    """One epoch of a score curve, rounded (keeps the JSON small)."""
    return {"agent_steps": m["agent_steps"], "wall_time": round(m["wall_time"], 2),
            "score_100": float(f"{m['score_100']:.4g}"), "horizon": m.get("horizon"), "sps": round(m["sps"])}


def thin(curve: list[dict[str, Any]], points: int = 120) -> list[dict[str, Any]]:
    """At most `points` evenly spaced epochs of a curve, always with its last one."""
    if len(curve) <= points:
        return curve
    keep = sorted(set(np.linspace(0, len(curve) - 1, points).round().astype(int).tolist()))
    return [curve[i] for i in keep]


def run_one(env: str, variant: str, seed: int, steps: int, torch_threads: int) -> dict[str, Any]:
    from shoal.train import train

    with tempfile.TemporaryDirectory(prefix="adaptive_horizon_") as tmp:
        cfg = load_config(env, [
            *variant_flags(env, variant), "--train.total-steps", str(steps), "--train.seed", str(seed),
            "--train.target-score", "none", "--train.torch-threads", str(torch_threads),
            "--run.dir", tmp, "--run.quiet", "true", "--run.log-interval", "1000000",
        ])
        started = time.perf_counter()
        error = None
        history: list[dict[str, Any]] = []
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                history = train(cfg).history
        except FloatingPointError as e:
            error = str(e)
        elapsed = time.perf_counter() - started
    curve = thin([compact(m) for m in history])
    finite = [c["score_100"] for c in curve if c["score_100"] is not None and math.isfinite(c["score_100"])]
    horizons = [c["horizon"] for c in curve if c["horizon"] is not None]
    return {
        "env": env, "variant": variant, "seed": seed, "steps": steps, "seconds": elapsed, "error": error,
        "final_score": finite[-1] if finite else math.nan,
        "mean_score": float(np.mean(finite)) if finite else math.nan,
        "median_sps": float(np.median([c["sps"] for c in curve])) if curve else math.nan,
        "final_horizon": horizons[-1] if horizons else None,
        "mean_horizon": float(np.mean(horizons)) if horizons else None,
        "curve": curve,
    }


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for env in dict.fromkeys(r["env"] for r in runs):
        for variant in VARIANTS:
            group = [r for r in runs if r["env"] == env and r["variant"] == variant]
            if not group:
                continue
            final = [r["final_score"] for r in group]
            rows.append({
                "env": env, "variant": variant, "seeds": len(group),
                "final_median": float(np.nanmedian(final)), "final_min": float(np.nanmin(final)),
                "final_max": float(np.nanmax(final)),
                "mean_score": float(np.nanmedian([r["mean_score"] for r in group])),
                "seconds": float(np.median([r["seconds"] for r in group])),
                "sps": float(np.median([r["median_sps"] for r in group])),
                "horizons": [r["final_horizon"] for r in group],
                "mean_horizon": (float(np.mean([r["mean_horizon"] for r in group]))
                                 if group[0]["mean_horizon"] is not None else None),
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'env':<10} {'variant':<7} {'final score_100 (median [min, max])':<36} {'mean score':>10} "
          f"{'seconds':>8} {'steps/s':>8}  horizon (final per seed; mean)")
    for r in rows:
        final = f"{r['final_median']:.3g} [{r['final_min']:.3g}, {r['final_max']:.3g}]"
        horizon = ""
        if r["mean_horizon"] is not None:
            horizon = f"{', '.join(str(int(h)) for h in r['horizons'])}; {r['mean_horizon']:.1f}"
        print(f"{r['env']:<10} {r['variant']:<7} {final:<36} {r['mean_score']:>10.3g} "
              f"{r['seconds']:>8.1f} {r['sps']:>8.0f}  {horizon}")


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in runs))
    fig, axes = plt.subplots(len(envs), 2, figsize=(12, 3.6 * len(envs)), squeeze=False)
    colors = {"gae": "tab:blue", "gae_geo": "tab:purple", "ah64": "tab:orange", "ah256": "tab:green"}
    labels = {"gae": "GAE (tuned config)", "gae_geo": "GAE, adaptive runs' geometry",
              "ah64": "adaptive horizon, K=64", "ah256": "adaptive horizon, K=256"}
    for row, env in enumerate(envs):
        for col, x_key in enumerate(("agent_steps", "wall_time")):
            ax = axes[row][col]
            for variant in VARIANTS:
                group = [r for r in runs if r["env"] == env and r["variant"] == variant and r["curve"]]
                if not group:
                    continue
                grid = np.linspace(0, min(max(c[x_key] for c in r["curve"]) for r in group), 100)
                ys = []
                for r in group:
                    xs = np.array([c[x_key] for c in r["curve"]])
                    scores = np.array([c["score_100"] for c in r["curve"]], dtype=float)
                    ok = np.isfinite(scores)
                    ys.append(np.interp(grid, xs[ok], scores[ok], left=np.nan) if ok.any() else grid * np.nan)
                ys = np.array(ys)
                # Grid points before a seed's first finite score are NaN in its row.
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    median = np.nanmedian(ys, axis=0)
                    low, high = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
                ax.plot(grid, median, color=colors[variant], label=f"{labels[variant]} ({len(group)} seeds)")
                ax.fill_between(grid, low, high, color=colors[variant], alpha=0.15)
            ax.set_title(f"{env}: score vs {'agent steps' if x_key == 'agent_steps' else 'wall time (s)'}")
            ax.set_xlabel("agent steps" if x_key == "agent_steps" else "seconds")
            ax.set_ylabel("mean score, last 100 episodes")
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs", default="cartpole,memory,breakout")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cartpole-steps", type=int, default=DEFAULT_STEPS["cartpole"])
    parser.add_argument("--memory-steps", type=int, default=DEFAULT_STEPS["memory"])
    parser.add_argument("--breakout-steps", type=int, default=DEFAULT_STEPS["breakout"])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in OUT/adaptive_horizon.json (other variants or envs)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    envs = [e for e in args.envs.split(",") if e]
    variants = [v for v in args.variants.split(",") if v]
    for name in (*envs, *variants):
        if name not in (*AH_GEOMETRY, *VARIANTS):
            parser.error(f"unknown env or variant {name!r} (envs: {', '.join(AH_GEOMETRY)}; "
                         f"variants: {', '.join(VARIANTS)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {"cartpole": args.cartpole_steps, "memory": args.memory_steps, "breakout": args.breakout_steps}
    runs: list[dict[str, Any]] = []
    previous = out / "adaptive_horizon.json"
    if args.append and previous.exists():
        runs = json.loads(previous.read_text())["runs"]
        for r in runs:
            r["curve"] = thin([compact(c) for c in r["curve"]])
    for env in envs:
        for seed in range(args.seeds):
            for variant in variants:
                if any(r["env"] == env and r["variant"] == variant and r["seed"] == seed for r in runs):
                    continue
                r = run_one(env, variant, seed, steps[env], args.torch_threads)
                runs.append(r)
                horizon = f" horizon {r['final_horizon']:.0f}" if r["final_horizon"] is not None else ""
                print(f"{env} {variant} seed {seed}: final score_100 {r['final_score']:.4g}, mean "
                      f"{r['mean_score']:.4g}, {r['seconds']:.1f} s{horizon}"
                      + (f" ERROR {r['error']}" if r["error"] else ""), flush=True)
                (out / "adaptive_horizon.json").write_text(json.dumps({"runs": runs}, indent=1))
    runs.sort(key=lambda r: (list(AH_GEOMETRY).index(r["env"]), r["seed"], VARIANTS.index(r["variant"])))
    rows = summarize(runs)
    print(f"\ntorch threads {args.torch_threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print_table(rows)
    tmp = out / ".adaptive_horizon.json.tmp"
    tmp.write_text(json.dumps({"summary": rows, "runs": runs, "args": vars(args)}, separators=(",", ":")))
    os.replace(tmp, out / "adaptive_horizon.json")
    plot(runs, out / "adaptive_horizon.png")
    print(f"wrote {out / 'adaptive_horizon.json'} and {out / 'adaptive_horizon.png'}")


if __name__ == "__main__":
    main()
