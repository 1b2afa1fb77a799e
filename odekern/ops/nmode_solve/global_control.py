"""dopri5 with global control on the host, written once for the Python backends.

torchdiffeq's initial step and accept / reject loop over a whole tensor (one step size for every
element, error norm = RMS over all of them). A backend supplies the passes over the elements
(``GlobalPasses``); this loop owns every decision and message, so the reference and the Triton
backend take the same steps and fail alike. The C++ backends share its twin,
csrc/ops/nmode_solve/nmode_solve_global_control.h; the arithmetic of both is
odekern/solvers/controllers.py's.
"""

from __future__ import annotations

import math
from typing import Protocol

from odekern.ops.nmode_solve import coefficients, failures
from odekern.solvers import controllers

DOPRI5 = coefficients.of("dopri5")
CONTROLLER = controllers.IntegralController(order=DOPRI5.order)


class GlobalPasses(Protocol):
    """The passes a backend makes over the elements, each returning an RMS norm over them."""

    def initial_norms(self) -> tuple[float, float]:
        """f0 = f(y0) into the current stage; (||y0 / scale||, ||f0 / scale||)."""

    def initial_change(self, h0: float) -> float:
        """||(f(y0 + h0 f0) - f0) / scale||."""

    def attempt(self, dt: float, finishing: bool, theta: float) -> float:
        """One step from the current state into a candidate (into the outputs, evaluated at
        fraction theta of the step, when finishing); the RMS of the scaled error estimate."""

    def accept(self) -> None:
        """The candidate becomes the current state."""


def global_dopri5(passes: GlobalPasses, t0: float, t1: float,
                  max_num_steps: int) -> tuple[list[float], int, float]:
    """The accepted steps, the number of rejected attempts, and the fraction of the last step
    that reaches t1."""
    d0, d1 = passes.initial_norms()
    if not (math.isfinite(d0) and math.isfinite(d1)):  # the trial step below would divide by 0
        raise failures.GLOBAL_NON_FINITE_START.exception(t=t0)
    h0 = controllers.initial_trial_step(d0, d1)
    d2 = passes.initial_change(h0) / h0
    h = controllers.initial_step_from_trial(h0, d1, d2, order=DOPRI5.order - 1)
    t, attempts, n_rejected, dts = t0, 0, 0, []
    while True:
        if attempts >= max_num_steps:
            raise failures.GLOBAL_TOO_MANY_STEPS.exception(max_num_steps=max_num_steps, t=t, dt=h)
        attempts += 1
        if not math.isfinite(h):
            raise failures.GLOBAL_NON_FINITE_STEP.exception(t=t)
        dt, t_next = h, t + h
        if not t_next > t:
            raise failures.GLOBAL_STEP_UNDERFLOW.exception(dt=dt, t=t)
        finishing = t_next >= t1
        theta = (t1 - t) / (t_next - t) if finishing else 1.0
        ratio = passes.attempt(dt, finishing, theta)
        if math.isnan(ratio):
            failure = failures.GLOBAL_NON_FINITE_FINISHING if finishing else failures.GLOBAL_NON_FINITE_STATE
            raise failure.exception(t=t)
        if ratio <= 1.0:
            dts.append(dt)
            if finishing:
                return dts, n_rejected, theta
            passes.accept()
            t = t_next
        else:
            n_rejected += 1
        h = CONTROLLER.next_step(dt, ratio)
