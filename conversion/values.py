"""Numbers from header values, read leniently: the loader treats a value it cannot read as absent.

Text values (DS, IS) come as :meth:`conversion.rawheader.HeaderView.text` gives them; binary ones as floats
(:meth:`~conversion.rawheader.HeaderView.number`). Unreadable, empty, infinite or NaN numbers give the
default (or ``None``), never an exception: the stack builder then names what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = ["as_float", "as_int", "as_number", "floats", "int_or_none", "number_or_none", "spacing"]


def as_float(value: str | float | None, default: float) -> float:
    """``value`` as a float; ``default`` when it is absent, empty or not a number."""
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def as_number(value: str | float | None) -> float | int:
    """``value`` as an int when it is whole, else as a float (0 when unreadable), for attributes that tell
    stacks apart (``2`` and ``2.0`` are the same b-value)."""
    number = as_float(value, 0.0)
    return int(number) if number.is_integer() else number


def as_int(value: str | float | None, default: int) -> int:
    """``value`` (IS text, or a number) as an int, truncated; ``default`` when absent or unreadable."""
    if value is None or value == "":
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return default


def int_or_none(text: str | None) -> int | None:
    """:func:`as_int` (0 when unreadable), ``None`` when absent."""
    return None if text is None else as_int(text, 0)


def number_or_none(text: str | None) -> float | int | None:
    """:func:`as_number`, ``None`` when absent."""
    return None if text is None else as_number(text)


def floats(values: Sequence[str], n: int) -> npt.NDArray[np.float64] | None:
    """The ``n`` numbers of a multi-valued DS (read-only, shared by the frames that carry the same text);
    ``None`` when there are not ``n`` of them or one is unreadable, infinite or NaN."""
    if len(values) != n:
        return None
    return _parsed_floats(tuple(values))


@lru_cache(maxsize=4096)
def _parsed_floats(values: tuple[str, ...]) -> npt.NDArray[np.float64] | None:
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if not all(map(math.isfinite, numbers)):  # NaN/inf geometry counts as missing
        return None
    arr = np.array(numbers, dtype=np.float64)
    arr.flags.writeable = False
    return arr


def spacing(values: Sequence[str]) -> tuple[float, float] | None:
    """Pixel Spacing (row, column) in mm; ``None`` unless both are readable and positive."""
    arr = floats(values, 2)
    if arr is None:
        return None
    row, column = float(arr[0]), float(arr[1])
    return (row, column) if row > 0 and column > 0 else None
