"""Solvers as data: tableau and Adams-coefficient self-checks, and that broken tables raise."""

from __future__ import annotations

from fractions import Fraction as F

import pytest
import torch
from torchdiffeq._impl import dopri5 as tdq_dopri5
from torchdiffeq._impl import fixed_adams as tdq_adams

from odekern.solvers.adams_coefficients import AdamsRule, bashforth, moulton
from odekern.solvers.interpolation import QuarticDenseOutput
from odekern.solvers.tableau import ButcherTableau
from odekern.solvers.tableaus import ALL_TABLEAUS, DOPRI5


@pytest.mark.parametrize("name", sorted(ALL_TABLEAUS))
def test_tableau_satisfies_order_conditions(name):
    tab = ALL_TABLEAUS[name]
    # Exact rational arithmetic: every condition up to the claimed order (<= 4 checked) holds exactly.
    assert tab.order_conditions_residual(min(tab.order, 4)) == 0.0


@pytest.mark.parametrize("name", ["euler", "midpoint"])
def test_low_order_tableau_does_not_satisfy_next_order(name):
    tab = ALL_TABLEAUS[name]
    assert tab.order_conditions_residual(tab.order + 1) > 1e-3


def test_dopri5_matches_torchdiffeq_coefficients():
    ref = tdq_dopri5._DORMAND_PRINCE_SHAMPINE_TABLEAU
    f64 = lambda xs: torch.tensor([float(x) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(f64(DOPRI5.c[1:]), ref.alpha, rtol=0, atol=1e-16)
    for i, row in enumerate(ref.beta):
        torch.testing.assert_close(f64(DOPRI5.a[i + 1]), row, rtol=0, atol=1e-15)
    torch.testing.assert_close(f64(DOPRI5.b), ref.c_sol, rtol=0, atol=1e-16)
    torch.testing.assert_close(f64(DOPRI5.b_err), ref.c_error, rtol=0, atol=1e-15)
    torch.testing.assert_close(f64(DOPRI5.b_mid), tdq_dopri5.DPS_C_MID, rtol=0, atol=1e-16)
    assert DOPRI5.fsal


@pytest.mark.parametrize("field, broken, match", [
    ("a", ((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 2)), r"row sum of a\[3\]"),
    ("b", (F(1, 8), F(3, 8), F(3, 8), F(1, 4)), r"weights b sum to"),
    ("c", (0, F(1, 3), F(1, 2), 1), r"row sum of a\[2\].*c\[2\]"),
])
def test_broken_tableau_raises(field, broken, match):
    good = {"name": "rk4_38", "order": 4, "c": (0, F(1, 3), F(2, 3), 1),
                "a": ((), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)), "b": (F(1, 8), F(3, 8), F(3, 8), F(1, 8))}
    ButcherTableau(**good)  # the unbroken one is accepted
    with pytest.raises(ValueError, match=match):
        ButcherTableau(**{**good, field: broken})


def test_broken_error_and_midpoint_weights_raise():
    kw = {"name": "heun", "order": 2, "c": (0, 1), "a": ((), (1,)), "b": (F(1, 2), F(1, 2))}
    with pytest.raises(ValueError, match=r"error weights b_err sum to .*expected 0"):
        ButcherTableau(**kw, b_err=(F(1, 2), F(1, 3)))
    with pytest.raises(ValueError, match=r"midpoint weights b_mid sum to .*expected 1/2"):
        ButcherTableau(**kw, b_mid=(F(1, 2), F(1, 2)))
    with pytest.raises(ValueError, match=r"row a\[1\] must have exactly 1 entries"):
        ButcherTableau(name="bad", order=1, c=(0, 1), a=((), (F(1, 2), F(1, 2))), b=(F(1, 2), F(1, 2)))
    with pytest.raises(ValueError, match=r"one entry per stage"):
        ButcherTableau(name="bad", order=1, c=(0,), a=((),), b=(F(1, 2), F(1, 2)))


def test_tableau_is_frozen():
    with pytest.raises(Exception, match="cannot assign"):
        DOPRI5.order = 4  # type: ignore[misc]


@pytest.mark.parametrize("k", range(1, 13))
def test_adams_coefficients_match_torchdiffeq(k):
    torch.testing.assert_close(torch.tensor(bashforth(k).floats(), dtype=torch.float64),
                               tdq_adams._BASHFORTH_DIVISOR[k], rtol=1e-13, atol=1e-13)
    if k == 1:
        # torchdiffeq's 1-point Moulton entry shares Bashforth's divisor 11 (giving 1/11); it is
        # never used (its corrector needs >= 4 points). The exact rule is backward Euler: [1].
        assert moulton(1).floats() == (1.0,)
        return
    torch.testing.assert_close(torch.tensor(moulton(k).floats(), dtype=torch.float64),
                               tdq_adams._MOULTON_DIVISOR[k], rtol=1e-13, atol=1e-13)


def test_broken_adams_rule_raises():
    with pytest.raises(ValueError, match=r"moment of degree 0 is .*expected 1/1"):
        AdamsRule(nodes=(0, -1), weights=(F(3, 2), F(-1, 3)))
    with pytest.raises(ValueError, match=r"moment of degree 1"):
        AdamsRule(nodes=(0, -1), weights=(F(1, 2), F(1, 2)))


def test_dense_output_reproduces_endpoints_and_midpoint():
    # With arbitrary stage values, p(0) = y0, p(1) = y1, p(1/2) = y0 + dt sum b_mid k, p'(0) = dt k0.
    dense = QuarticDenseOutput.for_tableau(DOPRI5)
    g = torch.Generator().manual_seed(0)
    ks = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(7)]
    y0, y1 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    dt = 0.3
    c = dense.fit(y0, y1, ks, dt)
    p = lambda x: sum(ci * x ** i for i, ci in enumerate(c))
    y_mid = y0 + dt * sum(float(w) * k for w, k in zip(DOPRI5.b_mid, ks))
    torch.testing.assert_close(p(0.0), y0)
    torch.testing.assert_close(p(1.0), y1)
    torch.testing.assert_close(p(0.5), y_mid)
    torch.testing.assert_close(c[1], dt * ks[0])
    torch.testing.assert_close(c[1] + 2 * c[2] + 3 * c[3] + 4 * c[4], dt * ks[-1])  # p'(1)
