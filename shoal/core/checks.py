"""Argument checks shared by every layer: one function per rule, each naming the argument."""

from __future__ import annotations

import numbers
from typing import Any


def check_int(name: str, value: Any) -> int:
    """`value` as an int; TypeError for bools, floats and anything else that is not an integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"expected {name} to be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int >= 1 (TypeError for a non-integer, ValueError below 1)."""
    value = check_int(name, value)
    if value < 1:
        raise ValueError(f"expected {name} >= 1, got {value}")
    return value


def check_seed(value: Any) -> int | None:
    """A seed: an integer or None."""
    return None if value is None else check_int("seed", value)
