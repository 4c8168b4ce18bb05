"""Atari from pixels: Shoal with no flags against SB3 PPO with the RL Zoo's Atari settings.

    python benchmarks/atari.py ALE/Pong-v5 --minutes 30 --seeds 3 --target 18
    python benchmarks/atari.py ALE/Breakout-v5 --minutes 200 --references none      # 10M steps, 40M frames
    python benchmarks/atari.py ALE/Boxing-v5 --minutes 20 --seeds 1
    python benchmarks/atari.py --report benchmarks/results/atari_pong               # redraw from JSON
    python benchmarks/atari.py ALE/Pong-v5 --minutes 15 --references none --out /tmp/lr \
        -- --train.clip-coef 0.2                                                    # a recipe variant

For every seed, back to back on the same machine, each in a fresh subprocess (benchmarks/suite.py's
workers), with the same wall budget:

- shoal: `shoal train gym:ID` with no flags: the derived recipe for image observations (Nature
  CNN, 16 envs in worker processes, 128-step rollouts, bfloat16 where the CPU has it) over
  shoal.atari's preprocessing. It stops at the budget or at its recipe's 10M agent steps (40M
  frames), whichever is first.
- zoo: SB3 PPO with the RL Zoo's Atari entry (suite.ZOO_ATARI: AtariWrapper, 4 stacked frames,
  CnnPolicy, 8 envs, 128 steps, 4 epochs, minibatch 256, linear 2.5e-4 and clip 0.1), stopped at
  the budget.

Both see the same game: the ALE/*-v5 id with v5's sticky actions (repeat_action_probability
0.25), frame skip 4, and report the true game score (all lives, unclipped) of the last 100 games.
Frames are agent steps x 4.

Config flags after `--` go to Shoal's runs (recorded in the JSON), to try a variant of the recipe.

Printed and saved (--out: atari.json, atari.md, atari.png with return against wall time and
against frames): per run the steps/s, final return and the time and frames to --target; then
Shoal's steps/s over the zoo's (median over seeds), and whether the zoo's median curve stays
below every Shoal seed's at every moment after the first minute (the largest gap the other way
if not). Needs `pip install -e ".[atari,bench]"`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import suite  # noqa: E402  (benchmarks/suite.py: its workers run each training)

FRAMES_PER_STEP = 4
# Both methods start at the random-play score; "below at every moment" is read after this.
SETTLE_SECONDS = 60.0


def parse(argv: list[str]) -> argparse.Namespace:
    flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, flags = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", nargs="?", default="ALE/Pong-v5", help="an ale-py id (default ALE/Pong-v5)")
    parser.add_argument("--minutes", type=float, default=30.0, help="wall budget per run")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=None, help="report the time to this mean return")
    parser.add_argument("--references", choices=["zoo", "none"], default="zoo")
    parser.add_argument(
        "--reference-seeds", type=int, default=None, metavar="N",
        help="run the references on the first N seeds only (default: every seed)",
    )
    parser.add_argument("--out", default=None, help="folder (default benchmarks/results/atari_<game>)")
    parser.add_argument("--report", metavar="DIR", help="redraw the table and plots from DIR/atari.json")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.seeds < 1:
        parser.error("--minutes and --seeds must be positive")
    if args.reference_seeds is not None and args.reference_seeds < 0:
        parser.error("--reference-seeds must be 0 or more")
    if not args.report and not suite.is_atari(args.env):
        parser.error(f"{args.env!r} is not an ale-py id (ALE/<Game>-v5 or <Game>NoFrameskip-v4)")
    args.flags = flags
    return args


def default_out(env: str) -> Path:
    game = env.split("/")[-1].split("-")[0].replace("NoFrameskip", "").lower()
    return HERE / "results" / f"atari_{game}"


# ---- reading the curves ----


def time_to(curve: list[list[float]], target: float) -> tuple[float, int] | None:
    """(wall seconds, agent steps) of the first point at or above `target`."""
    for wall, steps, value in curve:
        if suite.finite(value) and value >= target:
            return float(wall), int(steps)
    return None


def value_at(curve: list[list[float]], times: np.ndarray) -> np.ndarray:
    """The curve as a step function of time (each point holds until the next); NaN before the
    first finished games."""
    walls = np.array([p[0] for p in curve], dtype=float)
    values = np.array([p[2] if suite.finite(p[2]) else np.nan for p in curve], dtype=float)
    index = np.searchsorted(walls, times, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], np.nan)


def zoo_gap(shoal_curves: list[list[list[float]]], zoo_curves: list[list[list[float]]]) -> dict[str, Any]:
    """Whether the zoo's median curve is below every Shoal seed's at every moment in
    [SETTLE_SECONDS, the shortest run's end]; the largest zoo-minus-Shoal gap and where."""
    end = min(c[-1][0] for c in shoal_curves + zoo_curves)
    if end <= SETTLE_SECONDS:
        return {"checked": False, "why": f"runs shorter than {SETTLE_SECONDS:g} s"}
    times = np.linspace(SETTLE_SECONDS, end, 400)
    zoo = np.nanmedian(np.array([value_at(c, times) for c in zoo_curves]), axis=0)
    worst = np.full(times.shape, -np.inf)
    for curve in shoal_curves:
        worst = np.maximum(worst, zoo - value_at(curve, times))
    known = np.isfinite(worst)
    if not known.any():
        return {"checked": False, "why": "no finished games to compare"}
    i = int(np.nanargmax(np.where(known, worst, -np.inf)))
    return {
        "checked": True,
        "zoo_below_everywhere": bool((worst[known] < 0).all()),
        "largest_gap": float(worst[i]),
        "at_seconds": float(times[i]),
        "from_seconds": SETTLE_SECONDS,
        "to_seconds": float(end),
    }


# ---- running ----


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    budget = args.minutes * 60.0
    methods = ["shoal"] + (["zoo"] if args.references == "zoo" else [])
    data: dict[str, Any] = {
        "settings": {
            "env": args.env,
            "budget": budget,
            "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
            "target": args.target,
            "shoal_flags": args.flags,
            "methods": methods,
            "frames_per_step": FRAMES_PER_STEP,
            "machine": suite.machine() | {"ale_py": suite.version("ale-py")},
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "runs": [],
    }
    for seed, method in plan(data["settings"]["seeds"], methods, args.reference_seeds):
        flags = args.flags if method == "shoal" else []
        record = suite.launch(method, args.env, seed, budget, None, out / "logs", flags)
        record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        data["runs"].append(record)
        print(suite.run_line(record), flush=True)
        if record["status"] != "ok":
            print("    " + str(record.get("stderr_tail", record.get("message"))).replace("\n", "\n    "))
        suite.write_json(out / "atari.json", data)
    return data


def plan(seeds: list[int], methods: list[str], reference_seeds: int | None) -> list[tuple[int, str]]:
    """The runs in order, (seed, method): each seed's Shoal run, then its references while the
    seed is among the first `reference_seeds` (all of them when None)."""
    with_references = set(seeds[:reference_seeds])
    return [(seed, m) for seed in seeds for m in methods if m == "shoal" or seed in with_references]


# ---- the report ----


def ok_runs(data: dict[str, Any], method: str) -> list[dict[str, Any]]:
    return [r for r in data["runs"] if r["method"] == method and r.get("status") == "ok" and r["curve"]]


def run_row(run: dict[str, Any], target: float | None) -> str:
    curve = run["curve"]
    reached = time_to(curve, target) if target is not None else None
    to_target = "-" if target is None else "never"
    if reached is not None:
        to_target = f"{reached[0]:.0f} s, {reached[1] * FRAMES_PER_STEP / 1e6:.2f}M frames"
    frames = run["agent_steps"] * FRAMES_PER_STEP
    return (
        f"| {run['method']} | {run['seed']} | {suite.fmt(run['sps'], ',.0f')} | {frames / 1e6:.2f}M | "
        f"{run['wall_time']:.0f} s | {suite.fmt(run['final_return'], '.1f')} | {to_target} |"
    )


def summary(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    shoal, zoo = ok_runs(data, "shoal"), ok_runs(data, "zoo")
    target = s.get("target")
    lines = [
        f"# {s['env']}: Shoal (no flags) vs SB3 PPO with the RL Zoo's Atari settings",
        "",
        f"Budget {s['budget'] / 60:g} min per run, seeds {s['seeds']}; {s['machine']['platform']}, "
        f"{s['machine']['available_cores']} cores, torch {s['machine']['torch']}, "
        f"SB3 {s['machine']['stable_baselines3']}, ale-py {s['machine'].get('ale_py')}. Return: mean true "
        "game score of the last 100 games. Frames = agent steps x 4.",
        "",
        f"| method | seed | steps/s | frames | wall | final return | to {suite.fmt(target, 'g')} |",
        "|---|---:|---:|---:|---:|---:|---|",
        *[run_row(r, target) for r in shoal + zoo],
        "",
    ]
    shoal_sps = statistics.median([r["sps"] for r in shoal]) if shoal else None
    zoo_sps = statistics.median([r["sps"] for r in zoo]) if zoo else None
    if shoal_sps and zoo_sps:
        ratio = shoal_sps / zoo_sps
        lines.append(f"Throughput: Shoal {shoal_sps:,.0f} steps/s, zoo {zoo_sps:,.0f}: {ratio:.1f}x.")
    if shoal and zoo:
        gap = zoo_gap([r["curve"] for r in shoal], [r["curve"] for r in zoo])
        data["zoo_gap"] = gap
        if not gap["checked"]:
            lines.append(f"Zoo below Shoal: not checked ({gap['why']}).")
        else:
            verdict = "yes" if gap["zoo_below_everywhere"] else "no"
            lines.append(
                f"Zoo's median below every Shoal seed at every moment from {gap['from_seconds']:.0f} s to "
                f"{gap['to_seconds']:.0f} s: {verdict} (largest zoo - Shoal gap {gap['largest_gap']:+.1f} "
                f"at {gap['at_seconds']:.0f} s)."
            )
    return lines


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = data["settings"].get("target")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in ("shoal", "zoo"):
        for i, run in enumerate(ok_runs(data, method)):
            points = [p for p in run["curve"] if suite.finite(p[2])]
            label = suite.LABELS[method] if i == 0 else None
            color = suite.COLORS[method]
            walls = [p[0] / 60 for p in points]
            frames = [p[1] * FRAMES_PER_STEP / 1e6 for p in points]
            values = [p[2] for p in points]
            axes[0].plot(walls, values, color=color, lw=1.2, label=label)
            axes[1].plot(frames, values, color=color, lw=1.2, label=label)
    for ax, xlabel in zip(axes, ("wall time (min)", "frames (millions)"), strict=True):
        if target is not None:
            ax.axhline(target, color="grey", ls=":", lw=0.9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean game score, last 100 games")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(f"{data['settings']['env']}, one line per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(data: dict[str, Any], out: Path) -> None:
    lines = summary(data)
    print("\n".join(lines))
    (out / "atari.md").write_text("\n".join(lines) + "\n")
    suite.write_json(out / "atari.json", data)
    plot(data, out / "atari.png")
    print(f"wrote {out / 'atari.json'}, {out / 'atari.md'}, {out / 'atari.png'}")


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.report:
        folder = Path(args.report)
        if not (folder / "atari.json").is_file():
            print(f"--report: no {folder / 'atari.json'}")
            return 2
        report(json.loads((folder / "atari.json").read_text()), folder)
        return 0
    out = Path(args.out) if args.out else default_out(args.env)
    out.mkdir(parents=True, exist_ok=True)
    data = run(args, out)
    report(data, out)
    return 1 if any(r.get("status") != "ok" for r in data["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
