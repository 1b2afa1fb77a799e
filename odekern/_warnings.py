"""Warnings that name the user's line.

A warning about how odekern was called is only useful where the call is: Python's default
filters show a DeprecationWarning only when it is attributed to ``__main__``, and a user looking
for what to change needs the file and line of their own code, not of the solver frame several
calls deep that noticed the problem. The lowest layer, so that every module can use it.
"""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside odekern (the user's call),
    however deep inside odekern it is raised."""
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
