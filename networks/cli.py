"""What the command-line tools (``odekern-train``, ``odekern-evaluate``, ``odekern-predict``,
``python -m networks.figures``) share.

* A mistake gives one line on stderr, ``<tool>: <what is wrong and what to do>``, and exit
  code 2 (argparse's code for a bad command line, used for every user mistake: a missing
  file, a bad value, a damaged checkpoint). A failure that is not the user's gives one line
  and exit code 1. ``--debug`` shows the full traceback instead. A warning (a skipped
  unreadable file) is one line too: ``<tool>: warning: <message>``.
* ``--help`` shows a default only where it says something: not for on/off switches
  (``--no-augment``'s default is not "True") and not for defaults of ``None`` or ones the
  help text already states.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import torch

from networks.arguments import check_finite_number, check_positive_int

USAGE_ERROR = 2
INTERNAL_ERROR = 1
INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)

DEBUG_FLAG = "--debug"


class UsageError(ValueError):
    """A mistake in the command line or its inputs; the message names it and the fix."""


# What a user can cause with a command line and its files: reported as a usage error.
# (ValueError covers UsageError and odekern's own argument checks; OSError covers missing,
# unreadable and unwritable files; the last three are what a damaged pickle raises.)
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, OSError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile,
)


def one_line(text: str, max_items: int = 4) -> str:
    """``text`` on one line: its first line, then up to ``max_items`` more joined by "; "."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    shown = "; ".join(rest[:max_items])
    more = f"; and {len(rest) - max_items} more" if len(rest) > max_items else ""
    return f"{head.rstrip(':')}: {shown}{more}"


def describe(exc: BaseException) -> str:
    """The one-line message for ``exc``: its own text; the type name where the text alone
    would not say what happened (an OSError's text is the file and the reason already)."""
    text = one_line(str(exc))
    if isinstance(exc, (UsageError, ValueError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def did_you_mean(value: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is close to one of ``choices``, else ``""``."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``minimum`` (argparse names the flag in its error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        return _in_range(check_positive_int, value, minimum)
    return parse


def real(minimum: float = -math.inf, *, above: bool = False, below: float = math.inf) -> Callable[[str], float]:
    """An argparse ``type``: a finite float >= ``minimum`` (> with ``above``) and < ``below``.
    NaN and inf are refused: a NaN learning rate, rotation or decay factor trained on silently."""
    bounds: dict[str, float] = {}
    if minimum > -math.inf:
        bounds["above" if above else "minimum"] = minimum
    if below < math.inf:
        bounds["below"] = below

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        return _in_range(check_finite_number, value, **bounds)
    return parse


def _in_range(check: Callable[..., Any], value, *args, **kwargs):
    """``check``'s value, its ValueError as argparse's error (argparse puts the flag's name first)."""
    try:
        return check(value, "", *args, **kwargs)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def device(text: str) -> str:
    """An argparse ``type`` for ``--device``: auto, cpu, cuda or cuda:N, and a CUDA device
    only where one exists (torch's own error there is an AssertionError about its build)."""
    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r} asks for a CUDA device, but this machine has none "
                                             "(or torch was built without CUDA); use cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    return text


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` only where X is informative; the description and the epilog
    (examples) keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or action.nargs == 0
                or isinstance(default, bool) or default is None or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple)) and not default)):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), :class:`HelpFormatter` and ``--debug``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(DEBUG_FLAG, action="store_true",
                          help="on an error, show the full Python traceback instead of one line")

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


def _format_warning(prog: str, message, category, filename, lineno, line=None) -> str:
    return f"{prog}: warning: {one_line(str(message))}\n"


def tool(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for a tool's ``main(argv=None) -> int``: errors become one line on stderr
    and an exit code (:data:`USAGE_ERROR` for the user's mistakes, :data:`INTERNAL_ERROR`
    otherwise) unless ``--debug`` is among the arguments, which re-raises them."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            args = sys.argv[1:] if argv is None else list(argv)
            debug = DEBUG_FLAG in args
            formatter = warnings.formatwarning
            if not debug:  # a warning is one line too: "<tool>: warning: <message>"
                warnings.formatwarning = functools.partial(_format_warning, prog)
            try:
                return main(argv)
            except SystemExit as exc:
                if isinstance(exc.code, str):  # SystemExit("message"): a usage error
                    print(one_line(exc.code), file=sys.stderr)
                    return USAGE_ERROR
                raise
            except KeyboardInterrupt:
                if debug:
                    raise
                print(f"{prog}: interrupted", file=sys.stderr)
                return INTERRUPTED
            except Exception as exc:  # noqa: BLE001 - every failure gets its one line
                if debug:
                    raise
                if isinstance(exc, USER_ERRORS):
                    print(f"{prog}: {describe(exc)}", file=sys.stderr)
                    return USAGE_ERROR
                print(f"{prog}: unexpected {describe(exc)} (run again with {DEBUG_FLAG} for the "
                      "traceback)", file=sys.stderr)
                return INTERNAL_ERROR
            finally:
                warnings.formatwarning = formatter

        return wrapper

    return decorate
