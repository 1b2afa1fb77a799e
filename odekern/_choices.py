"""Arguments chosen by name (method, control, gradient, backend).

One test for all of them: the value must be a string first, because a lookup alone fails on
other values with Python's own error (a list is unhashable, a NumPy array compared with a
string has no truth value) instead of the caller's message naming the argument. The lowest
layer, so that every module can use it.
"""

from __future__ import annotations

from collections.abc import Container


def is_choice(value: object, choices: Container[str]) -> bool:
    """Whether ``value`` is one of the names in ``choices``."""
    return isinstance(value, str) and value in choices
