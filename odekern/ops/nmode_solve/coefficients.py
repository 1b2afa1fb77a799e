"""The nmODE methods' coefficients as floats, derived from the checked tableaus of the solver
core (``odekern/solvers/tableaus.py``): the one source for the reference, Triton and, through the
generated header ``csrc/include/odekern/generated/nmode_constants.h``, the C++ kernels.

Rounding: every coefficient is its exact rational rounded once to double, except dopri5's error
weights, which are ``float(b) - float(b_low)`` with ``b_low`` the embedded 4th-order weights (the
difference of the two rounded weight sets, as torchdiffeq forms it), and the dense-output midpoint
weights, which are exact halves of rounded values (halving is exact).
"""

from __future__ import annotations

import dataclasses

from odekern.ops.nmode_solve.config import MethodId
from odekern.solvers import tableaus
from odekern.solvers.interpolation import quartic_fit_rows
from odekern.solvers.tableau import ButcherTableau


@dataclasses.dataclass(frozen=True)
class MethodCoefficients:
    """One method's Runge-Kutta coefficients: ``a[i][j]`` for j < i, step weights ``b``, and for
    dopri5 the error weights ``err`` (5th minus 4th order) and dense-output midpoint weights ``mid``."""

    method: MethodId
    order: int
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    err: tuple[float, ...] | None = None
    mid: tuple[float, ...] | None = None

    @property
    def stages(self) -> int:
        return len(self.b)


def _of(method: MethodId, tab: ButcherTableau) -> MethodCoefficients:
    b = tuple(float(x) for x in tab.b)
    err = mid = None
    if tab.b_err is not None:
        err = tuple(float(x) - float(x - e) for x, e in zip(tab.b, tab.b_err))
    if tab.b_mid is not None:
        mid = tuple(float(x) for x in tab.b_mid)
    return MethodCoefficients(method, tab.order, tuple(tuple(float(x) for x in row) for row in tab.a), b, err, mid)


COEFFICIENTS: dict[MethodId, MethodCoefficients] = {
    MethodId.EULER: _of(MethodId.EULER, tableaus.EULER),
    MethodId.MIDPOINT: _of(MethodId.MIDPOINT, tableaus.MIDPOINT),
    MethodId.RK4: _of(MethodId.RK4, tableaus.RK4_38),
    MethodId.RK4_CLASSIC: _of(MethodId.RK4_CLASSIC, tableaus.RK4_CLASSIC),
    MethodId.DOPRI5: _of(MethodId.DOPRI5, tableaus.DOPRI5),
}


def of(method: str) -> MethodCoefficients:
    """The coefficients of nmode_solve's method ``method`` (a name such as ``"dopri5"``)."""
    return COEFFICIENTS[MethodId.of(method)]


def _dense_quartic() -> dict[str, tuple[float, ...]]:
    """torchdiffeq's dopri5 dense output on a step, ``y(theta) = y0 + w_y1 (y1 - y0) + w_mid
    (y_mid - y0) + w_f0 dt f0 + w_f1 dt f1``: per weight, its coefficients on theta**1 .. theta**4
    (the quartic fit of the solver core's interpolation, which also gives powers 2..4 a weight on
    y0: minus the others', so it cancels in this form)."""
    rows = quartic_fit_rows()  # power -> weights on (y0, y1, y_mid, dt f0, dt f1)
    names = {"y1": 1, "mid": 2, "f0": 3, "f1": 4}
    first_power = {"y1": 0.0, "mid": 0.0, "f0": 1.0, "f1": 0.0}  # p'(0) = dt f0
    return {n: (first_power[n],) + tuple(float(rows[p][i]) for p in (2, 3, 4)) for n, i in names.items()}


# Coefficients of theta**1 .. theta**4 of each dense-output weight (see _dense_quartic).
DOPRI5_DENSE_QUARTIC = _dense_quartic()
