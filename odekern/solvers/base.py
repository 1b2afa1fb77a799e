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
import enum
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from odekern._warnings import warn_caller
from odekern.solvers import state
from odekern.solvers.checks import check_rhs_output, check_tuple_rhs_output

Tensor = torch.Tensor


def _versions(y: state.State) -> int | tuple[int, ...] | None:
    """The version counters of a state's tensors: an in-place write to one (or to a view of it)
    increments its counter. None for inference tensors (made under torch.inference_mode()),
    which have none: there an in-place write cannot be noticed. (Asked, not checked first: this
    runs twice per RHS call, and a check per tensor would cost more than the read.)"""
    try:
        return y._version if isinstance(y, Tensor) else tuple(part._version for part in y)
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None


class Perturb(enum.Enum):
    """Which side of a time point ``func`` is evaluated on (torchdiffeq's ``Perturb``): ``NEXT``
    / ``PREV`` move ``t`` to the adjacent float of the state's dtype after / before it, so a
    ``func`` that is discontinuous at a grid point is sampled on the side the step lies on."""

    NONE = 0
    PREV = 1
    NEXT = 2


#: Step callbacks torchdiffeq looks up on ``func`` (each called as ``callback(t0, y0, dt)``).
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")
#: The same callbacks for the backward solve of the adjoint (looked up on the forward ``func``).
ADJOINT_CALLBACK_NAMES = tuple(name + "_adjoint" for name in CALLBACK_NAMES)


_MISSING = object()


class TimeReversible(abc.ABC):
    """A ``func`` that also gives its time-reversed derivative ``-func(t, y)`` more cheaply than
    by negating its output: a solve on decreasing times (``RHS`` with ``time_sign = -1``) calls
    ``reversed_derivative`` instead, one pass over the state fewer. The adjoint's augmented
    dynamics are one: their adjoint parts change sign with the cotangent of a vector-Jacobian
    product, which costs nothing (``odekern.adjoint``)."""

    @abc.abstractmethod
    def __call__(self, t: Tensor, y: Any) -> Any: ...

    @abc.abstractmethod
    def reversed_derivative(self, t: Tensor, y: Any) -> Any:
        """``-self(t, y)``."""


def step_callbacks(func: Any) -> dict[str, Callable]:
    """The step callbacks ``func`` has (``CALLBACK_NAMES``), each looked up once (on an
    ``nn.Module`` every absent name costs an AttributeError)."""
    found = {name: getattr(func, name, _MISSING) for name in CALLBACK_NAMES}
    return {name: fn for name, fn in found.items() if fn is not _MISSING}


def beside(t: Tensor | float, dtype: torch.dtype, direction: int, device: torch.device | None = None) -> Tensor:
    """The ``dtype`` float next to ``t`` (``direction`` +1: above, -1: below), d/dt kept at 1.
    ``device``: where a ``t`` given as a Python number goes.

    Done in the state's dtype because ``func`` receives time in that dtype: a float64 nudge
    would round back onto the point for a float32 state."""
    real = state.real_dtype(dtype)  # a complex state's time is real
    t_y = t.to(real) if isinstance(t, Tensor) else torch.tensor(t, dtype=real, device=device)
    with torch.no_grad():
        nudge = torch.nextafter(t_y, t_y + direction) - t_y
    return t_y + nudge


class RHS:
    """``func`` as the solvers call it: time cast to the state's dtype, time reversal applied,
    output checked (shape / dtype / device) and evaluations counted in ``nfe``.

    For a tuple state ``func`` takes and returns tuples; the components it returns are passed
    on as they are (a component of its input included), so the solver sees no copy.

    The step callbacks ``func.callback_step`` / ``callback_accept_step`` / ``callback_reject_step``
    (torchdiffeq's protocol) are found here once and called through ``callback``."""

    def __init__(self, func: Callable[[Tensor, Tensor], Tensor], time_sign: float = 1.0,
                 callbacks: dict[str, Callable] | None = None):
        """``callbacks``: ``step_callbacks(func)`` when the caller has already looked them up."""
        self.func = func
        self.time_sign = time_sign
        self.nfe = 0
        # On reversed time: what gives -func(t, y), and whether func's output must be negated.
        reversible = time_sign < 0 and isinstance(func, TimeReversible)
        self._evaluate = func.reversed_derivative if reversible else func
        self._negate = time_sign < 0 and not reversible
        self.callbacks = step_callbacks(func) if callbacks is None else callbacks
        # torch.compile cannot trace version counters; eager code (transforms included) can.
        self._watch_input = not torch.compiler.is_compiling()

    def callback(self, name: str, t0: Tensor, y0: state.State, dt: Any) -> None:
        """Call ``func.<name>(t0, y0, dt)`` if ``func`` has it; ``t0`` in the caller's time
        direction (a backward solve hands the user's time, as torchdiffeq does)."""
        fn = self.callbacks.get(name)
        if fn is not None:
            fn(-t0 if self.time_sign < 0 else t0, y0, dt)

    def __call__(self, t: Any, y: state.State, perturb: Perturb = Perturb.NONE) -> state.State:
        like = y if isinstance(y, Tensor) else state.first(y)
        # The state's dtype, or its real part's for a complex state.
        t_dtype = like.dtype if like.is_floating_point() else state.real_dtype(like.dtype)
        if not isinstance(t, Tensor):
            t = torch.tensor(t, dtype=t_dtype, device=like.device)
        elif t.dtype != t_dtype:
            t = t.to(t_dtype)
        if perturb is not Perturb.NONE:
            t = beside(t, t_dtype, 1 if perturb is Perturb.NEXT else -1)
        version = _versions(y) if self._watch_input else None
        dy = self._evaluate(-t if self.time_sign < 0 else t, y)
        self.nfe += 1
        if version is not None and _versions(y) != version:
            self._modified_input(t)
        if (isinstance(y, Tensor) and isinstance(dy, Tensor) and dy.dtype == y.dtype and dy.shape == y.shape
                and dy.device == y.device):
            # A plain tensor state answered in kind (every call of most solves): nothing to check or cast.
            return torch.neg(dy) if self._negate else dy
        dy = state.as_state(dy)
        if state.is_tuple(y):
            check_tuple_rhs_output(dy, y, -t if self.time_sign < 0 else t)
            dy = tuple(map(_as_dtype_of, dy, y))
            if not self._negate:
                return dy
            if state.plain_eager():
                return tuple(torch._foreach_neg(list(dy)))  # one call for every component
            return tuple(map(torch.neg, dy))
        check_rhs_output(dy, y, -t if self.time_sign < 0 else t)
        dy = _as_dtype_of(dy, y)
        return torch.neg(dy) if self._negate else dy

    def _modified_input(self, t: Tensor) -> None:
        """Once per solve: ``func`` wrote into the state it was given (``y.mul_(...)``,
        ``y[..., 0] = 0``). That tensor is the solver's own state (or stage), so the solve no
        longer follows dy/dt = func(t, y). torchdiffeq computes the same altered result, so it is
        a warning, not an error: switching libraries must not change what runs."""
        self._watch_input = False
        warn_caller(f"func modified its input y in place (at t={self.user_time(t):.6g}); y is the solver's own "
                    "state, so the solution no longer follows dy/dt = func(t, y) (torchdiffeq computes the same "
                    "altered result). Work on a copy (y = y.clone()) or use out-of-place operations.")

    def user_time(self, t: Any) -> float:
        """A solver-internal time as the caller sees it (undoing the reversal)."""
        return self.time_sign * float(t.detach() if isinstance(t, Tensor) else t)


def _as_dtype_of(dy: Tensor, y: Tensor) -> Tensor:
    """dy/dt in the state's dtype (an RHS output of another real dtype, e.g. bfloat16 under
    autocast or float64 from a float64 buffer, cast to it: ``checks.castable_to_state``)."""
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

    #: option names this solver accepts (``odeint`` drops others with torchdiffeq's warning)
    OPTIONS: ClassVar[frozenset[str]] = frozenset()
    #: step callbacks (``CALLBACK_NAMES``) this solver calls; others on ``func`` are warned about
    CALLBACKS: ClassVar[frozenset[str]] = frozenset()
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
