"""Dense output for adaptive RK steps: a polynomial per accepted step, defined by the tableau.

On one accepted step from ``t0`` to ``t0 + dt``, with ``x = (t - t0) / dt`` in [0, 1], the
interpolant is ``p(x) = sum_p coeff[p] x**p`` and every coefficient is a fixed linear combination
of ``y0``, ``y1`` and ``dt * k_j``. Those weights depend only on the tableau, so they are computed
once here (``DenseOutput.for_tableau``) and each coefficient is then one
``stages.linear_combination``. Two kinds of tableau data define them:

- ``b_mid`` (torchdiffeq's methods): the quartic with p(0)=y0, p(1)=y1, p(1/2)=y_mid,
  p'(0)=dt f0, p'(1)=dt f1, the fit torchdiffeq uses, where ``y_mid = y0 + dt sum b_mid k``,
  ``f0 = k_0`` and ``f1`` is the *last stage*: ``f(t1, y1)`` for an FSAL method; for the others
  (adaptive_heun, fehlberg2) torchdiffeq takes the last stage as well, and so does odekern, so
  that both give the same outputs;
- ``b_dense`` (tsit5): the method's own continuous extension ``y0 + dt sum_p x**p b_dense[p-1] k``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fractions import Fraction

import torch

from odekern.solvers import stages
from odekern.solvers.state import first
from odekern.solvers.tableau import ButcherTableau

Tensor = torch.Tensor

def quartic_fit_rows() -> dict[int, tuple[Fraction, ...]]:
    """Solve the 5 interpolation conditions symbolically for powers 2..4 (powers 0, 1 are y0, dt f0).

    Returns, per power, weights on (y0, y1, y_mid, dt*f0, dt*f1).
    """
    # Unknowns c2, c3, c4 after using p(0)=y0 and p'(0)=dt f0:
    #   p(1)    : c2 + c3 + c4           = y1 - y0 - dt f0
    #   p'(1)   : 2c2 + 3c3 + 4c4        = dt f1 - dt f0
    #   p(1/2)  : c2/4 + c3/8 + c4/16    = y_mid - y0 - dt f0 / 2
    rows = [[Fraction(1), Fraction(1), Fraction(1)], [Fraction(2), Fraction(3), Fraction(4)],
            [Fraction(1, 4), Fraction(1, 8), Fraction(1, 16)]]
    rhs = [  # weights on (y0, y1, y_mid, dt f0, dt f1)
        [Fraction(-1), Fraction(1), Fraction(0), Fraction(-1), Fraction(0)],
        [Fraction(0), Fraction(0), Fraction(0), Fraction(-1), Fraction(1)],
        [Fraction(-1), Fraction(0), Fraction(1), Fraction(-1, 2), Fraction(0)],
    ]
    # Gauss-Jordan elimination on exact fractions.
    n = 3
    for col in range(n):
        piv = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[piv] = rows[piv], rows[col]
        rhs[col], rhs[piv] = rhs[piv], rhs[col]
        inv = 1 / rows[col][col]
        rows[col] = [v * inv for v in rows[col]]
        rhs[col] = [v * inv for v in rhs[col]]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                f = rows[r][col]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[col])]
                rhs[r] = [a - f * b for a, b in zip(rhs[r], rhs[col])]
    return {2: tuple(rhs[0]), 3: tuple(rhs[1]), 4: tuple(rhs[2])}


@dataclasses.dataclass(frozen=True)
class DenseOutput:
    """Per power p = 0..degree: weight on y0, weight on y1, and weights on dt * k_j."""

    y0_weights: tuple[float, ...]
    y1_weights: tuple[float, ...]
    k_weights: tuple[tuple[float, ...], ...]

    @property
    def degree(self) -> int:
        return len(self.k_weights) - 1

    @staticmethod
    def for_tableau(tableau: ButcherTableau) -> DenseOutput:
        if tableau.b_dense is not None:
            return DenseOutput.stage_polynomial(tableau)
        if tableau.b_mid is not None:
            return DenseOutput.quartic_through_midpoint(tableau)
        raise ValueError(f"tableau {tableau.name!r} has no dense output (neither b_dense nor b_mid)")

    @staticmethod
    def stage_polynomial(tableau: ButcherTableau) -> DenseOutput:
        s, rows = tableau.num_stages, tableau.b_dense
        zeros = (0.0,) * len(rows)
        return DenseOutput((1.0, *zeros), (0.0, *zeros),
                           ((0.0,) * s, *(tuple(map(float, row)) for row in rows)))

    @staticmethod
    def quartic_through_midpoint(tableau: ButcherTableau) -> DenseOutput:
        s = tableau.num_stages
        e0 = [Fraction(1)] + [Fraction(0)] * (s - 1)
        e_last = [Fraction(0)] * (s - 1) + [Fraction(1)]
        rows = quartic_fit_rows()
        y0_w, y1_w, k_w = [Fraction(1), Fraction(0)], [Fraction(0), Fraction(0)], [[Fraction(0)] * s, e0]
        for p in (2, 3, 4):
            w_y0, w_y1, w_mid, w_f0, w_f1 = rows[p]
            # y_mid contributes to y0 and to the k's via b_mid.
            y0_w.append(w_y0 + w_mid)
            y1_w.append(w_y1)
            k_w.append([w_mid * bm + w_f0 * a + w_f1 * b for bm, a, b in zip(tableau.b_mid, e0, e_last)])
        return DenseOutput(tuple(map(float, y0_w)), tuple(map(float, y1_w)),
                                  tuple(tuple(map(float, r)) for r in k_w))

    def fit(self, y0: Tensor, y1: Tensor, ks: Sequence[Tensor], dt: float,
            out: Sequence[Tensor | None] | None = None) -> list[Tensor]:
        """The polynomial coefficients (lowest power first) for one accepted step."""
        coeffs = [y0]
        for p in range(1, self.degree + 1):
            weights = [w * dt for w in self.k_weights[p]] + [self.y0_weights[p], self.y1_weights[p]]
            coeffs.append(stages.linear_combination(weights, [*ks, y0, y1], out=None if out is None else out[p]))
        return coeffs


def evaluate(coeffs: Sequence[Tensor], t0: Tensor, t1: Tensor, t: Tensor, out: Tensor | None = None) -> Tensor:
    """The interpolant at time ``t`` in ``[t0, t1]``."""
    x = ((t - t0) / (t1 - t0)).to(first(coeffs[0]).dtype)
    return stages.polynomial(coeffs, x, out=out)
