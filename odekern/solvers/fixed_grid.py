"""Fixed-grid time stepping shared by the explicit RK methods and the Adams methods.

Semantics follow torchdiffeq: the grid is ``t`` itself, or ``t[0] + k * step_size`` with its last
point replaced by ``t[-1]`` (so the final step may be shorter), or whatever ``grid_constructor(func,
y0, t)`` returns. Output times between grid points are filled by linear interpolation of the two
neighbouring grid values (``interp="linear"``, default) or by cubic Hermite interpolation
(``interp="cubic"``, one extra RHS evaluation per step that contains output times).
"""

from __future__ import annotations

import abc
import math
import struct
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from odekern._warnings import warn_caller
from odekern.solvers import stages, state
from odekern.solvers.base import RHS, Perturb, Solver, SolveStatus, beside, store
from odekern.solvers.checks import (AssertedValueError, check_on_max_steps, check_positive,
                                    raise_non_finite_step, raise_non_finite_unrepeated)

Tensor = torch.Tensor

# torchdiffeq's fixed-grid options, plus ``on_max_steps`` so that a status-returning call keeps
# its return type when only the method changes (a fixed grid never runs out of steps).
FIXED_GRID_OPTIONS = frozenset({"step_size", "grid_constructor", "interp", "perturb", "norm", "control",
                                "on_max_steps"})


# A grid longer than this is refused before it is allocated: at one RHS call per step it would
# run for hours, and a step size that small is almost always a mistake (a huge span or a tiny
# step would otherwise overflow the point count or exhaust memory).
MAX_GRID_STEPS = 10_000_000


def check_grid_options(step_size: Any, grid_constructor: Any) -> None:
    """``options['step_size']`` and ``options['grid_constructor']``, of which one at most."""
    check_positive(step_size, "step_size")
    if step_size is not None and grid_constructor is not None:
        raise ValueError("options['step_size'] and options['grid_constructor'] are mutually exclusive; pass one")
    if grid_constructor is not None and not callable(grid_constructor):
        raise TypeError("options['grid_constructor'] must be callable as grid_constructor(func, y0, t)")


def constructed_grid(grid_constructor: Callable, rhs: RHS, y0: state.State, t: Tensor,
                     t_vals: list[float]) -> tuple[Tensor, list[float]]:
    """``options['grid_constructor'](rhs, y0, t)`` checked, as a tensor and as Python floats
    (``t`` increasing: the solver's time)."""
    grid = grid_constructor(rhs, y0, t)
    if not isinstance(grid, Tensor):
        raise TypeError(f"options['grid_constructor'] must return a 1-D tensor of times, got {type(grid).__name__}")
    if grid.dim() != 1 or len(grid) < 2:
        raise AssertedValueError("options['grid_constructor'] must return a 1-D tensor of at least 2 times, "
                                 f"got shape {tuple(grid.shape)}")
    grid = grid.to(t.dtype)
    grid_vals = grid.tolist()
    if len(t_vals) > 1:
        if grid_vals[0] != t_vals[0] or grid_vals[-1] != t_vals[-1]:  # torchdiffeq asserts this
            raise AssertedValueError(f"the time grid must start at t[0]={t_vals[0]} and end at "
                                     f"t[-1]={t_vals[-1]}, got [{grid_vals[0]}, ..., {grid_vals[-1]}]")
        if not all(b >= a for a, b in zip(grid_vals[:-1], grid_vals[1:])):  # NaN fails too
            raise ValueError("the time grid must be monotonic in the direction of t (and free of NaN)")
        if len(set(grid_vals)) < len(grid_vals):
            # A repeated point is a step of length 0, which changes nothing (torchdiffeq takes
            # it so): dropped, so that no step or interpolation divides by its length.
            keep = [0] + [i for i in range(1, len(grid_vals)) if grid_vals[i] != grid_vals[i - 1]]
            grid, grid_vals = grid[keep], [grid_vals[i] for i in keep]
    return grid, grid_vals


def check_interp(interp: Any) -> str:
    """``options['interp']``: how output times between grid points are filled."""
    if interp not in ("linear", "cubic"):
        raise ValueError(f"options['interp'] must be 'linear' or 'cubic', got {interp!r}")
    return interp


def _check_grid_budget(start: float, end: float, step_size: float) -> None:
    n_steps = (end - start) / step_size
    if not math.isfinite(n_steps) or n_steps > MAX_GRID_STEPS:
        raise ValueError(f"options['step_size']={step_size!r} over [{start:.6g}, {end:.6g}] needs {n_steps:.3g} "
                         f"steps, more than the fixed-grid budget of {MAX_GRID_STEPS:,} steps; use a larger "
                         "step_size")


def grid_and_values_from_step_size(t: Tensor, step_size: float,
                                   t_vals: list[float] | None = None) -> tuple[Tensor, list[float]]:
    """``t[0], t[0] + h, ...`` up to and including ``t[-1]`` (the last point is set to ``t[-1]``),
    as a tensor and as Python floats (``t_vals``: ``t`` as floats, when the caller has read it)."""
    start, end = t[0], t[-1]
    start_f, end_f = (t_vals[0], t_vals[-1]) if t_vals is not None else t.detach()[[0, -1]].tolist()
    _check_grid_budget(start_f, end_f, step_size)
    values = None if state.records_derivatives([t]) else _grid_values_in(t.dtype, start_f, end_f, step_size)
    if values is not None:
        grid = torch.tensor(values, dtype=t.dtype, device=t.device)
    else:
        # The point count in t's precision, as torchdiffeq computes it.
        n_points = _point_count(((end - start) / step_size + 1).item(), t.dtype, start_f, end_f)
        grid = torch.arange(0, n_points, dtype=t.dtype, device=t.device) * step_size + start
        grid[-1] = end
        values = grid.tolist()
    # ``start + k * step_size`` can round onto or past ``end`` one point early (0.3 + 6 * 0.1 >
    # 0.9): torchdiffeq then takes a step of about -1e-16; that point is dropped instead. The
    # points grow with k, so such points are the last ones before ``end``.
    kept = len(values) - 1
    while kept > 0 and values[kept - 1] >= values[-1]:
        kept -= 1
    if kept < len(values) - 1:
        grid = torch.cat([grid[:kept], grid[-1:]])
        values = values[:kept] + values[-1:]
    return grid, values


def through_output_times(grid: Tensor, values: list[float], t: Tensor, t_vals: list[float]) -> Tensor:
    """``grid`` whose inner points that equal an inner output time are that time's own tensor
    (the same value): the steps on either side then move with it, as on the default grid (t
    itself), so the output there gets the step's derivative, about f(t_j, y(t_j)). As a point
    ``t[0] + k * step_size`` it did not depend on t_j, and that output's derivative was 0
    (torchdiffeq's grid), while an output just off the grid gets its interpolant's slope. Only
    ``t``-differentiated solves need it (values are unchanged)."""
    position = {v: k for k, v in enumerate(values[1:-1], start=1)}
    pairs = [(position[v], j) for j, v in enumerate(t_vals[1:-1], start=1) if v in position]
    if not pairs:
        return grid
    points, outputs = zip(*pairs)
    grid = grid.clone()
    grid[list(points)] = t[list(outputs)]
    return grid


def _point_count(count: float, dtype: torch.dtype, start: float, end: float) -> int:
    """The grid's point count from its value in t's dtype, where the span may overflow."""
    if not math.isfinite(count):
        raise ValueError(f"t's span [{start:.6g}, {end:.6g}] overflows {dtype} (t's dtype), in which the fixed "
                         "grid is built: pass t in float64 or rescale time")
    return math.ceil(count)


_FLOAT32 = struct.Struct("f")


def _to_float32(x: float) -> float:
    return _FLOAT32.unpack(_FLOAT32.pack(x))[0]


def rounding_to(dtype: torch.dtype) -> Callable[[float], float] | None:
    """Rounds a Python float to ``dtype`` (float64: as it is), or None for another dtype.

    With it, the arithmetic of a float32 (or float64) tensor op is done on Python floats bit
    for bit: one +, -, * or / of two float32 values computed in double and rounded once to
    float32 is the correctly rounded float32 result (double has more than 2 x 24 + 2 bits)."""
    if dtype == torch.float64:
        return float
    if dtype == torch.float32:
        return _to_float32
    return None


def _grid_values_in(dtype: torch.dtype, start: float, end: float, step_size: float) -> list[float] | None:
    """torchdiffeq's grid ``arange(n) * step_size + start`` (last point ``end``) in ``dtype``,
    computed on Python floats without a tensor operation (those cost ~20 us per solve, as much
    as several steps of a small state), or None for a dtype other than float32/float64."""
    rounded = rounding_to(dtype)
    if rounded is None:
        return None
    try:
        h = rounded(step_size)
        n_points = _point_count(rounded(rounded(rounded(end - start) / h) + 1), dtype, start, end)
        values = [rounded(rounded(k * h) + start) for k in range(n_points - 1)]
    except OverflowError:  # a Python whose struct refuses to round to float32's infinity
        return None
    return values + [end]


def step_sizes(grid: Tensor, grid_vals: Sequence[float]) -> list[float]:
    """The grid's steps ``t1 - t0`` in its precision, as torchdiffeq forms them, as Python floats:
    for a float32/float64 grid rounded from ``grid_vals`` without a tensor operation, else
    computed by torch and read once (a read per step would be a device sync per step)."""
    rounded = rounding_to(grid.dtype)
    if rounded is None:
        return (grid[1:] - grid[:-1]).tolist()
    return [rounded(b - a) for a, b in zip(grid_vals[:-1], grid_vals[1:])]


def grid_values_from_step_size(start: float, end: float, step_size: float) -> list[float]:
    """``grid_and_values_from_step_size``'s values from Python floats (times known without
    reading a tensor)."""
    _check_grid_budget(start, end, step_size)
    return _grid_values_in(torch.float64, start, end, step_size)


class FixedGridSolver(Solver):
    """Steps along a grid; subclasses implement one step ``_step(t0, dt, t1, y0) -> (y1, f0)``."""

    OPTIONS = FIXED_GRID_OPTIONS
    CALLBACKS = frozenset({"callback_step"})  # no accepted / rejected steps on a fixed grid
    # One-step methods: a step depends on its own size only, so a step_size grid's points that
    # equal output times move with them when t is differentiated (see through_output_times).
    # Multistep methods keep torchdiffeq's grid and warn when inner times are differentiated.
    ONE_STEP = True

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, *, method: str,
                 step_size: float | None = None, grid_constructor=None, interp: str = "linear",
                 perturb: Any = False, norm: Any = None, on_max_steps: str = "raise", **options: Any):
        # ``norm`` is accepted and ignored: fixed grids have no error control (torchdiffeq does
        # the same), so switching ``method`` does not require editing ``options``.
        super().__init__(rhs, y0, rtol, atol, method=method, **options)
        check_grid_options(step_size, grid_constructor)
        check_on_max_steps(on_max_steps)
        # torchdiffeq's ``perturb``: the first stage sees ``func`` just after ``t0`` and stages at
        # the step's end just before ``t1`` (the step lies between possible discontinuities).
        self.perturb = bool(perturb)
        self.step_size = float(step_size) if isinstance(step_size, Tensor) else step_size
        self.grid_constructor = grid_constructor
        self.interp = check_interp(interp)
        # Preallocated buffers only when autograd cannot need the intermediate values.
        self._reuse_buffers = not torch.is_grad_enabled()
        self._locating = False  # a repeat of a failed solve that checks every step
        self._y_buffers = [state.empty_like(y0), state.empty_like(y0)] if self._reuse_buffers else None
        self._step_output: state.State | None = None  # where the current step writes y1 (see integrate)

    def _grid(self, t: Tensor, t_vals: list[float], t_differentiated: bool) -> tuple[Tensor, list[float]]:
        """The time grid as a tensor and as Python floats (``t_vals``: ``t`` as floats)."""
        if self.step_size is not None:
            # Starts at t[0] and ends at t[-1] exactly, strictly increasing by construction.
            grid, grid_vals = grid_and_values_from_step_size(t, self.step_size, t_vals)
            if self.ONE_STEP and t_differentiated:
                grid = through_output_times(grid, grid_vals, t, t_vals)
            return grid, grid_vals
        if self.grid_constructor is None:
            return t, t_vals
        return constructed_grid(self.grid_constructor, self.rhs, self.y0, t, t_vals)

    def _next_buffer(self, current: Tensor) -> Tensor | None:
        """Where a step writes its solution: the output row it ends on, else the state buffer not
        holding ``current`` (double buffering, no aliasing)."""
        if not self._reuse_buffers:
            return None
        if self._step_output is not None:
            return self._step_output
        a, b = self._y_buffers
        return b if current is a else a

    def _start_perturb(self) -> Perturb:
        """How the step's first evaluation (at ``t0``) is perturbed."""
        return Perturb.NEXT if self.perturb else Perturb.NONE

    def _end_perturb(self) -> Perturb:
        """How evaluations at the step's end (``t1``) are perturbed."""
        return Perturb.PREV if self.perturb else Perturb.NONE

    def _end_time(self, t1: Tensor) -> Tensor | None:
        """Where stages with ``c = 1`` evaluate (None: ``t1`` itself)."""
        like = state.first(self.y0)
        return beside(t1, like.dtype, -1, like.device) if self.perturb else None

    @abc.abstractmethod
    def _step(self, t0: Tensor, dt: Tensor, t1: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
        """One step from ``(t0, y0)``; returns ``(y1, f0)`` with ``f0 = func(t0, y0)``."""

    def _before_integrate(self) -> None:
        """Reset per-solve state (e.g. the Adams history)."""

    def _locate_non_finite(self, t: Tensor, t_values: Sequence[float] | None, solution: state.State,
                           t_vals: list[float]) -> None:
        """Raises NonFiniteError for a solve whose final state is not finite.

        A NaN/inf never leaves the state once in it (every step adds to the current state,
        y1 = y0 + ...), so a finite final state proves every step finite and a solve checks only
        that: per-step checks would cost a pass over the state and a reduction each step (a few
        percent of a conv RHS's solve, more for small states). To name the step that went bad,
        the failed solve is repeated, unrecorded, without callbacks or warnings, checking every
        step and stopping at the first that went bad. ``func`` is called again there; one that
        does not repeat itself (random, or with state) may not fail again, and the error then
        names the two output times between which the solution became non-finite."""
        callbacks, self.rhs.callbacks = self.rhs.callbacks, {}
        self._locating = True
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.integrate(t, t_values)  # raises, naming the step
        finally:
            self._locating = False
            self.rhs.callbacks = callbacks
        rows = [state.row(solution, j) for j in range(len(t_vals))]
        first_bad = next((j for j, r in enumerate(rows) if not state.all_finite(r)), len(rows) - 1)
        raise_non_finite_unrepeated(self.method, self.rhs.user_time(t_vals[max(first_bad - 1, 0)]),
                                    self.rhs.user_time(t_vals[first_bad]))

    def integrate(self, t: Tensor, t_values: Sequence[float] | None = None) -> tuple[Tensor, SolveStatus]:
        solution = self._new_solution(len(t))
        # Is t differentiated, by autograd or by forward-mode / torch.func (a tangent that
        # requires_grad does not show)? Then the steps must stay tensors that carry it.
        t_differentiated = t.requires_grad or state.any_carries_tangent([t])
        if not self.ONE_STEP and len(t) > 2 and state.records_derivatives([t]):
            warn_caller(f"odeint(method={self.method!r}): derivatives with respect to the inner output "
                        "times (and to t[0] through them) are unreliable: the method's constant-step "
                        "weights do not follow a moved time point (off by up to ~10x |f| on smooth "
                        "problems); use odeint_adjoint for derivatives with respect to t")
        # Times known as Python floats (and t not differentiated): the grid is built and walked
        # in Python, so nothing reads a tensor and torch.compile traces the whole solve.
        known = t_values is not None and self.grid_constructor is None and not t_differentiated
        if known:
            t_vals = list(t_values)
            grid_vals = (grid_values_from_step_size(t_vals[0], t_vals[-1], self.step_size)
                         if self.step_size is not None else t_vals)
            grid = grid_vals
        else:
            t_vals = t.tolist()
            grid, grid_vals = self._grid(t, t_vals, t_differentiated)
        self._before_integrate()
        # Step sizes as Python floats (read once, not per step: on a GPU each read is a host
        # sync), unless t is differentiated, where dt must stay a tensor.
        if t_differentiated:
            dts = None
        elif known:
            dts = [b - a for a, b in zip(grid_vals[:-1], grid_vals[1:])]
        else:
            dts = step_sizes(grid, grid_vals)
        # NaN/inf: the final state is read once after the loop (no host sync and no extra pass
        # per step); see _locate_non_finite. Its repeat of a failed solve checks every step.
        track = not (torch.compiler.is_compiling() or state.inside_vmap()
                     or any(c.is_meta for c in state.components(self.y0)))
        rows_in_place = self._reuse_buffers and all(c[0].is_contiguous() for c in state.components(solution))
        # The grid's points as 0-dim tensors made at once (indexing the grid per step costs more).
        points = grid.unbind() if isinstance(grid, Tensor) else grid
        j, y0, n_steps, dt = 1, self.y0, 0, 0.0
        for i in range(len(grid_vals) - 1):
            if j >= len(t_vals):
                break
            t0, t1 = points[i], points[i + 1]
            dt = dts[i] if dts is not None else t1 - t0
            if self.rhs.callbacks:  # torchdiffeq hands the step as a tensor
                self.rhs.callback("callback_step", t0, y0, t1 - t0 if isinstance(t0, Tensor) else dt)
            # A step that ends on an output time writes its solution straight into that output's
            # row, which saves a copy of the state per output (a pass over 8 MB on a U-Net-sized
            # feature map); only where buffers are reused (no graph is recorded) and the rows are
            # contiguous like the buffers (a channels_last row would cost the fused kernels a
            # contiguous copy in and out).
            out_row = state.row(solution, j) if rows_in_place and grid_vals[i + 1] == t_vals[j] else None
            self._step_output = out_row
            y1, f0 = self._step(t0, dt, t1, y0)
            self._step_output = None
            n_steps += 1
            if torch.compiler.is_compiling():
                state.assert_finite_traced(y1, f"odeint(method={self.method!r}): the solution became "
                                           f"non-finite (NaN or inf) after t={self.rhs.user_time(grid_vals[i]):.6g}")
            elif self._locating and not state.all_finite(y1):
                raise_non_finite_step(self.method, self.rhs.user_time(grid_vals[i]),
                                      self.rhs.user_time(grid_vals[i + 1]))
            f1 = None
            while j < len(t_vals) and grid_vals[i + 1] >= t_vals[j]:
                row = out_row if out_row is not None and t_vals[j] == grid_vals[i + 1] else state.row(solution, j)
                if t_vals[j] == grid_vals[i + 1]:
                    value = y1
                elif t_vals[j] == grid_vals[i]:
                    value = y0
                elif self.interp == "linear":
                    value = stages.lerp(y0, y1, ((t_vals[j] if known else t[j]) - t0) / dt, out=row)
                else:
                    f1 = self.rhs(t1, y1) if f1 is None else f1
                    value = stages.hermite(y0, f0, y1, f1, dt, ((t_vals[j] if known else t[j]) - t0) / dt, out=row)
                store(solution, j, row, value)
                j += 1
            y0 = y1
        if track and not self._locating and not state.all_finite(y0):
            self._locate_non_finite(t, t_values, solution, t_vals)
        last_dt = float(dt.detach()) if isinstance(dt, Tensor) else dt
        status = SolveStatus(success=True, message="reached the last output time",
                             t_reached=self.rhs.user_time(t_vals[-1]), n_outputs_reached=len(t_vals),
                             last_dt=last_dt, n_steps=n_steps, nfe=self.rhs.nfe)
        return solution, status
