"""`make(name, ...)`: one vector env from a name, native ("breakout") or emulated ("gym:ID").

The C extension, Gymnasium and PettingZoo are imported only when a name needs them, so this
module is cheap to import and works without the compiled extension for emulated names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.core.names import GYM_PREFIX, PETTINGZOO_PREFIX, split_env_name

if TYPE_CHECKING:
    from shoal.core.contract import VecEnv


def make(name: str, num_envs: int = 1, seed: int = 0, num_threads: int = 1, **options: Any) -> VecEnv:
    """Build a vector env.

    Native names ("cartpole", "breakout", ...) give a `NativeVecEnv` stepped in C over
    `num_threads` threads (0 = choose for the machine); `options` are the game's options.
    "gym:<id>" wraps a Gymnasium env and "pettingzoo:<module>" a PettingZoo parallel env; for
    those, `options` are passed on to the adapter.
    """
    if not isinstance(name, str):
        raise TypeError(f"env name must be a str, got {type(name).__name__} {name!r}")
    kind, rest = split_env_name(name)
    if kind == "gym":
        if not rest:
            raise ValueError(f"expected '{GYM_PREFIX}<id>' (e.g. 'gym:CartPole-v1'), got '{GYM_PREFIX}'")
        from shoal.emulation import make_gymnasium

        return make_gymnasium(rest, num_envs, seed, **options)
    if kind == "pettingzoo":
        if not rest:
            raise ValueError(
                f"expected '{PETTINGZOO_PREFIX}<module>' (e.g. 'pettingzoo:butterfly.pistonball_v6'), "
                f"got '{PETTINGZOO_PREFIX}'"
            )
        from shoal.emulation import make_pettingzoo

        return make_pettingzoo(rest, num_envs, seed, **options)
    from shoal.envs.native import NativeVecEnv

    return NativeVecEnv(name, num_envs=num_envs, seed=seed, num_threads=num_threads, **options)


def list_envs() -> list[tuple[str, str]]:
    """(name, description) of every native env."""
    from shoal.envs.native import GAMES

    return [(spec.name, spec.description) for spec in GAMES.values()]


__all__ = ["list_envs", "make"]
