"""Argument checks shared by every layer: one function per rule, each naming the argument."""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
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


def positive_arg(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse `type`: the text as a finite `kind` above 0, else argparse's usage error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse
