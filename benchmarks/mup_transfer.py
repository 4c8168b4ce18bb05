"""Does the best learning rate stay put as the policy widens? Learning-rate sweeps per width,
under the standard parametrization and under muP.

    python benchmarks/mup_transfer.py --quick     # smoke-sized: 4 widths, 4 LRs, 2 seeds, short runs
    python benchmarks/mup_transfer.py             # 4 widths (32..256), the presets' LRs and seeds
    python benchmarks/mup_transfer.py --envs cartpole --widths 64,128,256,512 --seeds 5
    python benchmarks/mup_transfer.py --resume    # finish a stopped sweep / redo summary and plot

For every env, parametrization, width (``policy.hidden_size``), learning rate and seed it trains
with ``shoal.train.train`` and scores the run by the mean episode score over its last quarter
of epochs (less noisy than the last epoch alone; runs that diverge or fail score as the worst).
It prints a table per env, then the best learning rate (by seed-mean score) at each width and
its spread across widths, in decades: muP's promise is a spread near 0. The "interpolated"
best learning rate is the vertex of a parabola (in log lr) through the best grid point and its
neighbours, a less quantized estimate. "transfer loss" is how much score (as a fraction of the
env's score range over all its runs) each width loses, on average, by using the learning rate
that was best at the base width instead of its own best one.

Writes ``OUT/runs.jsonl`` (one line per finished run, as it goes), ``OUT/mup_transfer.json``
(every run and the summary) and ``OUT/mup_transfer.png`` (score vs learning rate, one line per
width with the seeds' spread, one panel per env and parametrization). Runs one training at a
time with one torch thread and one env thread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shoal.core.config import load_config  # noqa: E402
from shoal.core.fileio import write_atomic  # noqa: E402

# Per env and size: config flags, learning rates and seeds. CartPole uses its own config (2-layer
# tanh MLP, no LSTM) at a step budget where the best learning rates score well but mostly short
# of the 500 cap (at 50k steps several settings tie at 500 and the "best" one is arbitrary).
# Breakout uses its own config (obs_norm, GELU MLP, no LSTM) with a second, hidden encoder layer,
# so that muP's hidden-matrix rule is exercised too (one layer has only the input and the
# heads), at a batch small enough for a 1.5M-step run to learn on one CPU thread (docs/mup.md
# has what it scores).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "cartpole": {
        "full": {"flags": ["--train.total-steps", "30000"],
                 "lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "seeds": 5},
        "quick": {"flags": ["--train.total-steps", "25000"], "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "seeds": 2},
    },
    "breakout": {
        "full": {"flags": ["--policy.num-layers", "2", "--env.num-envs", "256", "--train.batch-size", "16384",
                           "--train.bptt-horizon", "16", "--train.minibatch-size", "4096",
                           "--train.max-minibatch-size", "16384", "--train.update-epochs", "2",
                           "--train.total-steps", "1500000"],
                 "lrs": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1], "seeds": 2},
        "quick": {"flags": ["--policy.num-layers", "2", "--env.num-envs", "64", "--train.batch-size", "4096",
                            "--train.bptt-horizon", "16", "--train.minibatch-size", "1024",
                            "--train.max-minibatch-size", "4096", "--train.update-epochs", "2",
                            "--train.total-steps", "30000"],
                  "lrs": [3e-3, 1e-2, 3e-2, 1e-1], "seeds": 2},
    },
}
WIDTHS = [32, 64, 128, 256]
KEY = ("env", "parametrization", "width", "lr", "seed")


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
        except Exception as e:  # noqa: BLE001 - one failed run must not end the sweep
            # FloatingPointError is the trainer's divergence check; anything else is recorded
            # the same way (the setting scores as the worst) with its type, to look at later.
            scores = []
            error = str(e) if isinstance(e, FloatingPointError) else f"{type(e).__name__}: {e}"
        seconds = time.perf_counter() - started
    tail = scores[-max(1, len(scores) // 4):]
    finite = [s for s in tail if isinstance(s, float) and math.isfinite(s)]
    score = float(np.mean(finite)) if finite else float("nan")
    return {"env": env, "parametrization": parametrization, "width": width, "lr": lr, "seed": seed,
            "score": score, "last_score": scores[-1] if scores else float("nan"), "seconds": seconds,
            "error": error, "flags": list(flags), "base_width": base_width}


def summarize(runs: list[dict[str, Any]], base_width: int) -> dict[str, Any]:
    """Seed-mean score per (env, parametrization, width, lr); best LR per width; its spread."""
    out: dict[str, Any] = {}
    for env in dict.fromkeys(r["env"] for r in runs):
        env_runs = [r for r in runs if r["env"] == env]
        finite = [r["score"] for r in env_runs if math.isfinite(r["score"])]
        score_range = (max(finite) - min(finite)) if len(finite) > 1 else float("nan")
        out[env] = {}
        present = {r["parametrization"] for r in env_runs}
        for p in [p for p in ("standard", "mup") if p in present]:
            table: dict[int, dict[float, list[float]]] = {}
            for r in sorted(env_runs, key=lambda r: r["seed"]):
                if r["parametrization"] != p:
                    continue
                table.setdefault(r["width"], {}).setdefault(r["lr"], [])
                table[r["width"]][r["lr"]].append(r["score"])
            means = {
                w: {lr: _mean_or_worst(s) for lr, s in sorted(by_lr.items())}
                for w, by_lr in sorted(table.items())
            }
            best = {w: max(by_lr, key=lambda lr, by_lr=by_lr: by_lr[lr]) for w, by_lr in means.items()}
            fit = {w: _interpolated_best(by_lr) for w, by_lr in means.items()}
            spread = math.log10(max(best.values()) / min(best.values())) if best else float("nan")
            fits = [v for v in fit.values() if math.isfinite(v)]
            fit_spread = math.log10(max(fits) / min(fits)) if len(fits) == len(fit) and fits else float("nan")
            base_lr = best.get(base_width)
            losses: dict[int, float] = {}
            if base_lr is not None and score_range and math.isfinite(score_range):
                for w, by_lr in means.items():
                    if w != base_width and math.isfinite(by_lr[best[w]]) and base_lr in by_lr:
                        transferred = by_lr[base_lr] if math.isfinite(by_lr[base_lr]) else min(finite)
                        losses[w] = (by_lr[best[w]] - transferred) / score_range
            out[env][p] = {
                "mean_score": {
                    str(w): {repr(lr): s for lr, s in by_lr.items()} for w, by_lr in means.items()
                },
                "seed_scores": {
                    str(w): {repr(lr): s for lr, s in sorted(by_lr.items())}
                    for w, by_lr in sorted(table.items())
                },
                "best_lr": {str(w): lr for w, lr in best.items()},
                # The best LR on the grid is the lowest or highest one swept: the true optimum
                # may lie outside the grid.
                "best_lr_at_edge": {str(w): lr in (min(means[w]), max(means[w])) for w, lr in best.items()},
                "best_lr_fit": {str(w): v for w, v in fit.items()},
                "best_lr_spread_decades": spread,
                "best_lr_fit_spread_decades": fit_spread,
                "transfer_loss_per_width": {str(w): v for w, v in losses.items()},
                "transfer_loss": float(np.mean(list(losses.values()))) if losses else float("nan"),
                "score_range": score_range,
            }
    return out


def _interpolated_best(by_lr: dict[float, float]) -> float:
    """The vertex of the parabola (in log10 lr) through the best grid point and its neighbours.

    Less quantized than the grid's best point: two close scores on neighbouring grid points put
    the optimum between them. Clamped to the neighbours; the grid point itself when it is at
    the grid's edge or a neighbour diverged.
    """
    lrs = sorted(by_lr)
    i = max(range(len(lrs)), key=lambda k: by_lr[lrs[k]])
    if i == 0 or i == len(lrs) - 1 or not all(math.isfinite(by_lr[lrs[k]]) for k in (i - 1, i, i + 1)):
        return lrs[i]
    x = [math.log10(lrs[k]) for k in (i - 1, i, i + 1)]
    y = [by_lr[lrs[k]] for k in (i - 1, i, i + 1)]
    a, b, _ = np.polyfit(x, y, 2)
    if a >= 0:  # flat: all three equal
        return lrs[i]
    return float(10 ** min(max(-b / (2 * a), x[0]), x[2]))


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

    console = Console(width=160)
    for env, by_p in summary.items():
        lrs = sorted({r["lr"] for r in runs if r["env"] == env})
        table = Table(title=f"{env}: seed-mean score (last quarter of epochs)", title_justify="left",
                      caption="bold: the best lr at that width; (edge): at the grid's edge",
                      caption_justify="left")
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
                    text = f"{value:.3g}" if math.isfinite(value) else ("diverged" if value < 0 else "-")
                    cells.append(f"[bold]{text}[/]" if lr == best else text)
                edge = " (edge)" if data["best_lr_at_edge"][w] else ""
                table.add_row(p if i == 0 else "", w, *cells, f"{best:g}{edge}",
                              end_section=i == len(widths) - 1)
        console.print(table)
    table = Table(title="best learning rate across widths", title_justify="left")
    for col in ("env", "param.", "best lr per width", "spread (dec.)", "interpolated best lr",
                "spread (dec.)", "transfer loss"):
        table.add_column(col)
    for env, by_p in summary.items():
        for p, data in by_p.items():
            best = ", ".join(f"{w}: {lr:g}" for w, lr in data["best_lr"].items())
            fit = ", ".join(f"{w}: {lr:.2g}" for w, lr in data["best_lr_fit"].items())
            table.add_row(env, p, best, f"{data['best_lr_spread_decades']:.2f}", fit,
                          f"{data['best_lr_fit_spread_decades']:.2f}", f"{data['transfer_loss']:.3f}")
    console.print(table)


def plot(summary: dict[str, Any], path: Path, base_width: int | None = None) -> None:
    """One panel per env and parametrization: seed-mean score vs learning rate (log x), a line
    per width, a band of +-1 standard error over the seeds, each seed as a dot, the
    best learning rate as a star; a seed that diverged is an x at the bottom of the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(summary)
    params = [p for p in ("standard", "mup") if any(p in by_p for by_p in summary.values())]
    fig, axes = plt.subplots(len(envs), len(params), figsize=(5.6 * len(params), 4.0 * len(envs)),
                             squeeze=False, sharey="row")
    for i, env in enumerate(envs):
        finite = [s for data in summary[env].values() for by_lr in data["seed_scores"].values()
                  for seeds in by_lr.values() for s in seeds if math.isfinite(s)]
        low = min(finite) if finite else 0.0
        for j, p in enumerate(params):
            ax = axes[i][j]
            data = summary[env].get(p)
            if data is None:
                ax.set_visible(False)
                continue
            widths = list(data["mean_score"])
            colors = plt.cm.viridis(np.linspace(0, 0.85, len(widths)))
            for color, w in zip(colors, widths, strict=True):
                _plot_width(ax, data, w, color, low, base_width is not None and int(w) == base_width)
            ax.set_xscale("log")
            ax.set_xlabel("learning rate (base)")
            ax.set_ylabel("score (mean of last quarter of epochs)")
            ax.grid(alpha=0.3, which="major")
            spread = data["best_lr_spread_decades"]
            ax.set_title(f"{env}, {p}: best-lr spread {spread:.2f} decades, "
                         f"transfer loss {data['transfer_loss']:.2f}", fontsize=10)
            ax.legend(fontsize=8, loc="best")
    fig.suptitle("line: seed mean; band: +-1 standard error over seeds; dots: single seeds; star: best lr; "
                 "x: a seed diverged",
                 fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _plot_width(ax: Any, data: dict[str, Any], w: str, color: Any, low: float, is_base: bool) -> None:
    """One width's curve in a panel of `plot`; a diverged seed is an x at `low`."""
    seeds = {float(lr): s for lr, s in data["seed_scores"][w].items()}
    xs = sorted(seeds)
    mean = [float(np.mean(seeds[x])) if all(math.isfinite(v) for v in seeds[x]) else np.nan for x in xs]
    sem = [float(np.std(seeds[x], ddof=1) / math.sqrt(len(seeds[x])))
           if len(seeds[x]) > 1 and math.isfinite(m) else np.nan
           for x, m in zip(xs, mean, strict=True)]
    lo = [m - e for m, e in zip(mean, sem, strict=True)]
    hi = [m + e for m, e in zip(mean, sem, strict=True)]
    label = f"width {w}" + (" (base)" if is_base else "")
    ax.plot(xs, mean, marker="o", ms=4, color=color, lw=2 if is_base else 1.5, label=label)
    ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
    for x in xs:
        ok = [v for v in seeds[x] if math.isfinite(v)]
        ax.scatter([x] * len(ok), ok, s=6, color=color, alpha=0.6, lw=0)
        if len(ok) < len(seeds[x]):
            ax.scatter([x], [low], marker="x", s=30, color=color)
    best = data["best_lr"][w]
    ax.scatter([best], [data["mean_score"][w][repr(best)]], marker="*", s=160, color=color,
               edgecolor="black", lw=0.6, zorder=5)


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


def load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs recorded so far in a sweep's runs.jsonl (an unfinished last line is skipped)."""
    runs = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                runs.append(json.loads(line))
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-sized sweep (short runs, 4 LRs, 2 seeds)")
    parser.add_argument("--envs", default="cartpole,breakout",
                        help=f"comma-separated, of {', '.join(PRESETS)}")
    parser.add_argument("--widths", type=lambda t: _list(int, t), default=None,
                        help=f"default {','.join(map(str, WIDTHS))}")
    parser.add_argument("--lrs", type=lambda t: _list(float, t), default=None,
                        help="learning rates to sweep, for every env (default: the env's preset)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per setting (default: the env's preset)")
    parser.add_argument("--base-width", type=int, default=64, help="muP base width (default 64)")
    parser.add_argument("--parametrizations", default="standard,mup")
    parser.add_argument("--out", default="runs/mup_transfer",
                        help="output folder (default runs/mup_transfer)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in OUT/runs.jsonl (same env, flags, parametrization, "
                             "width, lr, seed and base width) and run only the missing ones; with nothing "
                             "missing this only rewrites the summary and the plot")
    return parser


class Sweep(NamedTuple):
    """What `main` was asked to run: per env its flags, lrs and seeds, and every run's KEY."""

    size: str
    envs: list[str]
    widths: list[int]
    plan: dict[str, dict[str, Any]]
    todo: list[tuple]


def _sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Sweep:
    size = "quick" if args.quick else "full"
    widths = sorted(args.widths or WIDTHS)
    envs = [e for e in args.envs.split(",") if e]
    params = [p for p in args.parametrizations.split(",") if p]
    unknown = [e for e in envs if e not in PRESETS]
    if unknown:
        parser.error(f"--envs: no preset for {', '.join(unknown)}; expected some of {', '.join(PRESETS)}")
    if any(p not in ("standard", "mup") for p in params):
        parser.error(f"--parametrizations must be standard and/or mup, got {args.parametrizations!r}")
    if args.base_width not in widths:
        parser.error(f"--base-width {args.base_width} must be one of the widths {widths}")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    plan = {
        env: {"flags": PRESETS[env][size]["flags"], "lrs": sorted(args.lrs or PRESETS[env][size]["lrs"]),
              "seeds": args.seeds or PRESETS[env][size]["seeds"]}
        for env in envs
    }
    # Seeds outermost: a sweep stopped early still has every setting, with fewer seeds.
    todo = [
        (env, p, width, lr, seed)
        for env in envs
        for seed in range(1, plan[env]["seeds"] + 1)
        for p in params
        for width in widths
        for lr in plan[env]["lrs"]
    ]
    return Sweep(size, envs, widths, plan, todo)


def _recorded(log_path: Path, sweep: Sweep, base_width: int, resume: bool) -> dict[tuple, dict[str, Any]]:
    """The runs of `sweep` already in runs.jsonl, by KEY; without `resume` the log starts over."""
    done: dict[tuple, dict[str, Any]] = {}
    if resume:
        for r in load_runs(log_path):
            same = r.get("flags") == sweep.plan.get(r["env"], {}).get("flags")
            if same and r.get("base_width") == base_width:
                done[tuple(r[k] for k in KEY)] = r
    else:
        log_path.unlink(missing_ok=True)
    return done


def _run_missing(missing: list[tuple], sweep: Sweep, base_width: int, log_path: Path) -> list[dict[str, Any]]:
    """Train the runs not recorded yet, appending each to runs.jsonl as it finishes."""
    runs = []
    started = time.perf_counter()
    for n, (env, p, width, lr, seed) in enumerate(missing, 1):
        run = run_one(env, sweep.plan[env]["flags"], p, width, base_width, lr, seed)
        runs.append(run)
        with open(log_path, "a") as f:
            f.write(json.dumps(run) + "\n")
        elapsed = time.perf_counter() - started
        print(f"[{n}/{len(missing)} {elapsed:.0f}s] {env} {p} width {width} "
              f"lr {lr:g} seed {seed}: score {run['score']:.4g} ({run['seconds']:.1f}s)"
              + (f" failed: {run['error']}" if run["error"] else ""), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    sweep = _sweep(parser, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "runs.jsonl"
    done = _recorded(log_path, sweep, args.base_width, args.resume)
    runs = [done[key] for key in sweep.todo if key in done]
    missing = [key for key in sweep.todo if key not in done]
    print(f"{len(sweep.todo)} runs ({len(runs)} already done): envs {sweep.envs}, widths {sweep.widths}, "
          + "; ".join(f"{e}: lrs {sweep.plan[e]['lrs']}, {sweep.plan[e]['seeds']} seeds" for e in sweep.envs)
          + f"; base width {args.base_width}, {sweep.size} size, 1 torch thread", flush=True)
    runs += _run_missing(missing, sweep, args.base_width, log_path)
    summary = summarize(runs, args.base_width)
    print_tables(summary, runs)
    payload = {
        "settings": {"envs": sweep.envs, "widths": sweep.widths, "plan": sweep.plan,
                     "base_width": args.base_width, "size": sweep.size, "torch_threads": 1, "env_threads": 1,
                     "score": "mean episode score over the last quarter of epochs"},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k not in ("flags", "base_width")} for r in runs],
        "run_seconds": sum(r["seconds"] for r in runs),
    }
    text = json.dumps(_finite_or_none(payload), indent=1) + "\n"
    write_atomic(out / "mup_transfer.json", lambda tmp: Path(tmp).write_text(text))
    plot(summary, out / "mup_transfer.png", args.base_width)
    print(f"wrote {out / 'mup_transfer.json'} and {out / 'mup_transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
