"""One typed configuration for a whole run.

It is built in layers, each overriding the last: the recipes shipped in the package,
``shoal/configs/default.toml`` -> ``shoal/configs/<env>.toml`` -> an explicit config file ->
dotted CLI flags (``--train.learning-rate 3e-4``). Dashes and underscores are interchangeable in keys.
Unknown keys and values of the wrong type are errors that name the key and suggest the
closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# The recipes are package data next to the code, so an editable checkout and an installed wheel
# read the same files.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# The native games. Each ships a recipe, so a missing file for one of them is a broken install,
# not a choice; other names (gym:, pettingzoo:, a name a custom sweep --train-fn reads) may have
# none and then start from default.toml. tests/test_config.py checks this list against the C
# extension's games (core cannot import the env layer).
NATIVE_GAMES = ("cartpole", "breakout", "pong", "snake", "bandit", "memory")


class ConfigError(ValueError):
    """A configuration key or value the user gave is not valid."""


@dataclass
class EnvConfig:
    name: str = "breakout"
    # Native envs set their own count in shoal/configs/<env>.toml; 64 suits Python (gym:) envs and
    # divides the default batch.
    num_envs: int = 64
    # "native": C envs stepped in-process; "serial"/"multiprocessing": shoal.vector backends;
    # "envpool": ale-py v5 games in EnvPool's thread pool (shoal/atari_pool.py), num_threads threads.
    backend: Literal["native", "serial", "multiprocessing", "envpool"] = "native"
    num_workers: int = 1
    # Threads the C env spreads its envs over (0 = choose for the machine).
    num_threads: int = 0
    # Environment-specific options passed to shoal.make (e.g. frameskip); validated by the env.
    options: dict[str, Any] = field(default_factory=dict)
    # Where the values that no file or flag set come from: "auto" (derived from the env's spaces,
    # agents and measured speed when no shoal/configs/<env>.toml names it; shoal/train/recipe.py),
    # "file" (that recipe file), "derived" (already derived: the values are in this config),
    # "none" (the plain defaults).
    recipe: Literal["auto", "file", "derived", "none"] = "auto"


@dataclass
class PolicyConfig:
    hidden_size: int = 128
    # Linear layers in the MLP encoder (the first maps observations to hidden_size).
    num_layers: int = 1
    # Nonlinearity after each encoder layer.
    activation: Literal["gelu", "relu", "tanh"] = "gelu"
    lstm: bool = True
    # Standardize each observation feature with running mean/std (clipped to +-5) before the
    # encoder; the statistics are updated after every epoch's update and saved with the model.
    obs_norm: bool = False
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int = 128
    # What reads the observations (docs/pixels.md): "auto" (a CNN for an image observation, a
    # uint8 Box HxWxC or CxHxW alone or in a Dict: "nature", or "impala" for frames under 36x36;
    # the MLP otherwise), "mlp", "nature" (Mnih et al. 2015) or "impala" (Espeholt et al. 2018).
    encoder: Literal["auto", "mlp", "nature", "impala"] = "auto"


@dataclass
class TrainConfig:
    seed: int = 1
    deterministic: bool = False
    device: str = "auto"
    # "auto": bfloat16 where the hardware multiplies it natively (a CPU with AVX512-BF16 or
    # AMX-BF16; a CUDA device with bfloat16 support), else float32.
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    compile: bool = False
    # torch.compile's mode for train.compile: "default", "reduce-overhead" (CUDA graphs for
    # the training forward and backward too; CUDA only), "max-autotune", "max-autotune-no-cudagraphs".
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    # On CUDA, replay the rollout's inference step from a captured CUDA graph (no effect on the
    # CPU). Off by default until its GPU tests (tests/test_cuda.py) have run on a GPU.
    cuda_graph: bool = False
    # Torch intra-op threads (0 = choose for the machine, and keep choosing by epoch times on
    # the CPU; see shoal/train/threads.py).
    torch_threads: int = 0
    # How idle OpenMP threads wait: "passive" (sleep), "active" (spin), or "auto" (the
    # OMP_WAIT_POLICY in the environment, else passive). Applied before torch loads; see
    # shoal/train/threads.py.
    omp_wait_policy: Literal["auto", "passive", "active"] = "auto"
    # Data-parallel processes on this machine, started by `shoal train` itself; each takes 1/N
    # of env.num_envs, batch_size, minibatch_size and max_minibatch_size (shoal/train/launch.py).
    processes: int = 1
    total_steps: int = 10_000_000
    # Agent steps per rollout (num_agents * bptt_horizon must divide it).
    batch_size: int = 131_072
    bptt_horizon: int = 64
    minibatch_size: int = 16_384
    # Largest minibatch run in one forward/backward; larger minibatches accumulate gradients.
    max_minibatch_size: int = 32_768
    update_epochs: int = 1
    optimizer: Literal["adam", "adamw", "muon"] = "adam"
    learning_rate: float = 3e-3
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_fraction: float = 0.0
    min_lr_ratio: float = 0.0
    # Adaptive step size (0 = off): after each pass over the rollout, the learning rate shrinks
    # by 1.5x when the pass's mean approx KL exceeded 2 * target_kl and grows back toward the
    # schedule's value when it fell below target_kl / 2 (shoal/train/optim.py, kl_adapted).
    target_kl: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    muon_momentum: float = 0.95
    # With optimizer = "muon": learning rate of the Adam half (input layer, heads, biases)
    # relative to learning_rate (Muon's rates are ~10x Adam's).
    muon_adam_lr_ratio: float = 0.1
    gamma: float = 0.99
    gae_lambda: float = 0.95
    # "gae", or "adaptive_horizon" (shoal/train/horizon.py: per-lag reward surprises, as far
    # ahead as the critic can predict; gamma is its discount, gae_lambda is unused).
    advantage: Literal["gae", "adaptive_horizon"] = "gae"
    # Adaptive horizon: the horizon starts at min_horizon and never leaves [min, max]; max_horizon
    # is K, the lags the critic predicts (at most the rollout's steps per agent).
    min_horizon: int = 16
    max_horizon: int = 64
    # The critic's loss covers lags up to horizon + horizon_margin (its growth per update).
    horizon_margin: int = 8
    clip_coef: float = 0.2
    vf_coef: float = 0.5
    vf_clip_coef: float = 0.2
    ent_coef: float = 0.01
    max_grad_norm: float = 0.5
    # Rewards are clamped to [-reward_clip, reward_clip] before advantages (0 = off); PufferLib
    # clamps to [-1, 1], which its tuned recipes (e.g. breakout's) assume.
    reward_clip: float = 0.0
    # Divide each reward by the running standard deviation of the discounted return (then clip
    # to +-10), so value targets are O(1) whatever the env's reward units; the statistics are
    # saved in checkpoints.
    reward_scale: bool = False
    norm_adv: bool = True
    # V-trace style correction: advantages are recomputed before every minibatch with each
    # step's latest importance ratio, clipped at rho (deltas) and c (traces).
    vtrace: bool = False
    vtrace_rho_clip: float = 1.0
    vtrace_c_clip: float = 1.0
    # Prioritized segment sampling: alpha 0 = uniform.
    prio_alpha: float = 0.0
    prio_beta0: float = 1.0
    checkpoint_interval: int = 50  # epochs
    # Stop when the mean score (last episodes) reaches this; None = run all steps.
    target_score: float | None = None


@dataclass
class RunConfig:
    # Folder under which each run gets its own folder.
    dir: str = "runs"
    name: str = ""
    quiet: bool = False
    profile: bool = False
    wandb: bool = False
    wandb_project: str = "shoal"
    # A run folder whose checkpoint.pt this run continues from ("" = start fresh).
    resume: str = ""
    # Seconds between the plain log lines printed when quiet (or when stdout is not a terminal).
    log_interval: float = 5.0


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Search space for `shoal sweep`: {"train.learning_rate": {"distribution": "log", ...}}.
    sweep: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> Config:
        return from_dict(self.to_dict())


SECTIONS = {f.name: f for f in dataclasses.fields(Config)}

# Keys that existed once: (the value that asked for nothing, and is still read silently, as in the
# config.json and checkpoints of older runs; why any other value is an error).
REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "train.overlap": (
        False,
        "train.overlap (double-buffered rollouts) was removed: the env step it hid behind inference "
        "was too small a part of an epoch to pay for its code; remove it from the config",
    ),
}


def _normalize(key: str) -> str:
    return key.replace("-", "_")


def _suggest(key: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(candidates))}"


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    section_type = typing.get_type_hints(Config)[section]
    return {f.name: f for f in dataclasses.fields(section_type)}


def all_keys() -> list[str]:
    """Every settable dotted key, e.g. 'train.learning_rate'."""
    keys = []
    for section in SECTIONS:
        if section == "sweep":
            continue
        keys.extend(f"{section}.{name}" for name in _section_fields(section))
    return keys


def coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert `value` (from TOML or a CLI string) to `annotation`, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot take {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}{hint}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of options, got {value!r}")
        return dict(value)
    scalar = _SCALARS.get(annotation)
    if scalar is None:
        raise ConfigError(f"{key}: unsupported type {annotation}")
    return scalar(key, value)


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _coerce_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    raise ConfigError(f"{key} must be an integer, got {value!r}")


def _coerce_float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{key} must be a number, got {value!r}")


def _coerce_str(key: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a string, got {value!r}")


_SCALARS = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def set_key(config: Config, dotted: str, value: Any) -> None:
    """Set one dotted key ('train.learning-rate' or 'env.options.frameskip') on `config`."""
    parts = [_normalize(p) for p in dotted.split(".")]
    section = parts[0]
    if section == "sweep":
        raise ConfigError(f"'{dotted}': the sweep space is set with [sweep.<key>] tables in a config file")
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown config section '{parts[0]}' in '{dotted}'" + _suggest(_normalize(dotted), all_keys())
        )
    if len(parts) < 2:
        raise ConfigError(f"'{dotted}' names a section, not a key" + _suggest(_normalize(dotted), all_keys()))
    fields = _section_fields(section)
    name = parts[1]
    removed = REMOVED_KEYS.get(f"{section}.{name}")
    if removed is not None and len(parts) == 2:
        harmless, why = removed
        if coerce(f"{section}.{name}", value, type(harmless)) != harmless:
            raise ConfigError(why)
        return
    if name not in fields:
        raise ConfigError(f"unknown config key '{dotted}'" + _suggest(f"{section}.{name}", all_keys()))
    target = getattr(config, section)
    annotation = typing.get_type_hints(type(target))[name]
    if typing.get_origin(annotation) is dict and len(parts) > 2:
        option = ".".join(parts[2:])
        getattr(target, name)[option] = _parse_scalar(value)
        return
    if len(parts) > 2:
        raise ConfigError(f"'{section}.{name}' has no sub-keys (got '{dotted}')")
    setattr(target, name, coerce(f"{section}.{name}", value, annotation))


def _parse_scalar(value: Any) -> Any:
    """CLI strings for free-form options: numbers and booleans become numbers and booleans."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def merge_dict(config: Config, data: dict[str, Any], source: str = "") -> None:
    """Apply a nested dict (as read from TOML) onto `config`."""
    where = f" (in {source})" if source else ""
    for section, values in data.items():
        section_key = _normalize(section)
        if section_key == "sweep":
            if not isinstance(values, dict):
                raise ConfigError(f"[sweep] must be a table{where}")
            config.sweep.update(flatten_sweep(values))
            continue
        if section_key not in SECTIONS:
            raise ConfigError(
                f"unknown config section '{section}'{where}" + _suggest(section_key, list(SECTIONS))
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table{where}")
        for key, value in values.items():
            try:
                if isinstance(value, dict) and _normalize(key) == "options":
                    for option, option_value in value.items():
                        set_key(config, f"{section_key}.options.{option}", option_value)
                else:
                    set_key(config, f"{section_key}.{key}", value)
            except ConfigError as e:
                raise ConfigError(f"{e}{where}") from None


def flatten_sweep(values: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """[sweep.train.learning_rate] tables -> {"train.learning_rate": {...}}."""
    flat: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{_normalize(key)}" if prefix else _normalize(key)
        if isinstance(value, dict) and "distribution" in value:
            flat[dotted] = dict(value)
        elif isinstance(value, dict):
            flat.update(flatten_sweep(value, dotted))
        else:
            raise ConfigError(f"sweep entry '{dotted}' must be a table with a 'distribution'")
    return flat


def from_dict(data: dict[str, Any]) -> Config:
    config = Config()
    merge_dict(config, data)
    return config


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_key(k)} = {_toml_value(v, where)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    raise ConfigError(f"{where}: cannot write {type(value).__name__} value {value!r} as TOML")


def to_toml(config: Config, comments: dict[str, str] | None = None) -> str:
    """The config as TOML text that load_toml/from_dict read back to an equal Config.

    TOML has no null, so keys whose value is None (e.g. train.target_score) are written
    as comments; leaving them out restores their None default on reading. `comments` maps
    dotted keys to a note written above the key (e.g. why a derived value was chosen).
    """
    data = config.to_dict()
    comments = comments or {}
    lines: list[str] = []
    for section in SECTIONS:
        if section == "sweep":
            continue
        lines.append(f"[{section}]")
        tables: list[tuple[str, dict[str, Any]]] = []
        for key, value in data[section].items():
            note = comments.get(f"{section}.{key}")
            if note:
                lines.extend(f"# {line}" for line in note.splitlines())
            if isinstance(value, dict):
                tables.append((key, value))
            elif value is None:
                lines.append(f"# {key} = (none)")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value, f'{section}.{key}')}")
        for key, table in tables:
            lines.append("")
            lines.append(f"[{section}.{_toml_key(key)}]")
            for option, value in table.items():
                lines.append(f"{_toml_key(option)} = {_toml_value(value, f'{section}.{key}.{option}')}")
        lines.append("")
    for dotted, spec in data["sweep"].items():
        # Dotted sweep keys become nested tables, which flatten_sweep folds back.
        lines.append("[sweep." + ".".join(_toml_key(part) for part in dotted.split(".")) + "]")
        for key, value in spec.items():
            if value is not None:
                lines.append(f"{_toml_key(key)} = {_toml_value(value, f'sweep.{dotted}.{key}')}")
        lines.append("")
    return "\n".join(lines)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    """['--train.learning-rate', '3e-4', '--env.num-envs=512'] -> [(key, value), ...]."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ConfigError(
                f"unexpected argument '{arg}': config flags look like --section.key VALUE "
                "(e.g. --train.learning-rate 3e-4)"
            )
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args) or _looks_like_flag(args[i + 1]):
                raise ConfigError(f"flag '{arg}' needs a value (e.g. {arg} VALUE or {arg}=VALUE)")
            key, value = arg[2:], args[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


def _looks_like_flag(arg: str) -> bool:
    # Negative numbers ("-1", "-3e-4") are values; "--x.y" is the next flag.
    return arg.startswith("--") and len(arg) > 2


# Fills the values of a config that no file or flag set (the second argument: those dotted
# keys), e.g. shoal.train.recipe.derive_into, which builds and measures the env.
Derive = Callable[[Config, frozenset[str]], Any]


def load_config(
    env_name: str | None = None,
    overrides: list[str] | None = None,
    config_file: str | Path | None = None,
    config_dir: str | Path | None = CONFIG_DIR,
    derive: Derive | None = None,
) -> Config:
    """default.toml -> <env>.toml -> an explicit config file -> CLI overrides.

    `config_dir` None skips the recipes (plain defaults, then the file and flags). A folder must
    hold default.toml, and a native game's recipe must be there (see NATIVE_GAMES). Without an
    env recipe file, `derive` (when given) fills the keys neither the file nor a flag set.
    """
    config = Config()
    file_data = load_toml(config_file) if config_file is not None else {}
    pairs = parse_overrides(overrides or [])
    if config_dir is not None:
        _apply_recipes(config, env_name, Path(config_dir), asks_for_pixels(file_data, pairs))
    if env_name is not None:
        config.env.name = env_name
    explicit: set[str] = set()
    if config_file is not None:
        file_env = file_data.get("env", {}).get("name") if isinstance(file_data.get("env"), dict) else None
        if env_name is None and isinstance(file_env, str):
            # The file names the env: its env toml sits below the file, as if named on the command line.
            return load_config(file_env, overrides, config_file, config_dir, derive)
        merge_dict(config, file_data, str(config_file))
        explicit.update(_dotted_keys(file_data))
        if env_name is not None and config.env.name != env_name:
            raise ConfigError(
                f"{config_file} sets env.name = '{config.env.name}' but the command names env '{env_name}'"
            )
    for key, value in pairs:
        set_key(config, key, value)
        explicit.add(_dotted(key))
    if derive is not None and config.env.recipe == "auto":
        derive(config, frozenset(explicit))
    return config


def _dotted(key: str) -> str:
    """'train.learning-rate' -> 'train.learning_rate'; an env option stays whole."""
    return ".".join(_normalize(part) for part in key.split("."))


def _dotted_keys(data: dict[str, Any]) -> list[str]:
    """The dotted keys a TOML table sets ([train] batch_size -> 'train.batch_size')."""
    keys = []
    for section, values in data.items():
        if isinstance(values, dict) and _normalize(section) != "sweep":
            keys.extend(_dotted(f"{section}.{key}") for key in values)
    return keys


def asks_for_pixels(file_data: dict[str, Any], pairs: list[tuple[str, str]]) -> bool:
    """Whether a config file or a flag sets env.options.obs = "pixels" (a native game's pixel mode)."""
    options = file_data.get("env", {}).get("options", {}) if isinstance(file_data.get("env"), dict) else {}
    value = options.get("obs") if isinstance(options, dict) else None
    for key, flag_value in pairs:
        if _dotted(key) == "env.options.obs":
            value = flag_value
    return value == PIXELS


def pixel_mode(options: dict[str, Any]) -> bool:
    return options.get("obs") == PIXELS


def _apply_recipes(config: Config, env_name: str | None, config_dir: Path, pixels: bool = False) -> None:
    """default.toml, then the env's recipe file. A recipe file is tuned for the game's vector
    observations: in pixel mode only its game options apply and the rest is derived (an image
    recipe, shoal.train.recipe)."""
    default = config_dir / "default.toml"
    if not default.is_file():
        raise ConfigError(f"Shoal's config recipes are missing: no {default} (reinstall Shoal)")
    merge_dict(config, load_toml(default), str(default))
    if env_name is None:
        return
    config.env.name = env_name
    env_file = config_dir / f"{env_file_stem(env_name)}.toml"
    if env_file.is_file() and pixels:
        options = load_toml(env_file).get("env", {}).get("options", {})
        merge_dict(config, {"env": {"options": options}}, str(env_file))
    elif env_file.is_file():
        merge_dict(config, load_toml(env_file), str(env_file))
        config.env.recipe = "file"
    elif env_name in NATIVE_GAMES:
        raise ConfigError(
            f"the recipe of native env '{env_name}' is missing: no {env_file} (reinstall Shoal)"
        )


PIXELS = "pixels"


def env_file_stem(env_name: str) -> str:
    """'breakout' -> 'breakout'; 'gym:CartPole-v1' -> 'gym_CartPole-v1'."""
    return env_name.replace(":", "_").replace("/", "_")


def split_config_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate dotted config flags (--train.learning-rate 3e-4) from the command's own arguments.

    They are taken out before argparse sees the line, so values such as '-1' or '1e-3' reach
    the config untouched and argparse never guesses at abbreviations of them.
    """
    regular: list[str] = []
    dotted: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if arg.startswith("--") and "." in name:
            dotted.append(arg)
            has_value = "=" in arg
            if not has_value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                dotted.append(argv[i + 1])
                i += 1
        else:
            regular.append(arg)
        i += 1
    return regular, dotted
