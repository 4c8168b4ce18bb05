"""The `shoal` command line, end to end where it is cheap: help, envs, config, errors,
a short training run, eval to a GIF, and the GIF/ANSI rendering under eval."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from shoal import cli
from shoal.core.config import load_config, split_config_flags

ROOT = Path(__file__).resolve().parent.parent

# Small enough to train in a few seconds on one shared core; the run's size flags are
# explicit so the test does not depend on how shoal/configs/cartpole.toml is tuned.
SMALL = [
    "--env.num-envs", "16",
    "--env.num-threads", "1",
    "--train.batch-size", "2048",
    "--train.bptt-horizon", "16",
    "--train.minibatch-size", "1024",
    "--train.torch-threads", "1",
    "--policy.hidden-size", "32",
]  # fmt: skip


def shoal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ---- help ----


def test_help_lists_every_command() -> None:
    result = shoal("--help")
    assert result.returncode == 0, result.stderr
    for command in ["train", "eval", "envs", "config", "sweep", "analyze", "reproduce", "compare"]:
        assert command in result.stdout


def test_help_imports_nothing_heavy() -> None:
    # `shoal --help` must answer at once: no torch, NumPy or C extension behind it.
    code = (
        "import sys; from shoal.cli import main; code = main(['--help']); "
        "heavy = [m for m in ('torch', 'numpy', 'optuna', 'shoal.envs._native') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys)
    assert code == 0 and "COMMAND" in out


def test_command_help_documents_config_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "train", "--help")
    assert code == 0
    assert "--resume" in out and "--train.learning-rate 3e-4" in out


# ---- envs and config ----


def test_envs_lists_names_descriptions_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    import shoal

    code, out, _ = run_main(capsys, "envs")
    assert code == 0
    envs = shoal.list_envs()
    assert envs
    for name, _ in envs:
        assert name in out
    from shoal.envs.native import GAMES

    # Every option of every native game is listed (names may wrap only in the description column).
    for spec in GAMES.values():
        for option in spec.options:
            assert option.name in out
    assert "gym:" in out
    assert "vector | pixels" in out  # a named option shows its names, not the indices C holds


def test_config_prints_the_resolved_toml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "config", "cartpole", "--train.learning-rate", "1e-3")
    assert code == 0
    data = tomllib.loads(out)
    assert data["env"]["name"] == "cartpole"
    assert data["train"]["learning_rate"] == 1e-3
    from shoal.core.config import from_dict

    assert from_dict(data) == load_config("cartpole", ["--train.learning-rate", "1e-3"])


def test_config_writes_a_file_that_loads_back(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "sub" / "run.toml"
    code, out, _ = run_main(capsys, "config", "pong", "--env.options.frameskip", "2", "-o", str(out_file))
    assert code == 0 and str(out_file) in out
    cfg = load_config(config_file=out_file)
    assert cfg.env.name == "pong" and cfg.env.options["frameskip"] == 2
    # With the file alone the env comes from the file.
    code, out, _ = run_main(capsys, "config", "--config", str(out_file))
    assert code == 0 and tomllib.loads(out)["env"]["options"] == {"frameskip": 2}


def test_config_accepts_gym_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "config", "gym:CartPole-v1")
    assert code == 0 and tomllib.loads(out)["env"]["name"] == "gym:CartPole-v1"


# ---- errors ----


def test_bad_flag_is_one_clear_line() -> None:
    result = shoal("train", "cartpole", "--train.learning-rat", "1e-3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shoal train: error:")
    assert "did you mean 'train.learning_rate'" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "cartpol"], "did you mean 'cartpole'"),
        (["train", "breakout", "--env.options.frameskipp", "2"], "has no option 'frameskipp'"),
        (["train", "breakout", "--env.options.frameskip", "0"], "must be in [1, 64]"),
        (
            ["train", "cartpole", "--train.total-steps", "lots"],
            "train.total_steps must be an integer, got 'lots'",
        ),
        (["train", "cartpole", "--train.optimizer", "sgd"], "must be one of 'adam', 'adamw', 'muon'"),
        (["train", "cartpole", "--train.seed"], "'--train.seed' needs a value"),
        (["train"], "name the env to train"),
        (["train", "cartpole", "--config", "/nonexistent.toml"], "config file not found"),
        (["train", "--resume", "/nonexistent-run"], "--resume expects a run folder"),
        (["config", "cartpole", "stray"], "unrecognized arguments: stray"),
        (["envs", "--train.seed", "1"], "takes no config flags"),
        (["eval", "cartpole", "--checkpoint", "/nonexistent.pt"], "--checkpoint: no checkpoint at"),
        (
            ["eval", "cartpole", "--checkpoint", "x.pt", "--episodes", "0"],
            "argument --episodes: expected a positive int, got '0'",
        ),
        (
            ["eval", "cartpole", "--checkpoint", "x.pt", "--fps", "-1"],
            "argument --fps: expected a positive float, got '-1'",
        ),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_trainer_config_checks_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # batch_size must be a multiple of num_envs * bptt_horizon: the trainer says so before it starts.
    flags = [*SMALL, "--train.batch-size", "1000", "--run.dir", str(tmp_path), "--quiet"]
    code, _, err = run_main(capsys, "train", "cartpole", *flags)
    assert code == 2
    assert "train.batch_size (1000) must be a multiple" in err


def test_split_config_flags() -> None:
    argv = [
        "cartpole",
        "--quiet",
        "--train.ent-coef",
        "-0.01",
        "--config",
        "my.toml",
        "--env.num-envs=8",
        "--x.y",
    ]
    regular, dotted = split_config_flags(argv)
    assert regular == ["cartpole", "--quiet", "--config", "my.toml"]
    assert dotted == ["--train.ent-coef", "-0.01", "--env.num-envs=8", "--x.y"]


# ---- commands handed to other modules ----


def test_passthrough_commands_get_their_arguments_verbatim(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("fake_shoal_sweep")

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        if "--help" in argv:
            raise SystemExit(0)
        return 3

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_shoal_sweep", fake)
    monkeypatch.setitem(cli.PASSTHROUGH, "sweep", ("fake_shoal_sweep", "main", "sweep"))
    assert cli.main(["sweep", "cartpole", "--trials", "4", "--train.learning-rate", "1e-3"]) == 3
    assert seen[-1] == ["cartpole", "--trials", "4", "--train.learning-rate", "1e-3"]
    assert cli.main(["sweep", "--help"]) == 0


@pytest.mark.parametrize("command", sorted(cli.PASSTHROUGH))
def test_passthrough_targets_exist(command: str) -> None:
    import importlib

    module_name, function_name, _ = cli.PASSTHROUGH[command]
    assert callable(getattr(importlib.import_module(module_name), function_name))


# ---- a real run ----


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("runs")
    args = ["train", "cartpole", "--train.total-steps", "20000", "--quiet", "--run.dir", str(runs)]
    args += [*SMALL, "--run.name", "cli-test", "--run.log-interval", "0"]
    result = shoal(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    return runs / "cli-test", result.stdout


def test_train_writes_a_run_folder(trained_run: tuple[Path, str]) -> None:
    run_dir, out = trained_run
    for name in ["config.json", "metrics.jsonl", "model.pt", "checkpoint.pt"]:
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["total_steps"] == 20000 and saved["env"]["num_envs"] == 16
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["agent_steps"] >= 20000
    # --quiet gives plain log lines, one per epoch with a zero interval.
    assert out.count("[cartpole] epoch") == len(metrics)
    done = next(line for line in out.splitlines() if line.startswith("done: "))
    assert "agent steps" in done and "score" in done
    assert str(run_dir) in out


def test_eval_writes_a_gif(trained_run: tuple[Path, str], tmp_path: Path) -> None:
    from PIL import Image

    run_dir, _ = trained_run
    gif = tmp_path / "out.gif"
    result = shoal("eval", "cartpole", "--checkpoint", str(run_dir), "--episodes", "1", "--gif", str(gif))
    assert result.returncode == 0, result.stderr
    assert gif.stat().st_size > 0
    with Image.open(gif) as image:
        frames = image.n_frames
        assert image.size[0] > 100 and image.size[1] > 20
    assert frames > 1
    assert f"wrote {frames} frames" in result.stdout
    assert "episode 1: score" in result.stdout and "mean score" in result.stdout


def test_eval_takes_a_model_file_and_env_options(
    trained_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = trained_run
    # Truncating episodes at 5 steps bounds every score by 5.
    code, out, err = run_main(
        capsys, "eval", "cartpole", "--checkpoint", str(run_dir / "model.pt"), "--episodes", "3",
        "--deterministic", "--env.options.max-steps", "5",
    )  # fmt: skip
    assert code == 0, err
    scores = [
        float(line.split("score ")[1].split()[0]) for line in out.splitlines() if line.startswith("episode ")
    ]
    assert len(scores) == 3 and all(s <= 5 for s in scores)


def test_train_accepts_gym_envs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_main(
        capsys, "train", "gym:CartPole-v1", "--quiet", "--run.dir", str(tmp_path), "--run.name", "gym",
        "--train.total-steps", "1024", "--env.num-envs", "8", "--train.batch-size", "512",
        "--train.bptt-horizon", "16", "--train.minibatch-size", "256", "--policy.hidden-size", "16",
        "--train.torch-threads", "1",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "gym" / "config.json").read_text())
    assert saved["env"]["name"] == "gym:CartPole-v1"
    assert (tmp_path / "gym" / "model.pt").is_file()
    assert "[gym:CartPole-v1] epoch" in out


def test_resume_continues_the_run(
    trained_run: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    source, _ = trained_run
    run_dir = tmp_path / "resumed"
    shutil.copytree(source, run_dir)
    before = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    code, out, err = run_main(
        capsys, "train", "--resume", str(run_dir), "--train.total-steps", "24000", "--quiet",
        "--run.log-interval", "0",
    )  # fmt: skip
    assert code == 0, err
    after = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(after) > len(before)
    assert after[len(before)]["epoch"] == before[-1]["epoch"] + 1
    assert after[-1]["agent_steps"] >= 24000
    assert json.loads((run_dir / "config.json").read_text())["train"]["total_steps"] == 24000
    assert str(run_dir) in out


# ---- rendering used by eval ----


def test_ansi_parsing_keeps_text_and_colours() -> None:
    from shoal.render import BASE_COLORS, parse_ansi, strip_ansi

    rows = parse_ansi("\x1b[31mab\x1b[0mc\n\x1b[1;44m \x1b[38;5;196mX\x1b[38;2;1;2;3mY\x1b[0m\x1b[2K")
    assert strip_ansi("\x1b[31mab\x1b[0mc\n\x1b[1;44m \x1b[38;5;196mX") == "abc\n X"
    assert [c for c, _ in rows[0]] == ["a", "b", "c"]
    assert rows[0][0][1].fg == BASE_COLORS[1] and rows[0][2][1].fg is None
    space, x, y = rows[1]
    assert space[1].bg == BASE_COLORS[4] and space[1].bold
    assert x[1].fg == (255, 0, 0) and y[1].fg == (1, 2, 3)
    assert y[1].bg == BASE_COLORS[4]  # background carries over until reset


def test_gif_frames_share_one_canvas_and_palette(tmp_path: Path) -> None:
    from PIL import Image

    from shoal.render import GifWriter

    writer = GifWriter(font_size=12)
    writer.add("\x1b[32m██\x1b[0m small")
    writer.add("a much wider second frame\nwith two lines")
    with pytest.raises(ValueError, match="fps must be positive"):
        writer.write(tmp_path / "bad.gif", fps=0)
    path = writer.write(tmp_path / "frames.gif", fps=10)
    with Image.open(path) as image:
        assert image.n_frames == 2
        image.seek(0)
        first = image.convert("RGB")
    # The green block is drawn in the green of the palette.
    assert (13, 188, 121) in {color for _, color in first.getcolors(1 << 16)}
    with pytest.raises(ValueError, match="no frames"):
        GifWriter().write(tmp_path / "empty.gif")


def test_huge_text_frames_are_drawn_smaller(tmp_path: Path) -> None:
    from PIL import Image

    from shoal.render import MAX_SIDE, GifWriter

    writer = GifWriter()
    writer.add(("#" * 400 + "\n") * 200)
    with Image.open(writer.write(tmp_path / "big.gif")) as image:
        assert max(image.size) <= 1.2 * MAX_SIDE


def test_summary_score_skips_epochs_without_episodes() -> None:
    nan = float("nan")
    result = types.SimpleNamespace(history=[{"score": 10.0}, {"score": 12.0}, {"score": nan}], metrics={})
    assert cli.last_score(result) == ("last score", 12.0)
    result.history[-1]["score_100"] = 11.0
    assert cli.last_score(result) == ("score (last 100 episodes)", 11.0)
    assert cli.last_score(types.SimpleNamespace(history=[], metrics={"score": nan})) is None
