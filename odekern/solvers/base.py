"""The small protocol every solver follows, the checked RHS wrapper and the solve status.

A solver is built as ``Solver(rhs, y0, rtol, atol, **options)`` and run with
``solver.integrate(t) -> (solution, SolveStatus)``, where ``t`` is increasing (``odeint`` turns
a decreasing ``t`` into an increasing one by negating time, like torchdiffeq) and ``solution``
has shape ``[len(t), *y0.shape]`` (for a tuple state ``y0``: a tuple of such tensors, one per
component; see ``odekern.solvers.state``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from odekern.solvers import state
from odekern.solvers.checks import check_rhs_output, check_tuple_rhs_output

Tensor = torch.Tensor


class RHS:
    """``func`` as the solvers call it: time cast to the state's dtype, time reversal applied,
    output checked (shape / dtype / device) and evaluations counted in ``nfe``.

    For a tuple state ``func`` takes and returns tuples; the components it returns are passed
    on as they are (a component of its input included), so the solver sees no copy."""

    def __init__(self, func: Callable[[Tensor, Tensor], Tensor], time_sign: float = 1.0):
        self.func = func
        self.time_sign = time_sign
        self.nfe = 0

    def __call__(self, t: Any, y: state.State) -> state.State:
        like = state.first(y)
        t = t.to(like.dtype) if isinstance(t, Tensor) else torch.tensor(t, dtype=like.dtype, device=like.device)
        check = check_tuple_rhs_output if state.is_tuple(y) else check_rhs_output
        if self.time_sign < 0:
            dy = state.as_state(self.func(-t, y))
            check(dy, y, -t)
            dy = state.map_state(torch.neg, dy)
        else:
            dy = state.as_state(self.func(t, y))
            check(dy, y, t)
        self.nfe += 1
        return state.map_state(_as_dtype_of, dy, y)

    def user_time(self, t: Any) -> float:
        """A solver-internal time as the caller sees it (undoing the reversal)."""
        return self.time_sign * float(t.detach() if isinstance(t, Tensor) else t)


def _as_dtype_of(dy: Tensor, y: Tensor) -> Tensor:
    """dy/dt in the state's dtype (a lower-precision RHS output, e.g. under autocast, cast up)."""
    return dy if dy.dtype == y.dtype else dy.to(y.dtype)


@dataclasses.dataclass
class SolveStatus:
    """How a solve ended. Returned next to the solution when ``options["on_max_steps"] = "return"``.

    ``n_outputs_reached`` rows of the solution are genuine solution values; when the solve stopped
    early (``success`` False) the remaining rows repeat the last state reached, at ``t_reached``.
    ``n_steps`` / ``n_rejected`` count accepted / rejected steps; ``nfe`` counts RHS evaluations.
    For ``norm="per_sample"`` the top-level fields summarise and ``per_sample`` holds one status per
    batch element.
    """

    success: bool
    message: str
    t_reached: float
    n_outputs_reached: int
    last_dt: float
    n_steps: int = 0
    n_rejected: int = 0
    nfe: int = 0
    per_sample: tuple[SolveStatus, ...] | None = None


class Solver(abc.ABC):
    """Base class: holds the RHS, initial state and tolerances; subclasses implement ``integrate``."""

    #: option names this solver accepts (``odeint`` rejects anything else, listing these)
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    #: order of accuracy (used by the controller and documented per method)
    order: ClassVar[int]

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, *, method: str, **options: Any):
        self.rhs = rhs
        self.y0 = y0
        self.rtol = rtol
        self.atol = atol
        self.method = method
        self.options = options

    @abc.abstractmethod
    def integrate(self, t: Tensor, t_values: Sequence[float] | None = None) -> tuple[Tensor, SolveStatus]:
        """Solve on increasing output times ``t``; see module docstring. ``t_values``: the same
        times as Python floats when the caller knows them (solvers that can then avoid reading
        ``t``, which torch.compile could not trace, use them)."""

    def _new_solution(self, n: int) -> state.State:
        return state.new_solution(self.y0, n)


store = state.store
