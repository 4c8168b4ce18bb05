"""Does the best learning rate stay put as the policy widens? Learning-rate sweeps per width,
under the standard parametrization and under muP.

    python benchmarks/mup_transfer.py --quick     # smoke-sized: 4 widths, 4 LRs, 2 seeds, short runs
    python benchmarks/mup_transfer.py             # 4 widths, 7 LRs, 3 seeds, longer runs
    python benchmarks/mup_transfer.py --envs cartpole --widths 64,128,256,512 --seeds 5

For every env, parametrization, width (``policy.hidden_size``), learning rate and seed it trains
with ``shoal.train.train`` and scores the run by the mean episode score over its last quarter
of epochs (less noisy than the last epoch alone; runs that diverge score as the worst). It
prints a table per env, then the best learning rate (by seed-mean score) at each width and
its spread across widths, in decades: muP's promise is a spread near 0. "transfer loss" is
how much score (as a fraction of the env's score range) each width loses, on average, by using
the learning rate that was best at the base width instead of its own best one.

Writes ``OUT/mup_transfer.json`` (every run and the summary) and ``OUT/mup_transfer.png``
(score vs learning rate, one line per width, one panel per env and parametrization). Runs
one training at a time with one torch thread and one env thread.
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
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.config import load_config  # noqa: E402

# Per env: config flags for the full and the quick size. CartPole uses its own config (2-layer
# tanh MLP, no LSTM); Breakout keeps the default GELU encoder + LSTM, at a CPU-friendly batch.
PRESETS: dict[str, dict[str, list[str]]] = {
    "cartpole": {
        "full": ["--train.total-steps", "200000"],
        "quick": ["--train.total-steps", "25000"],
    },
    "breakout": {
        "full": ["--env.num-envs", "256", "--train.batch-size", "16384", "--train.bptt-horizon", "16",
                 "--train.minibatch-size", "4096", "--train.max-minibatch-size", "16384",
                 "--train.update-epochs", "2", "--train.total-steps", "2000000"],
        "quick": ["--env.num-envs", "64", "--train.batch-size", "4096", "--train.bptt-horizon", "16",
                  "--train.minibatch-size", "1024", "--train.max-minibatch-size", "4096",
                  "--train.update-epochs", "2", "--train.total-steps", "40000"],
    },
}
FULL = {"widths": [32, 64, 128, 256], "lrs": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "seeds": 3}
QUICK = {"widths": [32, 64, 128, 256], "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "seeds": 2}


def run_one(env: str, flags: list[str], parametrization: str, width: int, base_width: int, lr: float,
            seed: int) -> dict[str, Any]:
    from shoal.train import train

    with tempfile.TemporaryDirectory(prefix="mup_transfer_") as tmp:
        cfg = load_config(env, [
            *flags, "--policy.hidden-size", str(width), "--policy.parametrization", parametrization,
            "--policy.base-width", str(base_width), "--train.learning-rate", repr(lr),
            "--train.seed", str(seed), "--train.torch-threads", "1", "--env.num-threads", "1",
            "--train.target-score", "none", "--run.dir", tmp, "--run.quiet", "true",
        ])
        cfg.run.log_interval = 1e9
        started = time.perf_counter()
        error = None
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = train(cfg)
            scores = [m["score"] for m in result.history]
        except FloatingPointError as e:
            scores, error = [], str(e)
        seconds = time.perf_counter() - started
    tail = scores[-max(1, len(scores) // 4):]
    finite = [s for s in tail if isinstance(s, float) and math.isfinite(s)]
    score = float(np.mean(finite)) if finite else float("nan")
    return {"env": env, "parametrization": parametrization, "width": width, "lr": lr, "seed": seed,
            "score": score, "last_score": scores[-1] if scores else float("nan"), "seconds": seconds,
            "error": error}


def summarize(runs: list[dict[str, Any]], base_width: int) -> dict[str, Any]:
    """Seed-mean score per (env, parametrization, width, lr); best LR per width; its spread."""
    out: dict[str, Any] = {}
    for env in sorted({r["env"] for r in runs}):
        env_runs = [r for r in runs if r["env"] == env]
        finite = [r["score"] for r in env_runs if math.isfinite(r["score"])]
        score_range = (max(finite) - min(finite)) if len(finite) > 1 else float("nan")
        out[env] = {}
        for p in sorted({r["parametrization"] for r in env_runs}):
            table: dict[int, dict[float, float]] = {}
            for r in env_runs:
                if r["parametrization"] != p:
                    continue
                table.setdefault(r["width"], {}).setdefault(r["lr"], [])
                table[r["width"]][r["lr"]].append(r["score"])
            means = {
                w: {lr: _mean_or_worst(s) for lr, s in sorted(by_lr.items())}
                for w, by_lr in sorted(table.items())
            }
            best = {w: max(by_lr, key=lambda lr, by_lr=by_lr: by_lr[lr]) for w, by_lr in means.items()}
            spread = math.log10(max(best.values()) / min(best.values())) if best else float("nan")
            base_lr = best.get(base_width)
            losses = []
            if base_lr is not None and score_range and math.isfinite(score_range):
                for w, by_lr in means.items():
                    if w != base_width and math.isfinite(by_lr[best[w]]) and base_lr in by_lr:
                        transferred = by_lr[base_lr] if math.isfinite(by_lr[base_lr]) else min(finite)
                        losses.append((by_lr[best[w]] - transferred) / score_range)
            out[env][p] = {
                "mean_score": {
                    str(w): {repr(lr): s for lr, s in by_lr.items()} for w, by_lr in means.items()
                },
                "best_lr": {str(w): lr for w, lr in best.items()},
                "best_lr_spread_decades": spread,
                "transfer_loss": float(np.mean(losses)) if losses else float("nan"),
            }
    return out


def _mean_or_worst(scores: list[float]) -> float:
    # A seed that diverged (or never finished an episode) makes the setting the worst one.
    return float(np.mean(scores)) if all(math.isfinite(s) for s in scores) else -math.inf


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def print_tables(summary: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for env, by_p in summary.items():
        lrs = sorted({r["lr"] for r in runs if r["env"] == env})
        table = Table(title=f"{env}: seed-mean score (last quarter of epochs)", title_justify="left")
        table.add_column("param.")
        table.add_column("width", justify="right")
        for lr in lrs:
            table.add_column(f"lr {lr:g}", justify="right")
        table.add_column("best lr", justify="right")
        for p, data in by_p.items():
            widths = list(data["mean_score"])
            for i, w in enumerate(widths):
                row = data["mean_score"][w]
                best = data["best_lr"][w]
                cells = []
                for lr in lrs:
                    value = row.get(repr(lr), float("nan"))
                    text = f"{value:.3g}" if math.isfinite(value) else "diverged"
                    cells.append(f"[bold]{text}[/]" if lr == best else text)
                table.add_row(p if i == 0 else "", w, *cells, f"{best:g}", end_section=i == len(widths) - 1)
        console.print(table)
    table = Table(title="best learning rate across widths", title_justify="left")
    for col in ("env", "parametrization", "best lr per width", "spread (decades)", "transfer loss"):
        table.add_column(col)
    for env, by_p in summary.items():
        for p, data in by_p.items():
            best = ", ".join(f"{w}: {lr:g}" for w, lr in data["best_lr"].items())
            spread, loss = data["best_lr_spread_decades"], data["transfer_loss"]
            table.add_row(env, p, best, f"{spread:.2f}", f"{loss:.3f}")
    console.print(table)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(summary)
    params = sorted({p for by_p in summary.values() for p in by_p})
    fig, axes = plt.subplots(len(envs), len(params), figsize=(5 * len(params), 3.6 * len(envs)),
                             squeeze=False, sharey="row")
    for i, env in enumerate(envs):
        for j, p in enumerate(params):
            ax = axes[i][j]
            data = summary[env].get(p)
            if data is None:
                ax.set_visible(False)
                continue
            widths = list(data["mean_score"])
            colors = plt.cm.viridis(np.linspace(0, 0.9, len(widths)))
            for color, w in zip(colors, widths, strict=True):
                points = sorted((float(lr), s) for lr, s in data["mean_score"][w].items())
                xs = [lr for lr, _ in points]
                ys = [s if math.isfinite(s) else np.nan for _, s in points]
                ax.plot(xs, ys, marker="o", color=color, label=f"width {w}")
                best = data["best_lr"][w]
                ax.axvline(best, color=color, alpha=0.3, ls="--")
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("score")
            ax.set_title(f"{env}: {p} (best-lr spread {data['best_lr_spread_decades']:.2f} dec)", fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _list(kind: type, text: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive values, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized sweep (short runs, 4 LRs, 2 seeds)")
    parser.add_argument("--envs", default="cartpole,breakout",
                        help=f"comma-separated, of {', '.join(PRESETS)}")
    parser.add_argument("--widths", type=lambda t: _list(int, t), default=None, help="default 32,64,128,256")
    parser.add_argument("--lrs", type=lambda t: _list(float, t), default=None, help="learning rates to sweep")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per setting (quick 2, full 3)")
    parser.add_argument("--base-width", type=int, default=64, help="muP base width (default 64)")
    parser.add_argument("--parametrizations", default="standard,mup")
    parser.add_argument("--out", default="runs/mup_transfer",
                        help="output folder (default runs/mup_transfer)")
    args = parser.parse_args(argv)

    size = QUICK if args.quick else FULL
    widths = sorted(args.widths or size["widths"])
    lrs = sorted(args.lrs or size["lrs"])
    seeds = args.seeds or size["seeds"]
    envs = [e for e in args.envs.split(",") if e]
    params = [p for p in args.parametrizations.split(",") if p]
    unknown = [e for e in envs if e not in PRESETS]
    if unknown:
        parser.error(f"--envs: no preset for {', '.join(unknown)}; expected some of {', '.join(PRESETS)}")
    if any(p not in ("standard", "mup") for p in params):
        parser.error(f"--parametrizations must be standard and/or mup, got {args.parametrizations!r}")
    if args.base_width not in widths:
        parser.error(f"--base-width {args.base_width} must be one of the widths {widths}")
    if seeds < 1:
        parser.error(f"--seeds must be at least 1, got {seeds}")

    out = Path(args.out)
    total = len(envs) * len(params) * len(widths) * len(lrs) * seeds
    print(f"{total} runs: envs {envs}, widths {widths}, lrs {lrs}, {seeds} seeds, "
          f"base width {args.base_width}, {'quick' if args.quick else 'full'} size, 1 torch thread",
          flush=True)
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for env in envs:
        flags = PRESETS[env]["quick" if args.quick else "full"]
        for p in params:
            for width in widths:
                for lr in lrs:
                    for seed in range(1, seeds + 1):
                        run = run_one(env, flags, p, width, args.base_width, lr, seed)
                        runs.append(run)
                        elapsed = time.perf_counter() - started
                        print(f"[{len(runs)}/{total} {elapsed:.0f}s] {env} {p} width {width} "
                              f"lr {lr:g} seed {seed}: score {run['score']:.4g} ({run['seconds']:.1f}s)"
                              + (f" diverged: {run['error']}" if run["error"] else ""), flush=True)
    summary = summarize(runs, args.base_width)
    print_tables(summary, runs)
    payload = {
        "settings": {"envs": envs, "widths": widths, "lrs": lrs, "seeds": seeds,
                     "base_width": args.base_width, "quick": args.quick, "torch_threads": 1,
                     "presets": {e: PRESETS[e] for e in envs}},
        "summary": summary,
        "runs": runs,
        "wall_seconds": time.perf_counter() - started,
    }
    text = json.dumps(_finite_or_none(payload), indent=1) + "\n"
    write_atomic(out / "mup_transfer.json", lambda tmp: Path(tmp).write_text(text))
    plot(summary, out / "mup_transfer.png")
    print(f"wrote {out / 'mup_transfer.json'} and {out / 'mup_transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
