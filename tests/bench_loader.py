"""The scripts under benchmarks/ (not a package) loaded as modules for their tests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@contextlib.contextmanager
def benchmark_module(file_name: str) -> Iterator[ModuleType]:
    """benchmarks/<file_name> as module '<stem>_bench', able to import its sibling scripts, and
    forgotten again on exit."""
    name = f"{Path(file_name).stem}_bench"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / file_name)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up while they are built.
    sys.modules[name] = module
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop(name, None)
