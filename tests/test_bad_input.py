"""Inputs a user gets wrong: each is one clear line on stderr and exit status 2 (130 for Ctrl-C),
never a traceback and never a half-written file."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shoal import cli
from tests.test_cli import SMALL

ROOT = Path(__file__).resolve().parent.parent


# Nothing listens on port 1 of the loopback interface: the connection is refused at once.
UNREACHABLE = "postgresql://user@127.0.0.1:1/db"


def shoal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    args = ["train", "cartpole", "--train.total-steps", "4096", "--quiet", "--run.dir", str(runs)]
    result = shoal(*args, *SMALL, "--run.name", "good", timeout=300)
    assert result.returncode == 0, result.stderr
    return runs / "good"


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


# ---- checkpoints ----


def test_random_bytes_are_not_a_shoal_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(5000))
    code, err = run_main(capsys, "eval", "cartpole", "--checkpoint", str(path))
    one_line_error(code, err, "random.pt is not a Shoal checkpoint")
    assert "weights_only" not in err  # torch's advice does not apply to a file that is no checkpoint


@pytest.mark.parametrize("size", [0, 3000])
def test_empty_or_truncated_checkpoints(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path, size: int
) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((run_dir / "checkpoint.pt").read_bytes()[:size])
    code, err = run_main(capsys, "eval", "cartpole", "--checkpoint", str(path))
    one_line_error(code, err, "is not a Shoal checkpoint")


def test_new_checkpoints_record_their_format_and_version(run_dir: Path) -> None:
    for name in ("checkpoint.pt", "model.pt"):
        data = torch.load(run_dir / name, weights_only=True)
        assert isinstance(data["format"], int) and data["format"] >= 2
        assert isinstance(data["shoal_version"], str)


def test_a_checkpoint_of_a_newer_shoal_says_so(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    data = torch.load(run_dir / "model.pt", weights_only=True)
    data.update(format=data["format"] + 1, shoal_version="99.0")
    torch.save(data, tmp_path / "model.pt")
    code, err = run_main(capsys, "eval", "cartpole", "--checkpoint", str(tmp_path / "model.pt"))
    one_line_error(code, err, "written by a newer Shoal", "Shoal 99.0")


def test_a_checkpoint_another_version_wrote_names_that_version(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    data = torch.load(run_dir / "model.pt", weights_only=True)
    data["config"]["policy"]["gizmo"] = 3  # a key this Shoal does not know
    data["shoal_version"] = "0.0.1"
    torch.save(data, tmp_path / "model.pt")
    code, err = run_main(capsys, "eval", "cartpole", "--checkpoint", str(tmp_path / "model.pt"))
    one_line_error(code, err, "Shoal 0.0.1", "does not fit this Shoal", "policy.gizmo")


def test_a_checkpoint_of_another_env_cannot_play(capsys: pytest.CaptureFixture[str], run_dir: Path) -> None:
    code, err = run_main(capsys, "eval", "pong", "--checkpoint", str(run_dir), "--no-render")
    one_line_error(code, err, "trained on 'cartpole'", "cannot play 'pong'")


# ---- run folders and --resume ----


def test_resume_with_a_truncated_checkpoint(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    folder = copy_run(run_dir, tmp_path / "run")
    (folder / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes()[:3000])
    code, err = run_main(capsys, "train", "--resume", str(folder), "--quiet")
    one_line_error(code, err, "is not a Shoal checkpoint")


def test_resume_of_a_folder_without_a_checkpoint(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    folder = copy_run(run_dir, tmp_path / "run")
    (folder / "checkpoint.pt").unlink()
    code, err = run_main(capsys, "train", "--resume", str(folder), "--quiet")
    one_line_error(code, err, "has no checkpoint.pt")


def test_resume_skips_a_torn_last_metrics_line_and_refuses_a_torn_middle_one(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    """A run killed while writing metrics.jsonl leaves a torn last line: resuming drops it."""
    folder = copy_run(run_dir, tmp_path / "torn")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][:40])
    code, err = run_main(capsys, "train", "--resume", str(folder), "--quiet", "--train.total-steps", "6144")
    assert code == 0, err
    assert all(json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())

    folder = copy_run(run_dir, tmp_path / "middle")
    (folder / "metrics.jsonl").write_text("\n".join([lines[0][:40], *lines[1:]]) + "\n")
    code, err = run_main(capsys, "train", "--resume", str(folder), "--quiet", "--train.total-steps", "6144")
    one_line_error(code, err, "line 1 of", "is not a JSON record")


def test_resume_of_an_empty_metrics_file(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    folder = copy_run(run_dir, tmp_path / "run")
    (folder / "metrics.jsonl").write_text("")
    code, err = run_main(capsys, "train", "--resume", str(folder), "--quiet", "--train.total-steps", "6144")
    assert code == 0, err


# ---- paths that are folders, or under a file ----


def test_output_paths_that_are_folders(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    code, err = run_main(capsys, "config", "cartpole", "-o", str(tmp_path))
    one_line_error(code, err, "--output:", "is a folder")
    code, err = run_main(capsys, "eval", "cartpole", "--checkpoint", str(run_dir), "--gif", str(tmp_path))
    one_line_error(code, err, "--gif:", "is a folder")
    code, err = run_main(capsys, "train", "cartpole", "--config", str(tmp_path))
    one_line_error(code, err, "is a folder")


def test_paths_under_a_file(capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_main(capsys, "train", "cartpole", *SMALL, "--train.total-steps", "2048", "--quiet",
                         "--run.dir", str(afile))  # fmt: skip
    one_line_error(code, err, "cannot use", "afile")
    code, err = run_main(capsys, "compare", str(run_dir), "--out", str(afile / "plots"))
    one_line_error(code, err, "cannot use", "afile")


# ---- sweep storage ----

needs_postgres_driver = pytest.mark.skipif(
    importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is None,
    reason="no PostgreSQL driver installed",
)


@needs_postgres_driver
@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "cartpole", "--name", "s", "--trials", "1", "--quiet", "--storage", UNREACHABLE],
        ["analyze", "s", "--storage", UNREACHABLE],
        ["reproduce", "s", "--top", "1", "--seeds", "1", "--storage", UNREACHABLE],
    ],
)
def test_an_unreachable_sweep_storage_is_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    started = time.perf_counter()
    code, err = run_main(capsys, *args)
    assert time.perf_counter() - started < 30
    one_line_error(code, err, "cannot reach the storage", "host 127.0.0.1, port 1", "Connection refused")


def test_the_storage_connect_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that drops packets must fail in seconds: the driver gets a connect timeout."""
    import sqlalchemy.exc

    from shoal.sweep import storage

    seen: dict = {}

    def refuse(url: str, engine_kwargs: dict | None = None) -> None:
        seen.update(engine_kwargs or {})
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("timeout expired\nmore detail"))

    monkeypatch.setattr(storage, "RDBStorage", refuse)
    monkeypatch.setattr(storage, "_with_installed_driver", lambda url: url)
    with pytest.raises(storage.StorageError, match=r"host db.example, port 5433\): timeout expired$"):
        storage.open_storage("postgresql://u:secret@db.example:5433/x")
    assert 0 < seen["connect_args"]["connect_timeout"] <= 10


# ---- Ctrl-C ----


def test_ctrl_c_during_training_exits_130_and_leaves_whole_files(tmp_path: Path) -> None:
    args = ["train", "cartpole", *SMALL, "--train.total-steps", "100000000", "--quiet",
            "--run.dir", str(tmp_path), "--run.name", "r", "--train.checkpoint-interval", "1"]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "r" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    folder = tmp_path / "r"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temp file left behind
    for name in ("checkpoint.pt", "model.pt"):
        torch.load(folder / name, weights_only=True)
    json.loads((folder / "config.json").read_text())
