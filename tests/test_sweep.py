"""Sweep search spaces, Pareto fronts and the cost-aware sampler."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from shoal.core.config import Config, ConfigError, load_config
from shoal.sweep.pareto import collect_observations, front_score_at, hypervolume_2d, pareto_front
from shoal.sweep.sampler import ParetoSampler, make_sampler
from shoal.sweep.space import DEFAULT_SPACE, SearchSpace, SpaceError, make_param, space_from_config
from shoal.sweep.synthetic import PROBLEMS

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- search spaces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, spec, values",
    [
        ("train.clip_coef", {"distribution": "uniform", "min": 0.05, "max": 0.5}, [0.05, 0.2, 0.4999, 0.5]),
        ("train.update_epochs", {"distribution": "int_uniform", "min": 1, "max": 4}, [1, 2, 3, 4]),
        (
            "train.learning_rate",
            {"distribution": "log", "min": 1e-5, "max": 1e-1},
            [1e-5, 3e-4, 0.0999, 1e-1],
        ),
        (
            "train.total_steps",
            {"distribution": "log", "min": 2_000_000, "max": 10**8},
            [2_000_000, 12_345_678],
        ),
        ("train.gamma", {"distribution": "logit", "min": 0.8, "max": 0.9999}, [0.8, 0.99, 0.999, 0.9999]),
        ("policy.hidden_size", {"distribution": "pow2", "min": 32, "max": 512}, [32, 64, 128, 256, 512]),
    ],
)
def test_param_round_trips(key, spec, values):
    param = make_param(key, spec)
    for value in values:
        u = param.to_unit(value)
        assert 0.0 <= u <= 1.0
        back = param.from_unit(u)
        assert back == pytest.approx(value, rel=1e-9)
        assert type(back) is type(value) or param.distribution in ("uniform", "logit", "log")
        assert param.optuna_distribution()._contains(param.optuna_distribution().to_internal_repr(back))
    # The unit interval covers the range end to end, in order.
    grid = [param.from_unit(u) for u in np.linspace(0, 1, 41)]
    assert grid[0] == pytest.approx(spec["min"]) and grid[-1] == pytest.approx(spec["max"])
    assert all(a <= b for a, b in zip(grid, grid[1:], strict=False))
    # Unit coordinates of sampled values round-trip through the value (bins map to themselves).
    for u in np.linspace(0, 1, 13):
        v = param.from_unit(u)
        assert param.from_unit(param.to_unit(v)) == pytest.approx(v, rel=1e-9)


def test_logit_spreads_values_near_one():
    gamma = make_param("train.gamma", {"distribution": "logit", "min": 0.9, "max": 0.999})
    # 0.9 -> 0.99 and 0.99 -> 0.999 are equal steps in log(1 - x).
    assert gamma.to_unit(0.99) == pytest.approx(0.5)


def test_default_space_is_valid_and_holds_the_default_config():
    space = SearchSpace.from_dict(DEFAULT_SPACE)
    required = {
        "train.learning_rate", "train.ent_coef", "train.vf_coef", "train.clip_coef", "train.vf_clip_coef",
        "train.gamma", "train.gae_lambda", "train.max_grad_norm", "train.update_epochs",
        "train.minibatch_size", "train.bptt_horizon", "train.beta1", "train.beta2", "train.eps",
        "policy.hidden_size", "train.total_steps",
    }  # fmt: skip
    assert required <= set(space.keys)
    cfg = Config()
    for p in space.params:
        section, name = p.key.split(".", 1)
        assert 0.0 <= p.to_unit(getattr(getattr(cfg, section), name)) <= 1.0, p.key


def test_space_from_config_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        "[sweep.train.learning_rate]\ndistribution = 'log'\nmin = 1e-4\nmax = 1e-2\n"
        "[sweep.train.total-steps]\ndistribution = 'log'\nmin = 100000\nmax = 1000000\n"
    )
    cfg = load_config("cartpole", [], path, config_dir=tmp_path)
    space = space_from_config(cfg)
    assert set(space.keys) == {"train.learning_rate", "train.total_steps"}
    assert space.by_key["train.total_steps"].is_int


@pytest.mark.parametrize(
    "key, spec, message",
    [
        (
            "train.learning_rate",
            {"distribution": "log", "min": 1e-2, "max": 1e-4},
            "min must be less than max",
        ),
        ("train.learning_rate", {"distribution": "log", "min": 0.0, "max": 1e-2}, "needs min > 0"),
        (
            "train.learning_rat",
            {"distribution": "log", "min": 1e-4, "max": 1e-2},
            "did you mean 'train.learning_rate'",
        ),
        ("train.learning_rate", {"distribution": "logg", "min": 1e-4, "max": 1e-2}, "did you mean 'log'"),
        ("train.gamma", {"distribution": "logit", "min": 0.9, "max": 1.0}, "max < 1"),
        ("policy.hidden_size", {"distribution": "pow2", "min": 32, "max": 500}, "powers of two"),
        ("train.update_epochs", {"distribution": "uniform", "min": 1, "max": 4}, "integer key"),
        ("train.optimizer", {"distribution": "uniform", "min": 0, "max": 1}, "only numeric keys"),
        ("train.learning_rate", {"distribution": "log", "min": 1e-4}, "'max' must be a finite number"),
        (
            "train.learning_rate",
            {"distribution": "log", "min": 1e-4, "max": 1e-2, "maxx": 1},
            "unknown field",
        ),
    ],
)
def test_invalid_spaces_are_clear_errors(key, spec, message):
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_param(key, spec)


def test_space_errors_are_config_errors():
    assert issubclass(SpaceError, ConfigError)
    with pytest.raises(SpaceError, match="empty"):
        SearchSpace.from_dict({})


def test_sizes_are_fitted_to_the_batch_and_keys_can_be_switched_off():
    cfg = Config()
    cfg.train.batch_size = 8192
    cfg.env.num_envs = 128
    notes = []
    space = space_from_config(cfg, notes)
    assert space.by_key["train.minibatch_size"].high == 8192
    assert space.by_key["train.bptt_horizon"].high == 64  # 128 envs x 64 = 8192
    assert len(notes) == 2 and "to fit train.batch_size 8192" in notes[0]
    cfg.train.batch_size = 512  # below the minibatch range: not swept
    cfg.env.num_envs = 16
    notes = []
    space = space_from_config(cfg, notes)
    assert "train.minibatch_size" not in space and space.by_key["train.bptt_horizon"].high == 32
    assert any("train.minibatch_size not swept" in n for n in notes)
    cfg.sweep = {**DEFAULT_SPACE, "train.eps": {"distribution": "off"}}
    assert "train.eps" not in space_from_config(cfg)


# --- Pareto fronts -------------------------------------------------------------------------


def test_pareto_front_on_hand_made_points():
    costs = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 0.5, math.nan]
    scores = [0.1, 0.5, 0.4, 0.45, 0.9, 0.9, 0.05, 1.0]
    front = pareto_front(costs, scores)
    assert front == [6, 0, 1, 4]
    assert front_score_at([costs[i] for i in front], [scores[i] for i in front], 3.5) == 0.5
    assert front_score_at([1.0], [0.3], 0.5) == -math.inf


def test_hypervolume_2d():
    # Two points: (1, 0.5) and (2, 1.0) with reference (4, 0): 1*0.5 + 2*1.0.
    assert hypervolume_2d([1.0, 2.0], [0.5, 1.0], ref_cost=4.0, ref_score=0.0) == pytest.approx(2.5)
    # Dominated points and points beyond the reference add nothing.
    assert hypervolume_2d([1.0, 2.0, 3.0, 5.0], [0.5, 1.0, 0.7, 2.0], 4.0, 0.0) == pytest.approx(2.5)
    assert hypervolume_2d([], [], 4.0, 0.0) == 0.0


# --- the sampler ---------------------------------------------------------------------------


def _run_synthetic(sampler_name: str, trials: int, seed: int = 0):
    problem = PROBLEMS["ppo_like"]
    space = SearchSpace.from_dict(problem.space)
    sampler = make_sampler(sampler_name, space, seed=seed, n_startup=6)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(seed)
    for _ in range(trials):
        trial = study.ask(fixed_distributions=space.distributions())
        curve = problem.curve(trial.params, rng)
        trial.set_user_attr("curve", [list(p) for p in curve])
        study.tell(trial, [curve[-1][2], curve[-1][0]])
    return study, space, sampler


@pytest.fixture(scope="module")
def pareto_run():
    return _run_synthetic("pareto", 22, seed=0)


def test_pareto_sampler_stays_in_bounds_and_covers_the_cost_range(pareto_run):
    study, space, sampler = pareto_run
    assert isinstance(sampler, ParetoSampler)
    dists = space.distributions()
    for t in study.trials:
        for key, dist in dists.items():
            assert dist._contains(dist.to_internal_repr(t.params[key])), (key, t.params[key])
    steps_param = space.by_key["train.total_steps"]
    # Start-up trials stay cheap: the lowest 30% of the run-length range.
    for t in study.trials[1:6]:
        assert steps_param.to_unit(t.params["train.total_steps"]) <= 0.3 + 1e-9
    assert sampler.last_info["kind"] == "pareto"
    # Model-based trials aim at targets spread over the cost range, not one point.
    later = [steps_param.to_unit(t.params["train.total_steps"]) for t in study.trials[8:]]
    assert max(later) - min(later) > 0.3
    obs = collect_observations(study.trials, space, "train.total_steps")
    # Curve points count: ten per trial whose points lie inside the run-length range.
    assert len(obs) > 3 * len(study.trials)


def test_pareto_sampler_improves_on_its_startup(pareto_run):
    study, _, _ = pareto_run
    first = max(t.values[0] for t in study.trials[:8])
    best = max(t.values[0] for t in study.trials)
    assert best > first


def test_pareto_sampler_respects_max_cost():
    problem = PROBLEMS["bowl"]
    space = SearchSpace.from_dict(problem.space)
    sampler = ParetoSampler(space, seed=3, n_startup=6, max_cost=200.0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(0)
    for _ in range(20):
        trial = study.ask(fixed_distributions=space.distributions())
        curve = problem.curve(trial.params, rng)
        trial.set_user_attr("curve", [list(p) for p in curve])
        study.tell(trial, [curve[-1][2], curve[-1][0]])
    # bowl costs total_steps / 1e5 seconds: 200 s is 2e7 steps. Model-based picks aim below it.
    assert sampler.last_info["target_cost"] <= 200.0
    late = [t.params["train.total_steps"] for t in study.trials[10:]]
    assert np.median(late) < 2e7


def test_enqueued_params_are_kept():
    space = SearchSpace.from_dict(PROBLEMS["bowl"].space)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=ParetoSampler(space, seed=0))
    params = space.from_unit([0.3] * len(space))
    study.enqueue_trial(params)
    trial = study.ask(fixed_distributions=space.distributions())
    assert trial.params == params


@pytest.mark.parametrize("name", ["random", "tpe", "gp"])
def test_alternative_samplers_run_multi_objective(name):
    study, space, _ = _run_synthetic(name, 4)
    assert len(study.trials) == 4 and all(len(t.values) == 2 for t in study.trials)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("grid", space)


def test_default_toml_sweep_block_matches_default_space():
    assert load_config().sweep == DEFAULT_SPACE
