"""Cost-aware hyperparameter sweeps on Optuna (see docs/sweeps.md)."""

from shoal.sweep.pareto import hypervolume_2d, pareto_front
from shoal.sweep.runner import SweepError, SweepResult, SweepSettings, run_sweep
from shoal.sweep.sampler import ParetoSampler, make_sampler
from shoal.sweep.space import DEFAULT_SPACE, SearchSpace, SpaceError, space_from_config

__all__ = [
    "DEFAULT_SPACE",
    "ParetoSampler",
    "SearchSpace",
    "SpaceError",
    "SweepError",
    "SweepResult",
    "SweepSettings",
    "hypervolume_2d",
    "make_sampler",
    "pareto_front",
    "run_sweep",
    "space_from_config",
]
