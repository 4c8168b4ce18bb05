"""Env names: a native game ("breakout") or an emulated one ("gym:ID", "pettingzoo:MODULE[:FN]")."""

from __future__ import annotations

from typing import Literal

GYM_PREFIX = "gym:"
PETTINGZOO_PREFIX = "pettingzoo:"

EnvKind = Literal["native", "gym", "pettingzoo"]


def split_env_name(name: str) -> tuple[EnvKind, str]:
    """(kind, the rest of the name): ("gym", "CartPole-v1") for "gym:CartPole-v1"."""
    if name.startswith(GYM_PREFIX):
        return "gym", name[len(GYM_PREFIX) :]
    if name.startswith(PETTINGZOO_PREFIX):
        return "pettingzoo", name[len(PETTINGZOO_PREFIX) :]
    return "native", name


def is_emulated(name: str) -> bool:
    """Whether `name` is a Gymnasium or PettingZoo env (run through shoal.emulation)."""
    return split_env_name(name)[0] != "native"
