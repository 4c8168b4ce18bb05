"""The training dashboard: figures it shows, robustness to missing values, plain fallback."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from shoal.core.config import Config
from shoal.train.dashboard import (
    PlainLogger,
    RichDashboard,
    fmt_count,
    fmt_duration,
    fmt_float,
    make_dashboard,
    number,
    sparkline,
)

METRICS = {
    "epoch": 12,
    "agent_steps": 250_000,
    "wall_time": 12.5,
    "sps": 45_321.0,
    "score": 123.4,
    "episode_return": 98.7,
    "episode_length": 321.0,
    "episodes": 17,
    "learning_rate": 0.0025,
    "policy_loss": -0.0123,
    "value_loss": 0.5432,
    "entropy": 0.6931,
    "approx_kl": 0.0031,
    "clip_fraction": 0.125,
    "explained_variance": 0.875,
    "time_env": 0.2,
    "time_inference": 0.3,
    "time_copy": 0.05,
    "time_learn": 0.4,
    "time_other": 0.05,
    "horizon": 32.5,
}


def config() -> Config:
    cfg = Config()
    cfg.env.name = "cartpole"
    cfg.env.num_envs = 512
    cfg.env.num_threads = 3
    cfg.train.total_steps = 1_000_000
    cfg.train.precision = "bfloat16"
    cfg.train.device = "cpu"
    return cfg


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)


def rendered(dashboard: RichDashboard) -> str:
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(dashboard.renderable())
    return console.export_text()


def test_dashboard_shows_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    dashboard = RichDashboard(config(), console=terminal())
    try:
        dashboard.update(METRICS)
        text = rendered(dashboard)
    finally:
        dashboard.close()
    for figure in [
        "cartpole",
        "512 envs",
        "cpu",
        "bfloat16",
        "env 3",
        "PASSIVE",
        "45.3k",  # steps/s
        "250k / 1M",
        "25.0%",
        "123.4",  # score
        "98.7",  # return
        "321",  # length
        "-0.0123",
        "0.5432",
        "0.6931",
        "0.0031",
        "0.125",
        "0.875",
        "0.0025",  # learning rate
        "32.5",  # horizon
        "0.400s",  # learn time
        "40.0%",  # learn share
        "0:00:17",  # remaining: 750k steps at 45.3k steps/s
    ]:
        assert figure in text, figure
    for label in ["policy loss", "value loss", "entropy", "approx KL", "clip fraction", "explained var"]:
        assert label in text
    for phase in ["env", "inference", "copy", "learn", "other"]:
        assert phase in text


def test_horizon_row_only_when_reported() -> None:
    dashboard = RichDashboard(config(), console=terminal())
    try:
        metrics = dict(METRICS)
        del metrics["horizon"]
        dashboard.update(metrics)
        assert "horizon" not in rendered(dashboard)
        dashboard.update({**metrics, "horizon": 48.0})
        assert "48.0" in rendered(dashboard)
    finally:
        dashboard.close()


def test_missing_and_nan_values_render_as_dashes() -> None:
    dashboard = RichDashboard(config(), console=terminal())
    try:
        text = rendered(dashboard)  # before any update
        assert "—" in text
        dashboard.update(
            {"score": math.nan, "sps": None, "policy_loss": "n/a", "time_env": math.inf, "epoch": 1}
        )
        text = rendered(dashboard)
    finally:
        dashboard.close()
    assert "nan" not in text.lower()
    assert "inf" not in text.lower().replace("inference", "")
    assert "n/a" not in text


def test_live_dashboard_draws_and_restores_the_terminal() -> None:
    console = terminal()
    dashboard = RichDashboard(config(), console=console)
    dashboard.update(METRICS)
    dashboard.close()
    dashboard.close()  # idempotent
    out = console.file.getvalue()
    assert "45.3k" in out
    assert not dashboard.live.is_started
    assert "\x1b[?25h" in out  # cursor shown again


def test_make_dashboard_picks_the_display() -> None:
    cfg = config()
    live = make_dashboard(cfg, console=terminal())
    try:
        assert isinstance(live, RichDashboard)
    finally:
        live.close()
    piped = make_dashboard(cfg, console=Console(file=io.StringIO()))
    assert isinstance(piped, PlainLogger)
    cfg.run.quiet = True
    assert isinstance(make_dashboard(cfg, console=terminal()), PlainLogger)


def test_plain_logger_prints_at_most_once_per_interval_and_at_close() -> None:
    stream = io.StringIO()
    logger = PlainLogger(config(), stream=stream, interval=3600)
    logger.update(METRICS)
    logger.update({**METRICS, "epoch": 13, "score": 150.0})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "epoch 12" in lines[0] and "score 123.4" in lines[0] and "sps 45.3k" in lines[0]
    assert "250k/1M (25%)" in lines[0] and "horizon 32.5" in lines[0]
    logger.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "epoch 13" in lines[1] and "score 150" in lines[1]
    logger.close()
    assert len(stream.getvalue().splitlines()) == 2


def test_plain_logger_with_zero_interval_prints_every_epoch() -> None:
    stream = io.StringIO()
    logger = PlainLogger(config(), stream=stream, interval=0)
    for epoch in range(3):
        logger.update({"epoch": epoch, "score": math.nan})
    logger.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "[cartpole] epoch 0",
        "[cartpole] epoch 1",
        "[cartpole] epoch 2",
    ]
    assert "score —" in lines[0]


def test_formatting_helpers() -> None:
    assert number({"a": "1.5"}, "a") == 1.5
    assert number({"a": math.nan}, "a") is None
    assert number({"a": True}, "a") is None
    assert number({}, "a") is None
    assert fmt_count(1_234_567) == "1.23M"
    assert fmt_count(999) == "999"
    assert fmt_count(None) == "—"
    assert fmt_duration(3725) == "1:02:05"
    assert fmt_duration(90_061) == "1d 1:01:01"
    assert fmt_duration(-1) == "—"
    assert fmt_float(0.00012) == "1.20e-04"
    assert fmt_float(123.456) == "123.5"
    assert sparkline([0, 1, 2, 3]) == "▁▃▆█"
    assert sparkline([2, 2]) == "▅▅"
    assert sparkline([]) == ""
