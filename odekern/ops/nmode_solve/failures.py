"""How an nmODE solve fails: the status codes the per-element kernels write, and the text and
exception type of every failure a backend reports.

This table is the one source of those texts. tools/generate_kernel_constants.py writes the
status codes and a formatting function per failure into the C++/CUDA kernels' generated headers
(the Triton launcher and the Python reference read the table itself), and the op recognises a
C++/CUDA kernel's failure, which can only reach Python as a ``RuntimeError``, by its text
(``failure_of``) to raise it with the type given here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string

from odekern.solvers.checks import NonFiniteError, SolveError


class Status(enum.IntEnum):
    """A per-element solver's outcome; a kernel reports the largest over its elements."""

    OK = 0
    TOO_MANY_STEPS = 1
    STEP_UNDERFLOW = 2
    NON_FINITE = 3


# The values a message can name, with their C++ parameter types. Numbers are formatted the way
# each language prints them (Python's repr, C++'s operator<<), the words are the same.
FIELD_TYPES = {"max_num_steps": "int64_t", "t": "double", "dt": "double", "t0": "double",
               "t1": "double", "step_size": "double", "steps": "double", "status": "int"}


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failure: ``name`` (also its C++ formatting function's), its ``template``
    (``str.format`` fields from ``FIELD_TYPES``) and the exception type it is raised as."""

    name: str
    template: str
    error: type[RuntimeError]

    @property
    def pieces(self) -> tuple[tuple[str, str | None], ...]:
        """The template in order as ``(literal text, field name or None)`` pairs."""
        return tuple((literal, field) for literal, field, _, _ in string.Formatter().parse(self.template))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field for _, field in self.pieces if field)

    def text(self, **values) -> str:
        return self.template.format(**values)

    def exception(self, **values) -> RuntimeError:
        return self.error(self.text(**values))

    def matches(self, text: str) -> bool:
        """Whether ``text`` is this failure's message, whatever the values in it. Only its first
        line is read: PyTorch appends the C++ stack to a kernel's message when asked to
        (TORCH_SHOW_CPP_STACKTRACES=1)."""
        pattern = "".join(re.escape(literal) + (r"\S+" if field else "") for literal, field in self.pieces)
        return re.fullmatch(pattern, text.split("\n", 1)[0]) is not None


PER_ELEMENT_TOO_MANY_STEPS = Failure(
    "per_element_too_many_steps",
    "nmode_solve: max_num_steps ({max_num_steps}) exceeded by the per-element step size controller",
    SolveError)
PER_ELEMENT_STEP_UNDERFLOW = Failure(
    "per_element_step_underflow", "nmode_solve: step size underflow in the per-element controller",
    SolveError)
PER_ELEMENT_NON_FINITE = Failure(
    "per_element_non_finite", "nmode_solve: non-finite values in the state", NonFiniteError)
UNKNOWN_STATUS = Failure(
    "unknown_status", "nmode_solve: the kernels reported the unknown status {status}", RuntimeError)

# The message of each failing status of the per-element solvers (all but Status.OK).
PER_ELEMENT = {Status.TOO_MANY_STEPS: PER_ELEMENT_TOO_MANY_STEPS,
               Status.STEP_UNDERFLOW: PER_ELEMENT_STEP_UNDERFLOW,
               Status.NON_FINITE: PER_ELEMENT_NON_FINITE}

GLOBAL_NON_FINITE_START = Failure(
    "global_non_finite_start",
    "nmode_solve: non-finite values in y0 or f(y0) at t = {t}, so no first step can be sized",
    NonFiniteError)
GLOBAL_TOO_MANY_STEPS = Failure(
    "global_too_many_steps",
    "nmode_solve: max_num_steps ({max_num_steps}) exceeded at t = {t} with last dt = {dt}", SolveError)
GLOBAL_NON_FINITE_STEP = Failure(
    "global_non_finite_step",
    "nmode_solve: non-finite step size at t = {t} (non-finite values in the state?)", NonFiniteError)
GLOBAL_STEP_UNDERFLOW = Failure(
    "global_step_underflow", "nmode_solve: step size underflow (dt = {dt}) at t = {t}", SolveError)
GLOBAL_NON_FINITE_STATE = Failure(
    "global_non_finite_state", "nmode_solve: non-finite values in the state at t = {t}", NonFiniteError)
GLOBAL_NON_FINITE_FINISHING = Failure(
    "global_non_finite_finishing",
    "nmode_solve: non-finite values in the state at t = {t} (in the attempt that reaches t1)",
    NonFiniteError)

NON_FINITE_Y1 = Failure(
    "non_finite_y1",
    "nmode_solve: y(t1) has non-finite values (inf or nan): non-finite inputs, the solve overflowed "
    "(an explicit method unstable at this step_size), or |y + g| left the fused kernels' sine range "
    "during the solve",
    NonFiniteError)
# Checked before anything is allocated: a huge span or a tiny step would otherwise overflow the
# step count or exhaust memory. Not a failed solve (none started), so a plain RuntimeError.
FIXED_GRID_TOO_MANY_STEPS = Failure(
    "fixed_grid_too_many_steps",
    "nmode_solve: step_size={step_size} over [{t0}, {t1}] needs {steps} steps, more than "
    "max_num_steps={max_num_steps}; use a larger step_size or raise max_num_steps",
    RuntimeError)

FAILURES = (PER_ELEMENT_TOO_MANY_STEPS, PER_ELEMENT_STEP_UNDERFLOW, PER_ELEMENT_NON_FINITE,
            UNKNOWN_STATUS, GLOBAL_NON_FINITE_START, GLOBAL_TOO_MANY_STEPS, GLOBAL_NON_FINITE_STEP,
            GLOBAL_STEP_UNDERFLOW, GLOBAL_NON_FINITE_STATE, GLOBAL_NON_FINITE_FINISHING,
            NON_FINITE_Y1, FIXED_GRID_TOO_MANY_STEPS)


def status_failure(status: int, max_num_steps: int) -> RuntimeError | None:
    """The exception for a per-element kernel's status, None for Status.OK."""
    if status == Status.OK:
        return None
    failure = PER_ELEMENT.get(status)
    if failure is None:
        return UNKNOWN_STATUS.exception(status=status)
    return failure.exception(max_num_steps=max_num_steps)


def failure_of(text: str) -> Failure | None:
    """The failure whose message ``text`` is, None for any other text."""
    return next((failure for failure in FAILURES if failure.matches(text)), None)
