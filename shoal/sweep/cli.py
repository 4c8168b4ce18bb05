"""`shoal sweep ENV --name NAME --trials K [options] [--section.key VALUE ...]`."""

from __future__ import annotations

import argparse
import sys

import optuna
from rich.console import Console
from rich.text import Text

from shoal.core.checks import positive_arg
from shoal.core.config import Config, ConfigError, flatten_sweep, load_config, load_toml
from shoal.sweep.progress import LiveProgress, front_table
from shoal.sweep.runner import SweepError, SweepResult, SweepSettings, run_sweep
from shoal.sweep.sampler import SAMPLERS
from shoal.sweep.space import SearchSpace, space_from_config
from shoal.sweep.storage import STALE_AFTER_SECONDS, SWEEP_DIR


def _margin(text: str) -> float | None:
    if text.lower() in ("off", "none", "no", "false"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal sweep",
        description="Cost-aware hyperparameter sweep: traces the front of score vs wall-clock cost.",
        epilog="Any other --section.key VALUE flag sets the base config (e.g. --train.batch-size 65536).",
        allow_abbrev=False,
    )
    parser.add_argument("env", help="environment name (as for shoal train)")
    parser.add_argument("--name", required=True, help="sweep name: the Optuna study, and sweeps/NAME.journal")
    parser.add_argument(
        "--trials", type=positive_arg(int), required=True, help="run until this many trials have finished"
    )
    parser.add_argument(
        "--workers", type=positive_arg(int), default=1, help="local worker processes sharing the storage"
    )
    parser.add_argument(
        "--storage",
        default=None,
        help="journal file path or RDB URL (postgresql://...); default sweeps/NAME.journal",
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="pareto", help="default: pareto (cost-aware)")
    parser.add_argument(
        "--max-cost",
        type=positive_arg(float),
        default=None,
        metavar="SECONDS",
        help="cap on one run's wall-clock seconds",
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="extra TOML config (may hold [sweep.*])"
    )
    parser.add_argument("--seed", type=int, default=None, help="sampler seed (worker i uses seed + i)")
    parser.add_argument(
        "--early-stop",
        type=_margin,
        default=0.25,
        metavar="MARGIN|off",
        help="stop runs trailing the front at equal cost by MARGIN x the score range (default 0.25)",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_SECONDS,
        metavar="SECONDS",
        help="a running trial whose worker has not checked in for this long is re-queued",
    )
    parser.add_argument(
        "--max-failures", type=int, default=None, help="give up after this many failed trials"
    )
    parser.add_argument("--sweep-dir", default=SWEEP_DIR, help="folder of journal files and worker logs")
    parser.add_argument(
        "--train-fn",
        default=None,
        metavar="MODULE:FUNCTION",
        help="train function (default shoal.train.train)",
    )
    parser.add_argument("--quiet", action="store_true", help="no live view; only the final table")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        argv = argv[1:]
    args, overrides = build_parser().parse_known_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        base = base_config(args, overrides)
        notes: list[str] = []
        space = space_from_config(base, notes)
        settings = settings_from_args(args)
    except (ConfigError, SweepError, ValueError) as e:
        _error(err, e)
        return 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for note in notes:
        console.print(Text(f"note: {note}"), soft_wrap=True)
    try:
        result = _run(args, settings, base, space, console)
    except (SweepError, ConfigError) as e:
        _error(err, e)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume the sweep")
        return 130
    study = optuna.load_study(study_name=settings.name, storage=_storage(settings))
    console.print(front_table(study.get_trials(deepcopy=False)))
    c = result.counts
    console.print(
        f"{c['complete']} complete, {c['pruned']} stopped early, {c['failed']} failed "
        f"({c['requeued']} re-queued). Browse it with: optuna-dashboard {settings.url}",
        soft_wrap=True,
    )
    return 0


def base_config(args: argparse.Namespace, overrides: list[str]) -> Config:
    """The config every trial starts from; a --config file's [sweep.*] tables replace the space.

    An env without a recipe file gets its derived recipe here, once, when the trials train with
    Shoal's trainer (a --train-fn may not use a Shoal env at all): every trial then starts from
    the same values, and a sampled value is never replaced by a derived one.
    """
    from shoal.train.recipe import derive_into

    base = load_config(args.env, overrides, args.config, derive=None if args.train_fn else derive_into)
    if args.config is not None:
        own = load_toml(args.config).get("sweep")
        if isinstance(own, dict) and own:
            # A --config file's [sweep.*] tables are the whole space, not additions to the default.
            base.sweep = flatten_sweep(own)
    return base


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    return SweepSettings(
        env=args.env,
        name=args.name,
        trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        sampler=args.sampler,
        max_cost=args.max_cost,
        seed=args.seed,
        early_stop_margin=args.early_stop,
        stale_after=args.stale_after,
        max_failures=args.max_failures,
        sweep_dir=args.sweep_dir,
        train_fn=args.train_fn,
    )


def _run(
    args: argparse.Namespace, settings: SweepSettings, base: Config, space: SearchSpace, console: Console
) -> SweepResult:
    console.print(
        f"sweep [bold]{settings.name}[/bold] on {settings.env}: {len(space)} parameters, "
        f"sampler {settings.sampler}, storage {settings.url}",
        soft_wrap=True,
    )
    if args.quiet:
        return run_sweep(settings, base)
    with LiveProgress(settings.name, settings.trials, settings.workers, console) as live:
        result = run_sweep(settings, base, on_tick=live.tick)
        live.tick(optuna.load_study(study_name=settings.name, storage=_storage(settings)), force=True)
    return result


def _error(console: Console, error: Exception) -> None:
    # Messages may hold brackets ([sweep] tables, trial lists): print them as plain text.
    console.print(Text("error: ", style="red") + Text(str(error)), soft_wrap=True)


def _storage(settings: SweepSettings) -> optuna.storages.BaseStorage:
    from shoal.sweep.storage import open_storage

    return open_storage(settings.url)


if __name__ == "__main__":
    sys.exit(main())
