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
    cfg = load_config("cartpole", [], path, config_dir=None)
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


# --- what the sampler learns from (issue 21) ---------------------------------------------------

LR_STEPS_SPACE = {
    "train.learning_rate": {"distribution": "log", "min": 1e-5, "max": 1e-1},
    "train.total_steps": {"distribution": "log", "min": 1_000_000, "max": 100_000_000},
}


def _tell_curve(study, trial, space, score_at, epochs=5):
    """Tell a run whose score after each of `epochs` parts is score_at(unit params, steps)."""
    total = float(trial.params["train.total_steps"])
    unit = dict(zip(space.keys, space.to_unit(trial.params), strict=True))
    curve = []
    for i in range(1, epochs + 1):
        steps = total * i / epochs
        curve.append([steps / 1e5, steps, score_at(unit, steps)])
    trial.set_user_attr("curve", curve)
    study.tell(trial, [curve[-1][2], curve[-1][0]])


def test_failed_runs_steer_the_sampler_away_from_where_runs_fail():
    # The score rises with the learning rate up to where every run diverges: a model that
    # never sees the failures extrapolates the rise into the failing region.
    space = SearchSpace.from_dict(LR_STEPS_SPACE)
    sampler = ParetoSampler(space, seed=0, n_startup=6)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def score_at(unit, steps):
        return unit["train.learning_rate"] + 0.1 * math.log10(steps)

    for _ in range(30):
        trial = study.ask(fixed_distributions=space.distributions())
        u = space.by_key["train.learning_rate"].to_unit(trial.params["train.learning_rate"])
        if u > 0.6:
            trial.set_user_attr("cost", 5.0)
            trial.set_user_attr("error", "Diverged: loss became nan")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            _tell_curve(study, trial, space, score_at)
    late = study.trials[12:]
    failing = sum(t.state == optuna.trial.TrialState.FAIL for t in late)
    assert failing <= len(late) // 3, f"{failing} of {len(late)} model-based trials went where runs fail"
    obs = collect_observations(study.trials, space, "train.total_steps")
    assert obs.failed.any() and np.all(obs.score[obs.failed] == obs.score[~obs.failed].min())


def test_runs_cut_at_max_cost_are_modelled_at_the_steps_they_ran():
    space = SearchSpace.from_dict(LR_STEPS_SPACE)
    params = {"train.learning_rate": 1e-3, "train.total_steps": 100_000_000}
    trial = optuna.trial.create_trial(
        params=params,
        distributions=space.distributions(),
        values=[0.5, 60.0],
        user_attrs={"cut_at_max_cost": True, "agent_steps": 5_000_000, "curve": []},
    )
    obs = collect_observations([trial], space, "train.total_steps")
    steps_param = space.by_key["train.total_steps"]
    (final,) = obs.x[obs.final]
    assert steps_param.from_unit(final[1]) == pytest.approx(5_000_000, rel=1e-6)


def test_curve_points_of_one_run_share_its_offset_in_the_model():
    # Each run's whole curve is shifted by its seed's luck; the points of one run agree closely.
    space = SearchSpace.from_dict(LR_STEPS_SPACE)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(0))
    rng = np.random.default_rng(0)
    for _ in range(12):
        trial = study.ask(fixed_distributions=space.distributions())
        offset = rng.normal(0.0, 0.3)
        _tell_curve(study, trial, space, lambda u, s, o=offset: u["train.learning_rate"] + o, epochs=10)
    obs = collect_observations(study.trials, space, "train.total_steps")
    sds = {}
    for weighting in ("trial", "independent"):
        sampler = ParetoSampler(space, seed=0, curve_weighting=weighting)
        score_model, _, _ = sampler._fit(obs, np.zeros((0, len(space))))
        x = obs.x[obs.final]
        sds[weighting] = score_model.predict(sampler._with_runs(x, -1 - np.arange(len(x))))[1].mean()
        if weighting == "trial":
            # The fitted per-run offset variance holds the seed luck, not the point noise.
            levels = [v for k, v in score_model.gp.kernel_.get_params().items() if k.endswith("__level")]
            assert levels and levels[0] > 0.05
    # Counted as independent results, ten points of one lucky run look like certainty.
    assert sds["trial"] > 1.5 * sds["independent"], sds


def _finished_study(space, storage=None, n=10, seed=0):
    study = optuna.create_study(
        directions=["maximize", "minimize"], storage=storage, sampler=optuna.samplers.RandomSampler(seed)
    )
    for _ in range(n):
        trial = study.ask(fixed_distributions=space.distributions())
        _tell_curve(study, trial, space, lambda u, s: -((u["train.learning_rate"] - 0.7) ** 2))
    return study


def test_runs_in_flight_on_other_workers_are_not_proposed_again():
    space = SearchSpace.from_dict(LR_STEPS_SPACE)
    storage = optuna.storages.InMemoryStorage()
    study = _finished_study(space, storage, n=12)
    name = study.study_name

    def suggest():
        # Every worker sees the same results; the same seed makes the point of the test sharp.
        sampler = ParetoSampler(space, seed=5, n_startup=6)
        worker = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        trial = worker.ask(fixed_distributions=space.distributions())
        return trial, np.array(space.to_unit(trial.params)), sampler

    first, x1, _ = suggest()  # left RUNNING, as on another worker
    _, x2, sampler = suggest()
    assert sampler.last_info["kind"] == "pareto"
    assert np.abs(x1 - x2).max() > 0.02, (first.params, x1, x2)
    assert sampler.last_info["pending"] == 1


def test_a_key_no_trial_sets_warns_once_and_the_rest_is_modelled():
    full = SearchSpace.from_dict(
        {**LR_STEPS_SPACE, "train.clip_coef": {"distribution": "uniform", "min": 0.05, "max": 0.5}}
    )
    partial = SearchSpace.from_dict(LR_STEPS_SPACE)
    study = _finished_study(partial, n=10)
    sampler = ParetoSampler(full, seed=0, n_startup=6)
    study.sampler = sampler
    with pytest.warns(UserWarning, match="train.clip_coef") as caught:
        for _ in range(2):
            trial = study.ask(fixed_distributions=full.distributions())
            assert sampler.last_info["kind"] == "pareto"
            assert set(trial.params) == set(full.keys)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert sum("train.clip_coef" in str(w.message) for w in caught) == 1


def test_a_sweep_worker_trains_with_the_configured_omp_wait_policy(tmp_path) -> None:
    """A spawned worker loads torch only when it trains, so the default train function sets
    train.omp_wait_policy first, as `shoal train` does (importing shoal itself sets nothing)."""
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from shoal.core.config import load_config\n"
        "from shoal.sweep.runner import resolve_train_fn\n"
        "cfg = load_config('cartpole', ['--train.total-steps', '1024', '--run.quiet', 'true',\n"
        f"    '--run.dir', {str(tmp_path)!r}, '--train.omp-wait-policy', 'passive'])\n"
        "result = resolve_train_fn(None)(cfg)\n"
        "print(json.dumps(result.metrics['omp_wait_policy']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == "passive"
