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

import torch

# Frames in these directories are passed over: odekern's own, and torch's, which lie between
# odekern's frames where odekern runs through torch (an autograd.Function's forward, a solve
# run eagerly inside a compiled caller) or where torch calls odekern (an ODEBlock inside
# nn.Sequential, a backward pass started by loss.backward()).
_PASSED_OVER = tuple(os.path.dirname(os.path.abspath(path)) + os.sep for path in (__file__, torch.__file__))


def warn_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside odekern and torch (the user's
    call), however deep inside odekern it is raised."""
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PASSED_OVER):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
