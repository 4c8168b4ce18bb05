"""The house rules of docs/architecture.md, checked on the source: layers import only downward,
no import cycles, no import-time side effects, no over-long functions."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "shoal"

# (module prefix, rank): the first prefix a module equals or lies under gives its layer.
LAYERS: tuple[tuple[str, int], ...] = (
    ("shoal.core", 0),
    ("shoal.envs", 1),
    ("shoal.vector", 1),
    ("shoal.emulation", 1),
    ("shoal.atari", 1),
    ("shoal.atari_pool", 1),
    ("shoal.render", 1),
    ("shoal.policy", 2),
    ("shoal.encoders", 2),
    ("shoal.mup", 2),
    ("shoal.train", 3),
    ("shoal.sweep", 4),
    ("shoal.analysis", 4),
    ("shoal.cli", 5),
    ("shoal.__main__", 5),
    ("shoal", 5),
)
LAYER_NAMES = {0: "core", 1: "envs", 2: "model", 3: "train", 4: "tools", 5: "app"}

# Functions allowed past MAX_FUNCTION_LINES, each with the reason a reader would accept.
MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS: dict[str, str] = {}


def rank(module: str) -> int:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} is in no layer of docs/architecture.md; add it to LAYERS there and here")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_modules(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The shoal modules `module` imports anywhere in its source (lazy imports count)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.split(".")[0] == "shoal":
                targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported_modules(module, path, known) for module, path in known.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        rank(module)


def test_layers_import_only_their_own_layer_or_lower() -> None:
    upward = [
        f"{module} ({LAYER_NAMES[rank(module)]}) imports {target} ({LAYER_NAMES[rank(target)]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if rank(target) > rank(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None (depth-first search with colours)."""
    colour: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if colour.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in colour and (cycle := visit(target)):
                return cycle
        colour[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_chain() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_layer_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    source = "def f():\n    from shoal.train import trainer\n    from . import config\n"
    path = tmp_path / "fake.py"
    path.write_text(source)
    known = {
        "shoal.core.fake": path,
        "shoal.train": path,
        "shoal.train.trainer": path,
        "shoal.core.config": path,
    }
    assert imported_modules("shoal.core.fake", path, known) == {"shoal.train.trainer", "shoal.core.config"}


def test_no_function_is_longer_than_a_reader_can_follow() -> None:
    too_long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                key = f"{module}.{node.name}"
                if length > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
                    too_long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} {length} lines"
                    )
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(too_long)


THIRD_PARTY = (
    "numpy",
    "gymnasium",
    "gymnasium.envs.classic_control",
    "pettingzoo",
    "optuna",
    "matplotlib",
    "sklearn",
    "scipy",
    "pandas",
)


def test_importing_shoal_changes_nothing_outside_it() -> None:
    """Every module imports without touching os.environ (e.g. OpenMP variables torch reads).

    One process per top-level part of the package, its own __init__ imported first, so that a
    part that sets a variable only while torch is not yet loaded is seen doing it.
    """
    # Libraries that set variables of their own when imported (scikit-learn: KMP_*, gymnasium's
    # pygame: its prompt) load first, so the check sees what shoal's own code does. Not torch:
    # a variable torch reads when it loads (OMP_WAIT_POLICY) must be set before it loads.
    script = (
        "import contextlib, importlib, json, os, sys\n"
        f"for lib in {THIRD_PARTY!r}:\n"
        "    with contextlib.suppress(ImportError):\n"
        "        importlib.import_module(lib)\n"
        "before = dict(os.environ)\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)"
        " if before.get(k) != after.get(k)}))\n"
    )
    parts: dict[str, list[str]] = {}
    for module in sorted(m for m in modules() if m != "shoal.__main__"):
        parts.setdefault(".".join(module.split(".")[:2]), []).append(module)
    runs = {
        part: subprocess.Popen([sys.executable, "-c", script, *names], stdout=subprocess.PIPE, text=True)
        for part, names in parts.items()
    }
    changed = {}
    for part, run in runs.items():
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, f"importing {part} failed"
        if diff := json.loads(out.strip().splitlines()[-1]):
            changed[part] = diff
    assert changed == {}, f"importing shoal changed the environment: {changed}"
