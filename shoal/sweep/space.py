"""Search spaces for sweeps: config tables -> parameters with a normalized [0, 1] coordinate.

A space comes from ``[sweep.<dotted key>]`` tables of the config, e.g.::

    [sweep.train.learning_rate]
    distribution = "log"
    min = 1e-5
    max = 1e-1

Every parameter maps its natural value to a unit coordinate ``u`` in [0, 1] and back, so the
cost-aware sampler can model all parameters on one scale:

- ``uniform``: linear in the value.
- ``int_uniform``: integers min..max, each owning an equal slice of [0, 1].
- ``log``: linear in log(value); integer keys (e.g. total_steps) are rounded.
- ``logit``: linear in log(1 - value), for parameters close to 1 (gamma, gae_lambda, beta2),
  where 0.99 -> 0.999 matters as much as 0.9 -> 0.99.
- ``pow2``: powers of two min..max (sizes), linear in the exponent.

Optional ``mean`` (the value tried first, instead of the base config's) and ``scale`` (the
standard deviation, in unit coordinates, of the sampler's perturbations of this parameter).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any

import optuna.distributions as od

from shoal.core.config import Config, ConfigError, all_keys

DISTRIBUTIONS = ("uniform", "int_uniform", "log", "logit", "pow2")
SPEC_FIELDS = ("distribution", "min", "max", "mean", "scale")

# The default space: the PPO knobs that matter most, plus train.total_steps, the cost lever.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.learning_rate": {"distribution": "log", "min": 1e-5, "max": 1e-1},
    "train.ent_coef": {"distribution": "log", "min": 1e-5, "max": 1e-1},
    "train.vf_coef": {"distribution": "log", "min": 0.05, "max": 5.0},
    "train.clip_coef": {"distribution": "uniform", "min": 0.05, "max": 0.5},
    "train.vf_clip_coef": {"distribution": "log", "min": 0.05, "max": 5.0},
    "train.gamma": {"distribution": "logit", "min": 0.8, "max": 0.9999},
    "train.gae_lambda": {"distribution": "logit", "min": 0.6, "max": 0.995},
    "train.max_grad_norm": {"distribution": "log", "min": 0.1, "max": 5.0},
    "train.update_epochs": {"distribution": "int_uniform", "min": 1, "max": 4},
    "train.minibatch_size": {"distribution": "pow2", "min": 4096, "max": 65536},
    "train.bptt_horizon": {"distribution": "pow2", "min": 16, "max": 128},
    "train.beta1": {"distribution": "logit", "min": 0.5, "max": 0.999},
    "train.beta2": {"distribution": "logit", "min": 0.9, "max": 0.99999},
    "train.eps": {"distribution": "log", "min": 1e-12, "max": 1e-4},
    "policy.hidden_size": {"distribution": "pow2", "min": 32, "max": 512},
    "train.total_steps": {"distribution": "log", "min": 2_000_000, "max": 100_000_000},
}

# The key whose value sets a run's length; the sampler starts cheap along it and treats a
# run's intermediate points as observations of shorter runs.
COST_KEY = "train.total_steps"


class SpaceError(ConfigError):
    """A sweep search space that cannot be used."""


def _key_type(key: str) -> type:
    section, name = key.split(".", 1)
    annotation = typing.get_type_hints(type(getattr(Config(), section)))[name]
    if annotation in (int, float):
        return annotation
    args = set(typing.get_args(annotation)) - {type(None)}
    if args == {int} or args == {float}:
        return args.pop()
    return object


def config_values(cfg: Config, keys: typing.Iterable[str]) -> dict[str, Any]:
    """The values of dotted keys ("train.gamma") in a config."""
    values = {}
    for key in keys:
        section, name = key.split(".", 1)
        values[key] = getattr(getattr(cfg, section), name)
    return values


def _declared_type(key: str) -> str:
    section, name = key.split(".", 1)
    fields = {f.name: f for f in dataclasses.fields(getattr(Config(), section))}
    return str(fields[name].type)


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Param:
    """One swept config key and its distribution."""

    key: str
    distribution: str
    low: float
    high: float
    is_int: bool
    mean: float | None = None
    scale: float | None = None

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"distribution": self.distribution, "min": self.low, "max": self.high}
        if self.mean is not None:
            spec["mean"] = self.mean
        if self.scale is not None:
            spec["scale"] = self.scale
        return spec

    def _cast(self, value: float) -> float | int:
        return int(round(value)) if self.is_int else float(value)

    def to_unit(self, value: float) -> float:
        """Natural value -> coordinate in [0, 1] (values outside the range map outside it)."""
        value = float(value)
        d = self.distribution
        if d == "uniform":
            return (value - self.low) / (self.high - self.low)
        if d == "int_uniform":
            return (value - self.low + 0.5) / (self.high - self.low + 1)
        if d == "log":
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        if d == "logit":
            a, b = math.log1p(-self.low), math.log1p(-self.high)
            return (math.log1p(-value) - a) / (b - a)
        lo, hi = math.log2(self.low), math.log2(self.high)
        return (math.log2(value) - lo + 0.5) / (hi - lo + 1)

    def from_unit(self, u: float) -> float | int:
        """Coordinate (clipped to [0, 1]) -> a natural value inside the range."""
        u = min(max(float(u), 0.0), 1.0)
        d = self.distribution
        if d == "uniform":
            return self._cast(self.low + u * (self.high - self.low))
        if d == "int_uniform":
            n = int(self.high - self.low + 1)
            return int(self.low) + min(int(u * n), n - 1)
        if d == "log":
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            return self._cast(min(max(value, self.low), self.high))
        if d == "logit":
            a, b = math.log1p(-self.low), math.log1p(-self.high)
            value = -math.expm1(a + u * (b - a))
            return min(max(value, self.low), self.high)
        lo, hi = round(math.log2(self.low)), round(math.log2(self.high))
        n = hi - lo + 1
        return 2 ** (lo + min(int(u * n), n - 1))

    def optuna_distribution(self) -> od.BaseDistribution:
        """The Optuna distribution trial params are stored with (values in natural units)."""
        d = self.distribution
        if d == "pow2":
            lo, hi = round(math.log2(self.low)), round(math.log2(self.high))
            return od.CategoricalDistribution(tuple(2**e for e in range(lo, hi + 1)))
        if d == "int_uniform":
            return od.IntDistribution(int(self.low), int(self.high))
        if d == "log" and self.is_int:
            return od.IntDistribution(int(self.low), int(self.high), log=True)
        if self.is_int:
            return od.IntDistribution(int(self.low), int(self.high))
        return od.FloatDistribution(float(self.low), float(self.high), log=d == "log")


def make_param(key: str, spec: dict[str, Any]) -> Param:
    """Validate one ``[sweep.<key>]`` table and build its Param."""
    key = key.replace("-", "_")
    valid = all_keys()
    if key not in valid:
        raise SpaceError(f"sweep: unknown config key '{key}'" + _suggest(key, valid))
    if not isinstance(spec, dict):
        raise SpaceError(f"sweep.{key} must be a table with distribution, min and max, got {spec!r}")
    for field in spec:
        if field not in SPEC_FIELDS:
            raise SpaceError(
                f"sweep.{key}: unknown field '{field}' (expected {', '.join(SPEC_FIELDS)})"
                + _suggest(field, SPEC_FIELDS)
            )
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise SpaceError(
            f"sweep.{key}: unknown distribution {dist!r} (expected one of {', '.join(DISTRIBUTIONS)}, "
            "or 'off' to leave the key out)" + _suggest(str(dist), DISTRIBUTIONS)
        )
    for bound in ("min", "max"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpaceError(f"sweep.{key}: '{bound}' must be a finite number, got {value!r}")
    low, high = float(spec["min"]), float(spec["max"])
    if low >= high:
        raise SpaceError(f"sweep.{key}: min must be less than max, got min={low:g} max={high:g}")
    kind = _key_type(key)
    if kind is object:
        raise SpaceError(f"sweep.{key}: only numeric keys can be swept, but {key} is {_declared_type(key)}")
    is_int = kind is int
    if dist == "log" and low <= 0:
        raise SpaceError(f"sweep.{key}: a log distribution needs min > 0, got min={low:g}")
    if dist == "logit" and (high >= 1 or is_int):
        raise SpaceError(
            f"sweep.{key}: a logit distribution samples log(1 - x) and needs a float key with "
            f"max < 1, got max={high:g}" + (" on an integer key" if is_int else "")
        )
    if dist == "pow2":
        for value in (low, high):
            if value < 1 or not value.is_integer() or int(value) & (int(value) - 1):
                raise SpaceError(
                    f"sweep.{key}: pow2 bounds must be powers of two (1, 2, 4, ...), got {value:g}"
                )
    if (dist in ("int_uniform", "pow2") or is_int) and not (low.is_integer() and high.is_integer()):
        raise SpaceError(f"sweep.{key}: {dist} on an integer key needs integer bounds, got {low:g}..{high:g}")
    if dist == "uniform" and is_int:
        raise SpaceError(f"sweep.{key} is an integer key: use int_uniform, log or pow2, not uniform")
    mean = spec.get("mean")
    if mean is not None and not (isinstance(mean, (int, float)) and low <= mean <= high):
        raise SpaceError(f"sweep.{key}: mean must be a number within [{low:g}, {high:g}], got {mean!r}")
    scale = spec.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and 0 < scale <= 1):
        raise SpaceError(f"sweep.{key}: scale (in unit coordinates) must be in (0, 1], got {scale!r}")
    if is_int:
        low, high = int(low), int(high)
    return Param(key, dist, low, high, is_int, mean, scale)


class SearchSpace:
    """An ordered set of Params; vectors of unit coordinates follow `keys` order."""

    def __init__(self, params: list[Param]):
        if not params:
            raise SpaceError("the sweep search space is empty: add [sweep.<section>.<key>] tables")
        self.params = params
        self.by_key = {p.key: p for p in params}

    @classmethod
    def from_dict(cls, spec: dict[str, dict[str, Any]]) -> SearchSpace:
        return cls([make_param(k, v) for k, v in spec.items()])

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def __len__(self) -> int:
        return len(self.params)

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.key: p.spec for p in self.params}

    def distributions(self) -> dict[str, od.BaseDistribution]:
        return {p.key: p.optuna_distribution() for p in self.params}

    def to_unit(self, values: dict[str, Any]) -> list[float]:
        return [p.to_unit(values[p.key]) for p in self.params]

    def from_unit(self, unit: typing.Sequence[float]) -> dict[str, float | int]:
        if len(unit) != len(self.params):
            raise ValueError(f"expected {len(self.params)} unit coordinates, got {len(unit)}")
        return {p.key: p.from_unit(u) for p, u in zip(self.params, unit, strict=True)}


def _fit_sizes(spec: dict[str, dict[str, Any]], cfg: Config) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Narrow swept sizes to what the base config's batch allows (the default space must serve
    envs whose batches differ by 1000x): minibatch_size <= batch_size, and
    num_envs * bptt_horizon <= batch_size. A range left empty drops the key (the base value
    stays). Returns the new spec and a note per change."""
    spec = {k: dict(v) for k, v in spec.items()}
    notes = []
    batch = cfg.train.batch_size
    limits = {}
    if "train.batch_size" not in spec:
        limits["train.minibatch_size"] = batch
        if "env.num_envs" not in spec:
            limits["train.bptt_horizon"] = max(batch // max(cfg.env.num_envs, 1), 1)
    for key, limit in limits.items():
        entry = spec.get(key)
        if entry is None or not isinstance(entry.get("max"), (int, float)) or entry["max"] <= limit:
            continue
        if entry.get("distribution") == "pow2":
            limit = 2 ** int(math.log2(limit))
        if not isinstance(entry.get("min"), (int, float)) or entry["min"] >= limit:
            del spec[key]
            notes.append(f"{key} not swept: its range is above what train.batch_size {batch} allows")
        else:
            notes.append(
                f"{key} max lowered from {entry['max']:g} to {limit:g} to fit train.batch_size {batch}"
            )
            entry["max"] = limit
    return spec, notes


def space_from_config(cfg: Config, notes: list[str] | None = None) -> SearchSpace:
    """The config's [sweep] tables (or DEFAULT_SPACE when it has none), fitted to its batch.

    Keys with ``distribution = "off"`` are left out, so a config can drop keys of the default.
    Changes made to fit the batch are appended to `notes` when given.
    """
    spec = {k: v for k, v in (cfg.sweep or DEFAULT_SPACE).items() if v.get("distribution") != "off"}
    spec, changes = _fit_sizes(spec, cfg)
    if notes is not None:
        notes.extend(changes)
    return SearchSpace.from_dict(spec)
