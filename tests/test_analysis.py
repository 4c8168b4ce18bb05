"""shoal.analysis against sweeps built here with Optuna directly (known values, failed and running trials)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState, create_trial

from shoal.analysis import (
    SweepNotFoundError,
    analyze_main,
    compare_main,
    compare_samples,
    describe,
    fastest_to_score,
    filter_max_cost,
    list_sweeps,
    load_run,
    load_sweep,
    param_defaults,
    param_importance,
    parameter_summary,
    pareto_front,
    reproduce_main,
    top_n,
    top_table,
)
from shoal.analysis.analyze import analyze_sweep, compare_sweeps
from shoal.analysis.stats import config_label
from shoal.core.config import Config, set_key

optuna.logging.set_verbosity(optuna.logging.WARNING)

DISTRIBUTIONS = {
    "train.learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
    "train.beta1": FloatDistribution(0.8, 0.99),
    "train.optimizer": CategoricalDistribution(["adam", "muon"]),
}

# (score, cost seconds, agent steps, learning_rate, beta1, optimizer)
SMALL = [
    (1.0, 10.0, 100, 1e-3, 0.88, "adam"),
    (2.0, 20.0, 300, 2e-3, 0.85, "adam"),
    (1.5, 30.0, 200, 3e-3, 0.89, "muon"),
    (3.0, 40.0, 400, 4e-3, 0.95, "muon"),
    (2.5, 50.0, 500, 5e-3, 0.97, "muon"),
]


def storage_for(path: Path) -> JournalStorage:
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def run_config(params: dict[str, Any], seed: int) -> dict[str, Any]:
    cfg = Config()
    cfg.env.name = "cartpole"
    cfg.train.seed = seed
    for key, value in params.items():
        set_key(cfg, key, value)
    return cfg.to_dict()


def make_sweep(
    sweeps_dir: Path,
    name: str,
    rows: list[tuple],
    failed: int = 1,
    running: int = 1,
    base_config: dict[str, Any] | None = None,
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage_for(sweeps_dir / f"{name}.journal"),
        directions=["maximize", "minimize"],
    )
    study.set_user_attr("env", "cartpole")
    if base_config is not None:
        study.set_user_attr("base_config", base_config)
    for i, (score, cost, steps, lr, beta1, optimizer) in enumerate(rows):
        params = {"train.learning_rate": lr, "train.beta1": beta1, "train.optimizer": optimizer}
        curve = [[cost * f, steps * f, score * f] for f in (0.25, 0.5, 0.75, 1.0)]
        study.add_trial(
            create_trial(
                values=[score, cost],
                params=params,
                distributions=DISTRIBUTIONS,
                user_attrs={
                    "curve": curve,
                    "agent_steps": steps,
                    "sps": steps / cost,
                    "seed": i,
                    "config": run_config(params, i),
                },
            )
        )
    for _ in range(failed):
        study.add_trial(
            create_trial(
                state=TrialState.FAIL,
                params={"train.learning_rate": 0.05},
                distributions={"train.learning_rate": DISTRIBUTIONS["train.learning_rate"]},
                user_attrs={"error": "diverged"},
            )
        )
    for _ in range(running):
        study.ask()  # left RUNNING, as a trial of a sweep still in progress would be
    return study


def big_rows(n: int = 40, seed: int = 0) -> list[tuple]:
    """Score peaks at learning_rate 3e-3 and ignores beta1 and the optimizer."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        lr = float(10 ** rng.uniform(-4, -1))
        beta1 = float(rng.uniform(0.8, 0.99))
        optimizer = str(rng.choice(["adam", "muon"]))
        score = 100 - 40 * abs(math.log10(lr) + 2.5) + rng.normal(0, 1)
        cost = float(rng.uniform(5, 500))
        rows.append((score, cost, int(cost * 1000), lr, beta1, optimizer))
    return rows


def add_reproductions(sweeps_dir: Path, name: str, scores: dict[int, list[float]]) -> None:
    study = optuna.create_study(
        study_name=f"{name}:reproduce",
        storage=storage_for(sweeps_dir / f"{name}.journal"),
        directions=["maximize", "minimize"],
        load_if_exists=True,
    )
    for source, values in scores.items():
        for k, score in enumerate(values):
            study.add_trial(
                create_trial(
                    values=[score, 10.0 + k],
                    user_attrs={
                        "source_trial": source,
                        "seed": 1000 + k,
                        "config": run_config({}, 1000 + k),
                        "curve": [[10.0 + k, 1000, score]],
                        "agent_steps": 1000,
                        "sps": 100.0,
                    },
                )
            )
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"source_trial": 0, "error": "boom"}))


@pytest.fixture
def sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "sweeps"
    make_sweep(directory, "small", SMALL)
    return directory


# ------------------------------------------------------------------------------------------- loading


def test_load_sweep_keeps_only_completed_trials(sweeps: Path) -> None:
    sweep = load_sweep("small")
    assert list(sweep.trials["trial"]) == [0, 1, 2, 3, 4]
    assert sweep.counts == {"COMPLETE": 5, "FAIL": 1, "RUNNING": 1}
    assert sweep.param_names == ["train.beta1", "train.learning_rate", "train.optimizer"]
    assert sweep.trials["steps"].tolist() == [100, 300, 200, 400, 500]
    assert sweep.trials.loc[3, "sps"] == pytest.approx(10.0)
    assert sweep.env == "cartpole"
    assert sweep.reproductions.empty


def test_missing_sweep_lists_existing_ones_and_creates_nothing(sweeps: Path) -> None:
    make_sweep(sweeps, "other", SMALL[:2])
    with pytest.raises(SweepNotFoundError) as info:
        load_sweep("smal")
    message = str(info.value)
    assert "no sweep named 'smal'" in message
    assert "small" in message and "other" in message
    assert not (sweeps / "smal.journal").exists()
    assert [name for name, _ in list_sweeps()] == ["other", "small"]


def test_missing_sweep_with_no_sweeps_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SweepNotFoundError, match="no sweeps were found"):
        load_sweep("cp")


def test_rdb_storage_and_study_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    study = optuna.create_study(study_name="db-sweep", storage=url, directions=["maximize", "minimize"])
    study.add_trial(
        create_trial(
            values=[1.0, 2.0],
            params={"train.gamma": 0.99},
            distributions={"train.gamma": FloatDistribution(0.9, 0.999)},
        )
    )
    assert load_sweep("db-sweep", url).trials["score"].tolist() == [1.0]
    with pytest.raises(SweepNotFoundError, match="db-sweep"):
        load_sweep("nope", url)


# ------------------------------------------------------------------------------- fronts, filters, tables


def test_pareto_fronts(sweeps: Path) -> None:
    trials = load_sweep("small").trials
    assert pareto_front(trials, x="cost")["trial"].tolist() == [0, 1, 3]
    assert pareto_front(trials, x="steps")["trial"].tolist() == [0, 2, 1, 3]


def test_pareto_front_ignores_nan_scores(sweeps: Path) -> None:
    trials = load_sweep("small").trials.copy()
    trials.loc[0, "score"] = math.nan
    assert pareto_front(trials, x="cost")["trial"].tolist() == [1, 3]


def test_cost_filter_and_fastest_to_score(sweeps: Path) -> None:
    trials = load_sweep("small").trials
    assert filter_max_cost(trials, 30)["trial"].tolist() == [0, 1, 2]
    assert top_n(trials, 2, max_cost=30)["trial"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="positive"):
        filter_max_cost(trials, 0)
    # Curves reach 3 * 0.75 = 2.25 at 30 s for trial 3 and 2.5 * 1.0 at 50 s for trial 4; trial 1 never.
    fastest = fastest_to_score(trials, 2.2)
    assert fastest["trial"].tolist() == [3, 4]
    assert fastest["cost_to_reach"].tolist() == [30.0, 50.0]
    assert fastest["steps_to_reach"].tolist() == [300.0, 500.0]


def test_top_table_with_defaults_and_ranges(sweeps: Path) -> None:
    sweep = load_sweep("small")
    top = top_n(sweep.trials, 3)
    assert top["trial"].tolist() == [3, 4, 1]
    defaults = param_defaults(sweep.param_names, sweep.base_config)
    assert defaults["train.beta1"] == 0.9 and defaults["train.optimizer"] == "adam"
    table = top_table(top, sweep.param_names, defaults)
    assert list(table.columns) == ["parameter", "default", "#3", "#4", "#1"]
    beta_row = table[table["parameter"] == "train.beta1"].iloc[0]
    assert beta_row["default"] == "0.9" and beta_row["#3"] == "0.95"
    summary = parameter_summary(sweep.trials, top, sweep.param_names, defaults).set_index("parameter")
    assert summary.loc["train.beta1", "verdict"] == "above default in 2/3 top runs"
    assert summary.loc["train.beta1", "top range"] == "0.85 .. 0.97"
    assert summary.loc["train.beta1", "sweep range"] == "0.85 .. 0.97"
    # Default learning rate 3e-3; the top runs used 4e-3, 5e-3 and 2e-3.
    assert summary.loc["train.learning_rate", "verdict"] == "above default in 2/3 top runs"
    assert summary.loc["train.optimizer", "verdict"] == "muon in 2/3 top runs (not default)"


def test_defaults_come_from_base_config_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = Config()
    base.train.beta1 = 0.5
    make_sweep(tmp_path / "sweeps", "based", SMALL, base_config=base.to_dict())
    sweep = load_sweep("based")
    assert param_defaults(sweep.param_names, sweep.base_config)["train.beta1"] == 0.5
    summary = parameter_summary(
        sweep.trials,
        top_n(sweep.trials, 5),
        sweep.param_names,
        param_defaults(sweep.param_names, sweep.base_config),
    )
    assert "above default in 5/5 top runs" in summary["verdict"].tolist()


# ------------------------------------------------------------------------------------------- importance


def test_importance_finds_the_parameter_that_matters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_sweep(tmp_path / "sweeps", "big", big_rows())
    sweep = load_sweep("big")
    importance = param_importance(sweep.trials, sweep.distributions)
    assert importance.ok, importance.message
    assert importance.methods == ["fanova", "ped-anova"]
    assert importance.table.index[0] == "train.learning_rate"
    assert importance.table["fanova"].idxmax() == "train.learning_rate"
    assert importance.table["fanova"].sum() == pytest.approx(1.0)


def test_importance_with_too_few_trials_says_why(sweeps: Path) -> None:
    sweep = load_sweep("small")
    few = param_importance(sweep.trials.head(3), sweep.distributions)
    assert not few.ok and "at least" in few.message and "has 3" in few.message
    flat = sweep.trials.copy()
    flat["train.learning_rate"] = 1e-3
    flat["train.beta1"] = 0.9
    flat["train.optimizer"] = "adam"
    assert "more than one value" in param_importance(flat, sweep.distributions).message


# ------------------------------------------------------------------------------------------- significance


def test_significant_for_clearly_separated_samples() -> None:
    rng = np.random.default_rng(1)
    result = compare_samples(10 + rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8), "good", "bad")
    assert result.verdict == "significant"
    assert result.p_value < 0.01
    assert result.diff_ci[0] > 5
    assert "significant" in result.text()


def test_not_significant_for_one_distribution() -> None:
    rng = np.random.default_rng(2)
    result = compare_samples(rng.normal(0, 1, 10), rng.normal(0, 1, 10))
    assert result.verdict == "not significant"
    assert result.p_value > 0.05
    assert result.diff_ci[0] < 0 < result.diff_ci[1]


def test_small_samples_are_handled_honestly() -> None:
    # Three seeds each can never reach p < 0.05 with an exact rank test, however far apart.
    tiny = compare_samples([10, 11, 12], [0, 1, 2])
    assert tiny.verdict == "not significant" and "cannot go below" in tiny.note
    single = compare_samples([10.0], [0.0, 1.0])
    assert single.verdict == "not significant" and "too few" in single.note
    ties = compare_samples([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    assert ties.p_value == 1.0 and ties.verdict == "not significant"
    with_nan = compare_samples([5, 6, 7, 8, 9, math.nan], [0, 1, 2, 3, 4])
    assert with_nan.a.n == 5 and with_nan.verdict == "significant"


def test_describe_gives_mean_std_and_ci() -> None:
    summary = describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary.n == 5 and summary.mean == 3.0
    assert summary.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert 1.0 <= summary.ci_low < 3.0 < summary.ci_high <= 5.0
    one = describe([7.0])
    assert (one.ci_low, one.ci_high) == (7.0, 7.0) and math.isnan(one.std)


# ------------------------------------------------------------------------------------------- analyze CLI


REPORT_FILES = [
    "front_cost.png",
    "front_steps.png",
    "sps.png",
    "params.png",
    "importance.png",
    "curves.png",
    "trials.csv",
    "report.html",
]


def test_analyze_writes_every_output(sweeps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_reproductions(sweeps, "small", {3: [3.0, 3.1, 2.9, 3.05, 2.95], 1: [1.0, 1.1, 0.9, 1.05, 0.95]})
    code = analyze_main(["small", "--top", "3", "--min-score", "2.2", "--max-cost", "45"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Pareto front" in out and "Top 3 by score" in out and "below default in 2/3 top runs" in out
    assert "Fastest to reach score 2.2" in out
    assert "SIGNIFICANT" in out and "trial #3" in out
    assert "Parameter importance for the score" in out
    report_dir = sweeps / "small-report"
    for name in REPORT_FILES + ["reproduce.png"]:
        assert (report_dir / name).stat().st_size > 0, name
    html = (report_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7  # every PNG but none twice
    assert "<table" in html and "significant" in html
    assert not list(report_dir.glob("*.tmp"))


def test_analyze_vs_other_sweep_with_and_without_reproductions(
    sweeps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_sweep(sweeps, "big", big_rows(12))
    out_dir = tmp_path / "both"
    assert analyze_main(["big", "--vs", "small", "--out", str(out_dir), "--top", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # The best trials of two sweeps are no samples a test applies to: shown, not tested.
    assert "no seed re-runs (2 or more) for big, small" in out and "no test applies" in out
    assert "big best 4:" in out and "small best 4:" in out
    assert "SIGNIFICANT" not in out
    untested = compare_sweeps(analyze_sweep(load_sweep("big")), analyze_sweep(load_sweep("small")), 4)
    assert untested.kind == "no test" and untested.comparison is None
    for name in REPORT_FILES + ["params_small.png", "importance_small.png", "trials_small.csv"]:
        assert (out_dir / name).stat().st_size > 0, name

    # With seed re-runs on both sides, the test uses them instead of the best-k trial scores.
    add_reproductions(sweeps, "small", {3: [3.0, 3.1, 2.9, 3.05, 2.95]})
    add_reproductions(sweeps, "big", {0: [3.0, 3.1, 2.9, 3.05, 2.95], 5: [2.0, 2.1, 1.9, 2.05, 1.95]})
    between = compare_sweeps(analyze_sweep(load_sweep("big")), analyze_sweep(load_sweep("small")))
    assert between.kind == "seed re-runs" and not between.notes
    assert "big trial #0 vs small trial #3" in between.label
    assert between.comparison.verdict == "not significant" and between.comparison.p_value == 1.0


def test_analyze_missing_and_empty_sweeps(sweeps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze_main(["nope"]) == 2
    out = capsys.readouterr().out
    assert "no sweep named 'nope'" in out and "small" in out
    make_sweep(sweeps, "empty", [], failed=2, running=1)
    assert analyze_main(["empty"]) == 1
    out = capsys.readouterr().out
    assert "no completed trials yet" in out and "2 fail" in out and "1 running" in out
    assert not (sweeps / "empty-report").exists()
    assert analyze_main(["small", "--top", "0"]) == 2


def test_analyze_survives_nan_scores_and_missing_attrs(
    sweeps: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = optuna.load_study(study_name="small", storage=storage_for(sweeps / "small.journal"))
    study.add_trial(
        create_trial(
            values=[float("inf"), 5.0],
            params={"train.beta1": 0.9},
            distributions={"train.beta1": DISTRIBUTIONS["train.beta1"]},
        )
    )
    study.add_trial(create_trial(values=[4.0, 60.0]))  # no params, no user attrs at all
    assert analyze_main(["small"]) == 0, capsys.readouterr().out
    assert (sweeps / "small-report" / "report.html").stat().st_size > 0


# ------------------------------------------------------------------------------------------- reproduce


def fake_train(cfg: Any, on_epoch: Any = None) -> SimpleNamespace:
    """Deterministic stand-in for shoal.train.train: score depends on the learning rate and seed."""
    history = []
    quality = 10 - abs(math.log10(cfg.train.learning_rate) + 2.4)
    for epoch in range(1, 4):
        metrics = {
            "epoch": epoch,
            "agent_steps": 1000 * epoch,
            "wall_time": 2.0 * epoch,
            "sps": 500.0,
            "score": quality * epoch / 3 + (cfg.train.seed % 7) * 0.01,
        }
        history.append(metrics)
        if on_epoch is not None and on_epoch(metrics) is False:
            break
    return SimpleNamespace(metrics=history[-1], history=history, run_dir=None)


def failing_train(cfg: Any, on_epoch: Any = None) -> SimpleNamespace:
    if cfg.train.seed == 1001:
        raise RuntimeError("simulated crash")
    return fake_train(cfg, on_epoch)


def test_reproduce_runs_top_configs_over_new_seeds(sweeps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reproduce_main(["small", "--top", "2", "--seeds", "3"], train_fn=fake_train) == 0
    out = capsys.readouterr().out
    assert "trial #3" in out and "trial #4" in out and "Seed re-runs so far" in out
    sweep = load_sweep("small")
    repro = sweep.reproductions
    assert len(repro) == 6
    assert sorted(repro["source_trial"].unique()) == [3, 4]
    assert sorted(repro["seed"].unique()) == [1000, 1001, 1002]
    for source, original_seed in ((3, 3), (4, 4)):
        assert original_seed not in repro.loc[repro["source_trial"] == source, "seed"].tolist()
    trial = optuna.load_study(
        study_name="small:reproduce", storage=storage_for(sweeps / "small.journal")
    ).trials[0]
    assert trial.user_attrs["config"]["train"]["learning_rate"] == 4e-3
    assert trial.user_attrs["config"]["train"]["seed"] == trial.user_attrs["seed"]
    # Scored as the sweep scores: the mean of the last three epoch scores; cost is measured wall time.
    seed_term = (trial.user_attrs["seed"] % 7) * 0.01
    quality = 10 - abs(math.log10(4e-3) + 2.4)
    assert trial.values[0] == pytest.approx(quality * 2 / 3 + seed_term)
    assert trial.values[1] > 0
    assert [point[1:] for point in trial.user_attrs["curve"]] == [
        [1000 * e, pytest.approx(quality * e / 3 + seed_term)] for e in (1, 2, 3)
    ]
    assert trial.user_attrs["agent_steps"] == 3000

    # A second call adds new seeds rather than repeating the ones already run.
    assert reproduce_main(["small", "--top", "1", "--seeds", "2"], train_fn=fake_train) == 0
    repro = load_sweep("small").reproductions
    assert sorted(repro.loc[repro["source_trial"] == 3, "seed"]) == [1000, 1001, 1002, 1003, 1004]


def test_reproduce_max_cost_config_file_and_failures(
    sweeps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "baseline.toml"
    config_file.write_text("[train]\nlearning_rate = 0.01\n")
    code = reproduce_main(
        ["small", "--top", "1", "--max-cost", "25", "--seeds", "2", "--config", str(config_file)],
        train_fn=failing_train,
    )
    out = capsys.readouterr().out
    assert code == 1 and "simulated crash" in out and "2 of 4 run(s) failed" in out
    study = optuna.load_study(study_name="small:reproduce", storage=storage_for(sweeps / "small.journal"))
    states = sorted((t.user_attrs["source_trial"], t.state.name) for t in study.trials)
    assert states == [(-1, "COMPLETE"), (-1, "FAIL"), (1, "COMPLETE"), (1, "FAIL")]
    failed = [t for t in study.trials if t.state == TrialState.FAIL][0]
    assert "simulated crash" in failed.user_attrs["error"]
    file_run = [t for t in study.trials if t.user_attrs["source_trial"] == -1][0]
    assert file_run.user_attrs["config"]["train"]["learning_rate"] == 0.01


def test_reproduce_keeps_different_config_files_apart(sweeps: Path, tmp_path: Path) -> None:
    low, high = tmp_path / "low.toml", tmp_path / "high.toml"
    low.write_text("[train]\nlearning_rate = 0.001\n")
    high.write_text("[train]\nlearning_rate = 0.01\n")
    for config_file in (low, high, low):
        args = ["small", "--top", "0", "--seeds", "1", "--config", str(config_file)]
        assert reproduce_main(args, train_fn=fake_train) == 0
    repro = load_sweep("small").reproductions
    rates = {
        int(t.user_attrs["source_trial"]): t.user_attrs["config"]["train"]["learning_rate"]
        for t in optuna.load_study(
            study_name="small:reproduce", storage=storage_for(sweeps / "small.journal")
        ).trials
    }
    # The second file is a new config; running the first file again adds to its own sample.
    assert rates == {-1: 0.001, -2: 0.01}
    assert sorted(repro["source_trial"].tolist()) == [-2, -1, -1]
    assert len(set(repro.loc[repro["source_trial"] == -1, "seed"])) == 2
    assert config_label(-2) == "config file #2"


def test_reproduce_in_worker_processes(sweeps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Named with --train-fn, as a user would, so the spawned workers import it themselves.
    spec = f"{fake_train.__module__}:fake_train"
    assert reproduce_main(["small", "--top", "1", "--seeds", "2", "--workers", "2", "--train-fn", spec]) == 0
    repro = load_sweep("small").reproductions
    assert sorted(repro["seed"]) == [1000, 1001]


def test_reproduce_errors(sweeps: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert reproduce_main(["missing", "--top", "1", "--seeds", "1"], train_fn=fake_train) == 2
    assert "no sweep named 'missing'" in capsys.readouterr().out
    assert (
        reproduce_main(["small", "--top", "1", "--seeds", "1", "--max-cost", "1"], train_fn=fake_train) == 2
    )
    assert "under 1 s" in capsys.readouterr().out
    assert reproduce_main(["small", "--top", "0", "--seeds", "1"], train_fn=fake_train) == 2
    assert "nothing to reproduce" in capsys.readouterr().out
    assert reproduce_main(["small", "--seeds", "0"], train_fn=fake_train) == 2
    assert reproduce_main(["small", "--top", "1", "--train-fn", "shoal.core.config:no_such_function"]) == 2
    assert "has no function 'no_such_function'" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- compare


def write_run(folder: Path, speed: float, final: float, torn: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run_config({}, 1)))
    lines = []
    for epoch in range(1, 6):
        steps = 1000 * epoch
        score = float("nan") if epoch == 1 else final * epoch / 5
        lines.append(
            json.dumps(
                {
                    "epoch": epoch,
                    "agent_steps": steps,
                    "wall_time": steps / speed,
                    "sps": speed,
                    "score": score,
                }
            )
        )
    text = "\n".join(lines) + "\n" + ('{"epoch": 6, "agent_st' if torn else "")
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_compare_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast = write_run(tmp_path / "runs" / "fast", speed=1000, final=10, torn=True)
    slow = write_run(tmp_path / "runs" / "slow", speed=100, final=5)
    run = load_run(fast)
    assert run.skipped_lines == 1 and len(run.metrics) == 5
    assert run.time_to_reach(6.0) == (3.0, 3000.0)
    out_dir = tmp_path / "cmp"
    code = compare_main([str(fast), str(slow), "--out", str(out_dir), "--min-score", "6"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "fast" in out and "slow" in out and "never" in out and "1 unreadable line" in out
    fast_row = [line for line in out.splitlines() if "│ fast" in line][0]
    assert fast_row.split("│")[7].strip() == "1000" and fast_row.split("│")[8].strip() == "3"
    for name in ("compare_wall_time.png", "compare_agent_steps.png"):
        assert (out_dir / name).stat().st_size > 0


def test_compare_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare_main([str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().out
    run = write_run(tmp_path / "r", speed=10, final=1)
    assert compare_main([str(run), "--metric", "no_such_key", "--out", str(tmp_path / "o")]) == 2
    assert "available: agent_steps" in capsys.readouterr().out


def test_int_bool_and_conditional_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    dists = {
        # Power-of-two sizes are stored the way `shoal sweep` stores them: categorical numbers.
        "train.bptt_horizon": CategoricalDistribution((16, 32, 64, 128)),
        "train.update_epochs": IntDistribution(1, 4),
        "policy.lstm": CategoricalDistribution([True, False]),
        "train.muon_momentum": FloatDistribution(0.8, 0.99),
    }
    study = optuna.create_study(
        study_name="mixed",
        storage=storage_for(tmp_path / "sweeps" / "mixed.journal"),
        directions=["maximize", "minimize"],
    )
    rng = np.random.default_rng(3)
    for i in range(12):
        params: dict[str, Any] = {
            "train.bptt_horizon": int(rng.choice([16, 32, 64, 128])),
            "policy.lstm": i % 3 == 0,
            "train.update_epochs": 1 + i % 4,
        }
        if i % 2:
            params["train.muon_momentum"] = float(rng.uniform(0.8, 0.99))
        score = params["train.bptt_horizon"] / 16 + (5 if params["policy.lstm"] else 0)
        study.add_trial(
            create_trial(values=[score, 10.0 + i], params=params, distributions={k: dists[k] for k in params})
        )
    sweep = load_sweep("mixed")
    importance = param_importance(sweep.trials, sweep.distributions)
    assert importance.ok and "train.muon_momentum" in importance.message
    assert set(importance.table.index) == {"train.bptt_horizon", "policy.lstm", "train.update_epochs"}
    defaults = param_defaults(sweep.param_names)
    summary = parameter_summary(sweep.trials, top_n(sweep.trials, 4), sweep.param_names, defaults)
    verdicts = dict(zip(summary["parameter"], summary["verdict"], strict=True))
    assert verdicts["policy.lstm"] == "True in 4/4 top runs (the default)"
    # Default horizon 64; the top runs used 128 twice and 64 twice.
    assert verdicts["train.bptt_horizon"] == "at or above default in 4/4 top runs (2 above)"
    assert analyze_main(["mixed", "--top", "4"]) == 0
    assert (tmp_path / "sweeps" / "mixed-report" / "params.png").stat().st_size > 0


def test_analyze_bare_trials_in_an_rdb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trials with values only (no params, no user attrs) still give fronts, tables and every file.
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    study = optuna.create_study(study_name="bare", storage=url, directions=["maximize", "minimize"])
    for score, cost in ((1.0, 5.0), (2.0, 3.0), (3.0, 9.0)):
        study.add_trial(create_trial(values=[score, cost]))
    assert analyze_main(["bare", "--storage", url, "--min-score", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "needs at least 5 completed trials with a score; this sweep has 3" in out
    assert "#1" in out and "#2" in out
    for name in REPORT_FILES:
        assert (tmp_path / "sweeps" / "bare-report" / name).stat().st_size > 0, name


def _repro_frames(runs: dict[int, list[float]], sweep_scores: dict[int, float]):
    import pandas as pd

    repro = pd.DataFrame(
        [
            {"source_trial": t, "seed": 1000 + i, "score": s}
            for t, scores in runs.items()
            for i, s in enumerate(scores)
        ]
    )
    originals = pd.DataFrame({"trial": list(sweep_scores), "score": list(sweep_scores.values())})
    return repro, originals


def test_reproduction_tests_pick_the_best_by_sweep_score_and_correct_with_holm() -> None:
    from shoal.analysis import stats

    assert stats.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx(
        [0.03, 0.06, 0.06, math.nan], nan_ok=True
    )
    repro, originals = _repro_frames(
        {
            0: [10.0, 11.0, 12.0, 13.0, 14.0],  # the best re-run mean, but not the best in the sweep
            1: [5.0, 6.0, 7.0, 8.0, 9.0],  # the best sweep score
            2: [1.0, 2.0, 3.0, 4.0, 6.5],  # exact Mann-Whitney p = 0.032 against trial 1
            3: [1.5, 2.5, 3.5, 4.5, 6.5],  # the same
        },
        {0: 50.0, 1: 90.0, 2: 80.0, 3: 70.0},
    )
    result = stats.reproduction_tests(repro, originals)
    # Chosen on the sweep's scores, tested on the re-runs: the choice does not bias the tests.
    assert result.best == 1 and "best score in the sweep" in result.selection
    tests = {t.label_b: t for t in result.tests}
    assert sorted(tests) == ["trial #0", "trial #2", "trial #3"]
    assert all(t.label_a == "trial #1" and t.family == 3 for t in result.tests)
    assert all(t.p_value < 0.05 for t in result.tests)  # each alone would pass
    # ... but three tests at once: Holm keeps only the clear one.
    assert {label: t.significant for label, t in tests.items()} == {
        "trial #0": True,
        "trial #2": False,
        "trial #3": False,
    }
    assert tests["trial #2"].p_adjusted == pytest.approx(2 * tests["trial #2"].p_value)
    assert "Holm-adjusted over 3 tests" in tests["trial #2"].text()
    # Without sweep scores the best re-run mean is taken, and the selection says it is biased.
    unscored = stats.reproduction_tests(repro)
    assert unscored.best == 0 and "biases" in unscored.selection
