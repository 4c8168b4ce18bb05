"""A built wheel behaves like the checkout: the env recipes ship inside the package.

.ci/run does the same with a real venv and the `shoal` script; this test builds the wheel from a
copy of the source (so no stale build/ folder of the checkout leaks into it) and runs the
unpacked wheel alone on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs `shoal config breakout` from whichever shoal is first on the path, after checking which.
PRINT_CONFIG = """
import sys
import shoal
from shoal.cli import main
if not shoal.__file__.startswith(sys.argv[1]):
    sys.exit(f"imported {shoal.__file__}, not the copy under {sys.argv[1]}")
sys.exit(main(["config", "breakout"]))
"""


def _copy_source(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
    shutil.copytree(ROOT / "shoal", dest / "shoal", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


def _print_config(site: Path, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", PRINT_CONFIG, str(site)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_installed_wheel_prints_the_same_breakout_recipe_as_the_checkout(tmp_path: Path) -> None:
    source, wheels, site = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    _copy_source(source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("shoal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    shipped = {f"shoal/configs/{p.name}" for p in (ROOT / "shoal" / "configs").glob("*.toml")}
    assert "shoal/configs/breakout.toml" in shipped and shipped <= names
    installed = _print_config(site, tmp_path)
    assert "num_envs = 1024" in installed  # breakout's recipe, not the plain default of 64
    assert installed == _print_config(ROOT, tmp_path)
