"""The `shoal` command: train, eval, envs, config, and the sweep/analysis commands.

Everything heavy (torch, NumPy, the C envs, Optuna) is imported inside the command that needs
it, so `shoal --help` answers at once.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shoal.core.checks import positive_arg
from shoal.core.config import split_config_flags

if TYPE_CHECKING:
    from shoal.core.config import Config
    from shoal.core.contract import VecEnv
    from shoal.render import GifWriter, TerminalPlayer
    from shoal.train.checkpoint import Agent

PROG = "shoal"

# Commands that own their whole argument list: (module, function, one-line help).
PASSTHROUGH: dict[str, tuple[str, str, str]] = {
    "sweep": ("shoal.sweep.cli", "main", "run a cost-aware hyperparameter sweep (Optuna)"),
    "analyze": ("shoal.analysis.cli", "analyze_main", "summarize a sweep: fronts, tables, importance, plots"),
    "reproduce": ("shoal.analysis.cli", "reproduce_main", "re-run sweep trials or a config over seeds"),
    "compare": ("shoal.analysis.cli", "compare_main", "compare the learning curves of runs"),
    "mup-check": (
        "shoal.analysis.coord_check",
        "coord_check_main",
        "muP coordinate check: activation sizes across widths",
    ),
}

FLAGS_HELP = """\
config flags:
  Any config key can be set as --section.key VALUE (or --section.key=VALUE); dashes and
  underscores are interchangeable. Examples:
    --train.learning-rate 3e-4  --env.num-envs 512  --env.options.frameskip 4
  `shoal config ENV` prints every key with its resolved value.
"""


class UsageError(Exception):
    """A mistake on the command line; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Shoal: fast reinforcement learning with C environments, PPO and cost-aware sweeps.",
        epilog="Run 'shoal COMMAND --help' for a command's options.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(commands)
    add_eval_parser(commands)
    add_envs_parser(commands)
    add_config_parser(commands)
    for name, (_, _, help_text) in PASSTHROUGH.items():
        # Listed for --help only; main() hands these commands their arguments untouched.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def add_train_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser(
        "train",
        help="train an agent",
        description="Train an agent with PPO. The config is built from shoal/configs/default.toml, then "
        "shoal/configs/ENV.toml, then --config FILE, then the config flags.",
        epilog=FLAGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    train.add_argument(
        "env",
        nargs="?",
        metavar="ENV",
        help="env name: a native env (see 'shoal envs'), gym:ID or pettingzoo:MODULE; optional with --resume",
    )
    train.add_argument("--config", metavar="FILE", help="a TOML file applied over the env's defaults")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="plain log lines instead of the live dashboard")
    train.add_argument("--profile", action="store_true", help="record where the time goes in more detail")
    train.add_argument("--wandb", action="store_true", help="log metrics to Weights & Biases")
    train.set_defaults(func=cmd_train, takes_flags=True)


def add_eval_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="play episodes with a trained agent (terminal or GIF)",
        description="Play episodes with a trained agent, shown in the terminal or written to a GIF.",
        epilog="Config flags (e.g. --env.options.frameskip 4) change the env the agent plays.",
        allow_abbrev=False,
    )
    evaluate.add_argument("env", metavar="ENV", help="env name")
    evaluate.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="model.pt or checkpoint.pt of a run, or the run folder",
    )
    evaluate.add_argument(
        "--episodes", type=positive_arg(int), default=5, metavar="N", help="episodes to play (default 5)"
    )
    evaluate.add_argument("--gif", metavar="OUT.gif", help="write the frames to an animated GIF")
    evaluate.add_argument("--deterministic", action="store_true", help="take the most likely action")
    evaluate.add_argument(
        "--fps", type=positive_arg(float), default=15.0, metavar="F", help="frames per second (default 15)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="env seed (default 0)")
    evaluate.add_argument(
        "--max-steps",
        type=positive_arg(int),
        default=100_000,
        metavar="N",
        help="stop after N steps even if episodes are unfinished (default 100000)",
    )
    evaluate.add_argument("--no-render", action="store_true", help="don't draw frames in the terminal")
    evaluate.set_defaults(func=cmd_eval, takes_flags=True)


def add_envs_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    envs = commands.add_parser(
        "envs", help="list the environments and their options", description="List the environments."
    )
    envs.set_defaults(func=cmd_envs, takes_flags=False)


def add_config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="print the resolved config as TOML",
        description="Print the config a 'shoal train' with the same arguments would use, as TOML.",
        epilog=FLAGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    config.add_argument("env", nargs="?", metavar="ENV", help="env name (default: the one in the config)")
    config.add_argument("--config", metavar="FILE", help="a TOML file applied over the env's defaults")
    config.add_argument("-o", "--output", metavar="FILE", help="write the TOML to FILE instead of stdout")
    config.set_defaults(func=cmd_config, takes_flags=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return run_passthrough(argv[0], argv[1:])
    regular, dotted = split_config_flags(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(regular)
    except SystemExit as e:
        return exit_status(e)
    if args.command is None:
        parser.print_help()
        return 0
    if dotted and not args.takes_flags:
        return fail(args.command, f"'shoal {args.command}' takes no config flags (got {dotted[0]})")
    from shoal.core.config import ConfigError

    args.argv = argv
    try:
        return int(args.func(args, dotted) or 0)
    except (ConfigError, UsageError) as e:
        return fail(args.command, str(e))
    except OSError as e:
        # A file or folder the command was pointed at cannot be read or written (a path that is a
        # folder or under a file, no permission, a full disk): the user's to fix, so one line.
        if os.environ.get("SHOAL_TRACEBACK"):
            raise
        return fail(args.command, f"{describe_os_error(e)} (set SHOAL_TRACEBACK=1 for the traceback)")
    except KeyboardInterrupt:
        # In a multi-process run every rank is interrupted; one line is enough.
        if os.environ.get("RANK", "0") == "0":
            print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """'cannot use PATH: REASON' from an OSError (both paths when a rename failed)."""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or str(e)
    return f"cannot use {paths}: {reason}" if paths else reason


def output_file(flag: str, path: str) -> str:
    """Fail before any work when an output file names a folder (the write would fail at the end)."""
    if Path(path).is_dir():
        raise UsageError(f"{flag}: {path} is a folder; give a file name in it (e.g. {Path(path) / 'out'})")
    return path


def exit_status(e: SystemExit) -> int:
    """The status a SystemExit would give the process (None is success, a message is failure)."""
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


def fail(command: str, message: str, status: int = 2) -> int:
    # In a multi-process run the other ranks name themselves: their error may be their own.
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f" (rank {rank})"
    print(f"{PROG} {command}{where}: error: {message}", file=sys.stderr)
    return status


def run_passthrough(command: str, argv: list[str]) -> int:
    import importlib

    module_name, function_name, _ = PASSTHROUGH[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            return fail(command, f"'shoal {command}' is not available in this install (no {module_name})", 1)
        raise
    function: Callable[[list[str]], int] = getattr(module, function_name)
    try:
        return int(function(argv) or 0)
    except SystemExit as e:
        return exit_status(e)
    except Exception as e:
        # A sweep storage that cannot be reached, or a path that cannot be read or written, is
        # the user's to fix: one line, exit 2. The command's module has loaded the sweep code
        # already, so this import costs nothing.
        from shoal.sweep.storage import StorageError

        if os.environ.get("SHOAL_TRACEBACK") or not isinstance(e, (StorageError, OSError)):
            raise
        message = describe_os_error(e) if isinstance(e, OSError) else str(e)
        return fail(command, message)
    except KeyboardInterrupt:
        print(f"\n{PROG} {command}: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def env_errors_as_usage() -> Iterator[None]:
    """Env constructors raise ValueError/TypeError for unknown names and bad options: usage
    mistakes, shown as one line. SHOAL_TRACEBACK=1 shows the traceback instead."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if os.environ.get("SHOAL_TRACEBACK"):
            raise
        raise UsageError(f"{e} (set SHOAL_TRACEBACK=1 for the traceback)") from e


def check_env(name: str, options: dict[str, Any]) -> None:
    """Fail fast, as a usage error, on an env name or option the env would reject later."""
    from shoal.core.names import is_emulated

    with env_errors_as_usage():
        if is_emulated(name):
            from shoal.envs.registry import make

            make(name, num_envs=1, seed=0, **options).close()
        else:
            from shoal.envs.native import resolve_options

            resolve_options(name, options)


# ---- train ----


def resume_config(run_dir: str, env: str | None, overrides: list[str]) -> Any:
    """The config of the run in `run_dir`, with `overrides` applied, set to continue that run."""
    import json

    from shoal.core.config import ConfigError, from_dict, parse_overrides, set_key

    folder = Path(run_dir)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise UsageError(f"--resume expects a run folder made by 'shoal train'; {folder} is not a folder")
    if not config_path.is_file():
        raise UsageError(f"--resume expects a run folder made by 'shoal train'; {config_path} does not exist")
    if not (folder / "checkpoint.pt").is_file():
        raise UsageError(f"--resume: {folder} has no checkpoint.pt to continue from")
    try:
        data = json.loads(config_path.read_text())
        cfg = from_dict(data)
    except json.JSONDecodeError as e:
        raise UsageError(f"{config_path} is not valid JSON: {e}") from None
    except ConfigError as e:
        raise ConfigError(f"{e} (in {config_path})") from None
    if env is not None and env != cfg.env.name:
        raise UsageError(f"the run in {folder} trained env '{cfg.env.name}', not '{env}'")
    for key, value in parse_overrides(overrides):
        set_key(cfg, key, value)
    # Keep writing into the same run folder.
    cfg.run.dir = str(folder.resolve().parent)
    cfg.run.name = folder.resolve().name
    cfg.run.resume = str(folder)
    return cfg


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from shoal.core.config import load_config

    if args.resume:
        if args.config:
            raise UsageError("--resume continues a run with its own config; it can't take --config too")
        cfg = resume_config(args.resume, args.env, overrides)
    else:
        if args.env is None:
            raise UsageError("name the env to train (e.g. 'shoal train cartpole'), or give --resume RUN_DIR")
        derived: dict[str, Any] = {}
        cfg = load_config(args.env, overrides, args.config, derive=recipe_deriver(derived))
        if derived:
            print(
                f"{cfg.env.name}: no recipe file names this env, so its recipe was derived from the env "
                f"(`shoal config {cfg.env.name}` shows each value and why)",
                file=sys.stderr,
            )
            # Ranks started by train.processes rebuild the config from the command line: they get
            # the values measured here, not their own measurement.
            args.argv = [*args.argv, "--env.recipe=derived"]
            args.argv += [f"--{key}={d.value}" for key, d in derived.items()]
    if args.quiet:
        cfg.run.quiet = True
    if args.profile:
        cfg.run.profile = True
    if args.wandb:
        cfg.run.wandb = True

    from shoal.train import launch

    processes = launch.check_processes(cfg)
    if processes > 1 and not launch.launched():
        check_env(cfg.env.name, cfg.env.options)
        return launch.run_processes(processes, args.argv)
    # Before anything loads torch: libgomp reads OMP_WAIT_POLICY only when torch is imported.
    prepare_threads(cfg)
    check_env(cfg.env.name, cfg.env.options)
    from shoal.train import train
    from shoal.train.rollout import EnvError

    try:
        result = train(cfg)
    except EnvError as e:
        return fail(args.command, str(e), status=1)
    if getattr(result, "rank", 0) == 0:
        # Under torchrun the other processes stay quiet.
        print_train_summary(cfg, result)
    return 0


def recipe_deriver(record: dict[str, Any]) -> Callable[[Config, frozenset[str]], None]:
    """The derive step of load_config: the env's derived recipe (shoal.train.recipe, which loads
    no torch), its values and reasons kept in `record`; the env's own errors as usage errors."""

    def derive(cfg: Config, explicit: frozenset[str]) -> None:
        from shoal.train.recipe import derive_into

        with env_errors_as_usage():
            record.update(derive_into(cfg, explicit))

    return derive


def prepare_threads(cfg: Any) -> None:
    """Put train.omp_wait_policy into the environment while torch is not loaded yet (importing
    shoal.train loads no torch). The trainer reports the policy torch actually runs with."""
    from shoal.train import threads

    try:
        threads.prepare_wait_policy(cfg.train.omp_wait_policy)
    except ValueError as e:
        raise UsageError(str(e)) from None


def last_score(result: Any) -> tuple[str, float] | None:
    """The run's latest finite score: the mean of the last 100 episodes when reported, else the
    last epoch in which an episode ended (an epoch shorter than an episode reports NaN)."""
    import math

    history = list(getattr(result, "history", None) or []) or [getattr(result, "metrics", None) or {}]
    for label, key in (("score (last 100 episodes)", "score_100"), ("last score", "score")):
        for metrics in reversed(history):
            value = metrics.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return label, float(value)
    return None


def print_train_summary(cfg: Any, result: Any) -> None:
    metrics = getattr(result, "metrics", None) or {}
    run_dir = getattr(result, "run_dir", None)
    steps = metrics.get("agent_steps")
    wall = metrics.get("wall_time")
    parts = []
    if steps is not None:
        parts.append(f"{int(steps):,} agent steps")
    if wall:
        parts.append(f"in {float(wall):.1f} s")
    if steps and wall:
        parts.append(f"({float(steps) / float(wall):,.0f} steps/s)")
    score = last_score(result)
    if score is not None:
        parts.append(f"{score[0]} {score[1]:.4g}")
    print("done: " + " ".join(parts) if parts else "done")
    if run_dir is not None:
        print(f"run folder: {run_dir}")
        print(f"watch it play: shoal eval {cfg.env.name} --checkpoint {Path(run_dir) / 'model.pt'}")


# ---- eval ----


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.gif:
        output_file("--gif", args.gif)
    agent, cfg = load_eval_agent(args, overrides)
    from shoal.envs.registry import make
    from shoal.render import GifWriter, TerminalPlayer

    with env_errors_as_usage():
        env = make(args.env, num_envs=1, seed=args.seed, num_threads=1, **cfg.env.options)
    try:
        check_agent_fits(agent, env, args.env)
    except UsageError:
        env.close()
        raise
    gif = GifWriter() if args.gif else None
    player = None
    if not args.gif and not args.no_render and sys.stdout.isatty():
        player = TerminalPlayer(sys.stdout)
    try:
        scores, returns = play_episodes(args, env, agent, gif, player)
    finally:
        env.close()
        if player is not None:
            player.close()
    return report_eval(args, gif, scores, returns)


def check_agent_fits(agent: Agent, env: VecEnv, name: str) -> None:
    """The agent's observation and action spaces must be the env's (a checkpoint of another env
    would otherwise fail deep inside the policy)."""
    obs, act = env.single_observation_space, env.single_action_space
    if agent.observation_space.shape != obs.shape or space_layout(agent.action_space) != space_layout(act):
        raise UsageError(
            f"the checkpoint's agent (trained on '{agent.config.env.name}': observations "
            f"{agent.observation_space.shape}, actions {agent.action_space}) cannot play '{name}' "
            f"(observations {obs.shape}, actions {act})"
        )


def space_layout(space: Any) -> tuple[str, tuple[int, ...], str]:
    """What a policy's output depends on: the space's kind, shape and sizes (not Box bounds)."""
    import numpy as np

    sizes = getattr(space, "nvec", getattr(space, "n", None))
    return type(space).__name__, tuple(space.shape or ()), str(np.asarray(sizes).tolist())


def load_eval_agent(args: argparse.Namespace, overrides: list[str]) -> tuple[Agent, Config]:
    """The agent of --checkpoint and the config of the env it plays (its own, with `overrides`)."""
    from shoal.core.config import parse_overrides, set_key
    from shoal.train.checkpoint import load_agent

    try:
        agent = load_agent(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--checkpoint: {e}") from None
    cfg = agent.config.copy()
    if cfg.env.name != args.env:
        print(f"note: the checkpoint was trained on '{cfg.env.name}'; playing '{args.env}'", file=sys.stderr)
    for key, value in parse_overrides(overrides):
        set_key(cfg, key, value)
    return agent, cfg


def play_episodes(
    args: argparse.Namespace,
    env: VecEnv,
    agent: Agent,
    gif: GifWriter | None,
    player: TerminalPlayer | None,
) -> tuple[list[float], list[float]]:
    """Step `env` with `agent` until --episodes have finished or --max-steps have passed; print
    each finished episode. Returns the scores and returns of the finished episodes."""
    import numpy as np

    scores: list[float] = []
    returns: list[float] = []
    steps = 0
    obs, _ = env.reset(seed=args.seed)
    agent.reset(np.ones(env.num_agents, dtype=bool))
    while len(scores) < args.episodes and steps < args.max_steps:
        if gif is not None or player is not None:
            status = f"episode {len(scores) + 1}/{args.episodes}  step {steps}"
            draw_frame(args, frame_of(env, gif), gif, player, status)
        actions = agent.act(obs, deterministic=args.deterministic)
        obs, _, terminals, truncations, _ = env.step(actions)
        steps += 1
        done = np.logical_or(terminals, truncations)
        if done.any():
            agent.reset(done)
        log = env.log()
        finished = int(log.get("episodes", 0)) if log else 0
        if finished and player is not None:
            player.detach()
        for _ in range(finished):
            scores.append(float(log["score"]))
            returns.append(float(log.get("episode_return", math.nan)))
            length = log.get("episode_length", math.nan)
            print(
                f"episode {len(scores)}: score {scores[-1]:.4g}  return {returns[-1]:.4g}  "
                f"length {float(length):.0f}",
                flush=True,
            )
    return scores, returns


def frame_of(env: VecEnv, gif: GifWriter | None) -> Any:
    """What to draw of env 0: for a GIF, the real frame where the env draws one (the native
    games' render_rgb), else the text picture of render()."""
    if gif is not None and getattr(env, "rgb_shape", None) is not None:
        return env.render_rgb(0)
    return env.render()


def draw_frame(
    args: argparse.Namespace, frame: Any, gif: GifWriter | None, player: TerminalPlayer | None, status: str
) -> None:
    """Add the frame to the GIF, or show it in the terminal at --fps frames per second."""
    if gif is not None:
        gif.add(frame)
    if player is not None and isinstance(frame, str):
        started = time.perf_counter()
        player.show(frame, status)
        time.sleep(max(0.0, 1.0 / args.fps - (time.perf_counter() - started)))


def report_eval(
    args: argparse.Namespace, gif: GifWriter | None, scores: list[float], returns: list[float]
) -> int:
    import numpy as np

    if gif is not None and len(gif):
        out = gif.write(args.gif, fps=args.fps)
        print(f"wrote {len(gif)} frames to {out}")
    if not scores:
        print(f"no episode finished within {args.max_steps} steps (raise --max-steps)", file=sys.stderr)
        return 1
    episodes = f"{len(scores)} episode" + ("s" if len(scores) > 1 else "")
    mean_return = float(np.nanmean(returns))
    print(f"mean score {float(np.mean(scores)):.4g} over {episodes} (mean return {mean_return:.4g})")
    return 0


# ---- envs ----


def cmd_envs(args: argparse.Namespace, overrides: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from shoal.envs.registry import list_envs

    specs: dict[str, Any] = {}
    choices: dict[str, tuple[str, ...]] = {}
    try:
        from shoal.envs.native import CHOICE_OPTIONS, GAMES

        specs, choices = dict(GAMES), CHOICE_OPTIONS
    except ImportError:
        pass  # the C extension isn't built: names and descriptions are all there is

    table = Table(title="Shoal environments", title_justify="left")
    table.add_column("env / option", no_wrap=True)
    table.add_column("default", justify="right", no_wrap=True)
    table.add_column("range", no_wrap=True)
    table.add_column("description")
    for name, description in list_envs():
        table.add_row(f"[bold cyan]{name}[/]", "", "", description, end_section=name not in specs)
        options = getattr(specs.get(name), "options", ())
        for i, option in enumerate(options):
            if option.name in choices:  # C holds the index of a name
                names = choices[option.name]
                default, allowed = names[int(option.default)], " | ".join(names)
            else:
                low, high = (format_number(v, option.is_int) for v in (option.min, option.max))
                default, allowed = format_number(option.default, option.is_int), f"{low}..{high}"
            last = i == len(options) - 1
            table.add_row(f"  {option.name}", default, allowed, f"[dim]{option.help}[/]", end_section=last)
    console = Console()
    console.print(table)
    console.print(
        "Set an option with --env.options.NAME VALUE (shoal train/eval) or shoal.make(name, NAME=VALUE).\n"
        "Also: gym:ID for any Gymnasium env (e.g. gym:CartPole-v1) and pettingzoo:MODULE for PettingZoo "
        "parallel envs (e.g. pettingzoo:butterfly.pistonball_v6).",
        highlight=False,
    )
    return 0


def format_number(value: float, is_int: bool) -> str:
    return f"{value:.0f}" if is_int and float(value).is_integer() else f"{value:g}"


# ---- config ----


def cmd_config(args: argparse.Namespace, overrides: list[str]) -> int:
    from shoal.core.config import load_config, to_toml

    derived: dict[str, Any] = {}
    cfg = load_config(args.env, overrides, args.config, derive=recipe_deriver(derived))
    comments = {key: f"derived: {d.why}" for key, d in derived.items()}
    if derived:
        comments["env.recipe"] = "no recipe file names this env: the values marked 'derived' are the env's"
    text = to_toml(cfg, comments)
    if not args.output:
        sys.stdout.write(text)
        return 0
    output_file("--output", args.output)
    from shoal.core.fileio import write_text_atomic

    out = write_text_atomic(args.output, text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
