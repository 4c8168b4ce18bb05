"""Shoal: fast reinforcement learning with C environments, a lean PPO trainer and cost-aware sweeps.

`shoal.make(name, ...)` returns a vector env (docs/architecture.md section 1); it is defined in
`shoal.envs.registry`. This package root is only a facade: everything is imported on first
use, so `import shoal` stays cheap and has no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.envs.registry import list_envs, make

__version__ = "0.1.0"
__all__ = ["list_envs", "make"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from shoal.envs import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
