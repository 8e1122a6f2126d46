"""Header values read as numbers: whatever the text, a number, the default or ``None``; never an exception."""

from __future__ import annotations

import math

import pytest

from conversion.values import as_float, as_int, as_number, floats, int_or_none, number_or_none, spacing


@pytest.mark.parametrize(
    ("text", "expected"),
    [("12", 12), (" 7 ", 7), ("3.9", 3), ("-2", -2), ("", 5), (None, 5), ("abc", 5), ("inf", 5), ("nan", 5)],
)
def test_as_int_truncates_or_gives_the_default(text: str | None, expected: int) -> None:
    assert as_int(text, 5) == expected


def test_numbers_that_tell_stacks_apart_are_whole_where_they_can_be() -> None:
    assert as_number("800") == 800 and isinstance(as_number("800.0"), int)
    assert as_number("0.5") == 0.5 and as_number("x") == 0
    assert as_float("1e3", 0.0) == 1000.0 and as_float("", 1.0) == 1.0 and math.isinf(as_float("inf", 0.0))
    assert int_or_none(None) is None and int_or_none("x") == 0
    assert number_or_none(None) is None and number_or_none("2.5") == 2.5


def test_multi_valued_numbers_need_the_count_and_finite_values() -> None:
    values = floats(["1", "0", "0", "0", "1", "0"], 6)
    assert values is not None and list(values) == [1, 0, 0, 0, 1, 0] and not values.flags.writeable
    assert floats(["1", "0"], 3) is None
    assert floats(["1", "nan", "0"], 3) is None and floats(["1", "inf", "0"], 3) is None
    assert floats(["1", "x", "0"], 3) is None
    assert spacing(["0.5", "0.7"]) == (0.5, 0.7)
    assert spacing(["0", "0.7"]) is None and spacing(["-1", "1"]) is None and spacing(["1"]) is None
