"""Explicit Runge-Kutta methods on a fixed grid, driven entirely by a ``ButcherTableau``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from odekern.solvers import stages, state
from odekern.solvers.base import RHS
from odekern.solvers.fixed_grid import FixedGridSolver
from odekern.solvers.tableau import ButcherTableau, FloatTableau
from odekern.solvers.tableaus import EULER, HEUN2, HEUN3, MIDPOINT, RK4_38, RK4_CLASSIC

Tensor = torch.Tensor


class RKStepper:
    """One explicit RK step ``(t0, dt, y0, f0) -> (y1, ks)`` with reusable stage buffers; ``y1``
    is written into ``out`` (when given and autograd allows), which must not alias ``y0``.

    Shared by the fixed-grid RK solvers and by the Adams solvers' RK4 start-up steps.
    """

    def __init__(self, tableau: ButcherTableau, y0: Tensor, reuse_buffers: bool, carry_last_stage: bool = False):
        """``carry_last_stage``: the caller keeps the last stage's k past the step (an adaptive
        solver's next first stage), so that stage's input gets no reused buffer: an RHS returning
        its input would otherwise hand back a buffer the next step overwrites while reading it.
        (An FSAL last stage's input is the caller's ``out``, which the caller alternates.)"""
        self.tableau = tableau
        self.tab: FloatTableau = tableau.floats()
        self.stages = stages.SolveStages(y0)
        self._offsets: tuple | None = None  # (step size key, stage offsets)
        n = tableau.num_stages
        # Stage i writes its input into its own buffer: an RHS that returns its input tensor
        # (e.g. f(t, y) = y) then still leaves earlier stages' k intact.
        fresh_last = int(tableau.fsal or carry_last_stage)
        self._stage_buffers: Sequence[Tensor | None] = (
            [None] + [state.empty_like(y0) for _ in range(1, n - fresh_last)] + [None] * fresh_last
            if reuse_buffers else [None] * n)

    def step(self, rhs: RHS, t0: Tensor, dt: Any, t1: Tensor, y0: Tensor, f0: Tensor,
             out: Tensor | None, t_end_stages: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """``t_end_stages`` (default ``t1``) is where stages with ``c = 1`` evaluate; adaptive
        solvers pass the float just below ``t1`` when ``t1`` is a discontinuity of ``func``."""
        tab = self.tab
        t_end = t1 if t_end_stages is None else t_end_stages
        n = len(tab.c)
        ks = [f0]
        yi = y0
        offsets = None  # c[i] * dt in the precision of time, made once per step size
        for i in range(1, n):
            # An FSAL method's last stage input *is* the solution: it goes straight into ``out``.
            buffer = out if (tab.fsal and i == n - 1) else self._stage_buffers[i]
            yi = self.stages.stage_state(y0, dt, tab.a[i], ks, out=buffer)
            if tab.c[i] == 1.0:
                ti = t_end
            else:
                offsets = self._stage_offsets(dt, t0) if offsets is None else offsets
                ti = t0 + offsets[i]
            ks.append(rhs(ti, yi))
        if tab.fsal:
            return yi, ks
        return self.stages.step_solution(y0, dt, tab.b, ks, out=out), ks

    def _stage_offsets(self, dt: Any, t0: Any) -> list:
        """``dt * c[i]`` per stage, formed as torchdiffeq forms them; kept while the step size
        repeats (every step of a uniform grid), so a stage time costs one addition."""
        key = (dt, t0.dtype, t0.device) if isinstance(dt, float) and isinstance(t0, Tensor) else None
        if key is not None and self._offsets is not None and self._offsets[0] == key:
            return self._offsets[1]
        dt_time = _time_step(dt, t0)
        offsets = [None] + [None if c == 1.0 else dt_time * c for c in self.tab.c[1:]]
        if key is not None:
            self._offsets = (key, offsets)
        return offsets


def _time_step(dt: Any, t0: Any) -> Any:
    """``dt`` for forming stage times ``t0 + c * dt`` rounded as torchdiffeq rounds them: in
    ``t0``'s precision when time is a tensor of less than float64 (a Python ``dt`` would form
    the product in double, and the stage time could land one float32 ulp away)."""
    if isinstance(dt, float) and isinstance(t0, Tensor) and t0.dtype != torch.float64:
        return t0.new_tensor(dt)
    return dt


class FixedGridRK(FixedGridSolver):
    """A fixed-grid solver for the tableau in the class attribute ``tableau``."""

    tableau: ButcherTableau

    def __init__(self, rhs: RHS, y0: Tensor, rtol: Any, atol: Any, **options: Any):
        super().__init__(rhs, y0, rtol, atol, **options)
        self._stepper = RKStepper(self.tableau, y0, self._reuse_buffers)

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    def _step(self, t0, dt, t1, y0):
        f0 = self.rhs(t0, y0, self._start_perturb())
        y1, _ = self._stepper.step(self.rhs, t0, dt, t1, y0, f0, out=self._next_buffer(y0),
                                   t_end_stages=self._end_time(t1))
        return y1, f0


def fixed_grid_rk(tableau: ButcherTableau) -> type:
    """The solver class for ``tableau`` (a registry entry)."""
    return type(f"FixedGridRK_{tableau.name}", (FixedGridRK,), {"tableau": tableau,
                                                                 "__doc__": f"Fixed-grid {tableau.name}."})


Euler = fixed_grid_rk(EULER)
Midpoint = fixed_grid_rk(MIDPOINT)
Heun2 = fixed_grid_rk(HEUN2)
Heun3 = fixed_grid_rk(HEUN3)
RK4 = fixed_grid_rk(RK4_38)
RK4Classic = fixed_grid_rk(RK4_CLASSIC)
