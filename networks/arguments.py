"""Checks of the numeric arguments every network and dataset takes (widths, counts, sizes, rates).

One reading for all of them: a Python or NumPy integer is a whole number; a bool, a float or a
string is not, even one that ``int()`` would accept, because ``int("64")`` per character of a
size gives 6x4 and ``int(32.5)`` drops a fraction without a word. A real number is an int or a
float (NumPy's included), finite: a NaN compares false with every bound and would pass a range
check written as two comparisons. Each check returns plain Python numbers, so what a model or
dataset stores (and a run records as JSON) is never a NumPy scalar.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence


def whole_number(value) -> int | None:
    """``value`` as an int when it is an integer (a NumPy integer included), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError naming ``name`` unless it is an integer >= ``minimum``."""
    number = whole_number(value)
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def as_sequence(values) -> tuple | None:
    """``values`` as a tuple (from a tuple, a list, a NumPy array...), None for a string (whose
    characters are no list of numbers) or anything that is not iterable."""
    if isinstance(values, (str, bytes)):
        return None
    try:
        return tuple(values)
    except TypeError:
        return None


def check_channel_list(values: Sequence[int], name: str, length: int | None = None) -> tuple[int, ...]:
    """``values`` as a tuple of positive ints (of ``length`` entries when given)."""
    out = as_sequence(values)
    if out is None:
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(out)}: {values!r}")
    return tuple(check_positive_int(v, name) for v in out)


def image_size_pair(size, name: str = "image_size") -> tuple[int, int]:
    """``size`` as ``(height, width)``: a positive integer (square) or a pair of them."""
    pair = (size, size) if whole_number(size) is not None else as_sequence(size) or ()
    sides = tuple(whole_number(s) for s in pair)
    if len(sides) != 2 or None in sides or min(sides) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width) of positive ints, got {size!r}")
    return sides  # type: ignore[return-value]


def check_finite_number(value, name: str, *, minimum: float | None = None, above: float | None = None,
                        maximum: float | None = None, below: float | None = None) -> float:
    """``value`` as a float: a finite real number (not a bool or a string) within the bounds given
    (``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive), or a ValueError naming ``name``."""
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else "", f"< {below:g}" if below is not None else ""]
    expected = " and ".join(b for b in bounds if b)
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    number = float(value) if real else math.nan
    if not (math.isfinite(number)
            and (minimum is None or number >= minimum) and (above is None or number > above)
            and (maximum is None or number <= maximum) and (below is None or number < below)):
        raise ValueError(f"{name} must be a finite number{' ' + expected if expected else ''}, got {value!r}")
    return number
