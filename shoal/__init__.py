"""Shoal: fast reinforcement learning with C environments, a lean PPO trainer and cost-aware sweeps.

`shoal.make(name, ...)` returns a vector env (docs/architecture.md section 1). Heavy modules
(NumPy, Gymnasium, the C extension, the adapters) are imported on first use, so `import shoal`
stays cheap and has no side effects.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["list_envs", "make"]

_GYM_PREFIX = "gym:"
_PETTINGZOO_PREFIX = "pettingzoo:"


def make(name: str, num_envs: int = 1, seed: int = 0, num_threads: int = 1, **options: Any) -> Any:
    """Build a vector env.

    Native names ("cartpole", "breakout", ...) give a `NativeVecEnv` stepped in C over
    `num_threads` threads (0 = choose for the machine); `options` are the game's options.
    "gym:<id>" wraps a Gymnasium env and "pettingzoo:<module>" a PettingZoo parallel env; for
    those, `options` are passed on to the adapter.
    """
    if not isinstance(name, str):
        raise TypeError(f"env name must be a str, got {type(name).__name__} {name!r}")
    if name.startswith(_GYM_PREFIX):
        env_id = name[len(_GYM_PREFIX) :]
        if not env_id:
            raise ValueError("expected 'gym:<id>' (e.g. 'gym:CartPole-v1'), got 'gym:'")
        from shoal import emulation

        return emulation.make_gymnasium(env_id, num_envs, seed, **options)
    if name.startswith(_PETTINGZOO_PREFIX):
        spec = name[len(_PETTINGZOO_PREFIX) :]
        if not spec:
            raise ValueError(
                "expected 'pettingzoo:<module>' (e.g. 'pettingzoo:butterfly.pistonball_v6'), got "
                "'pettingzoo:'"
            )
        from shoal import emulation

        return emulation.make_pettingzoo(spec, num_envs, seed, **options)
    from shoal.envs.native import NativeVecEnv

    return NativeVecEnv(name, num_envs=num_envs, seed=seed, num_threads=num_threads, **options)


def list_envs() -> list[tuple[str, str]]:
    """(name, description) of every native env."""
    from shoal.envs.native import GAMES

    return [(spec.name, spec.description) for spec in GAMES.values()]
