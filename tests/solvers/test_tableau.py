"""Solvers as data: tableau and Adams-coefficient self-checks, and that broken tables raise."""

from __future__ import annotations

from fractions import Fraction as F

import pytest
import torch
from torchdiffeq._impl import adaptive_heun as tdq_adaptive_heun
from torchdiffeq._impl import bosh3 as tdq_bosh3
from torchdiffeq._impl import dopri5 as tdq_dopri5
from torchdiffeq._impl import dopri8 as tdq_dopri8
from torchdiffeq._impl import fehlberg2 as tdq_fehlberg2
from torchdiffeq._impl import fixed_adams as tdq_adams
from torchode.single_step_methods.tsit5 import Tsit5 as TorchodeTsit5

from odekern.solvers.adams_coefficients import AdamsRule, bashforth, moulton
from odekern.solvers.interpolation import DenseOutput
from odekern.solvers.tableau import ButcherTableau, polynomial_weights_at
from odekern.solvers.tableaus import ALL_TABLEAUS, DOPRI5, TSIT5
from odekern.testing import DECIMAL_COEFFICIENT_TOL, ORDER_CONDITION_TOL

# Published as decimals / rational approximations: order conditions hold to the digits given.
INEXACT = {"dopri8", "tsit5"}
ADAPTIVE = sorted(name for name, tab in ALL_TABLEAUS.items() if tab.adaptive)
# Order of each adaptive method's dense output: the midpoint torchdiffeq's quartic passes
# through (b_mid), or tsit5's own continuous extension. torchdiffeq's bosh3, fehlberg2 and
# adaptive_heun midpoints are first-order (local error O(dt^2)); odekern keeps them for parity.
DENSE_ORDER = {"dopri5": 4, "dopri8": 5, "bosh3": 1, "fehlberg2": 1, "adaptive_heun": 1, "tsit5": 4}


def _slack(name):
    return ORDER_CONDITION_TOL if name in INEXACT else 0.0


@pytest.mark.parametrize("name", sorted(ALL_TABLEAUS))
def test_tableau_satisfies_order_conditions(name):
    tab = ALL_TABLEAUS[name]
    # Every rooted-tree condition up to the claimed order (exact rational arithmetic).
    assert tab.order_conditions_residual(tab.order) <= _slack(name)


@pytest.mark.parametrize("name", sorted(set(ALL_TABLEAUS) - {"dopri8"}))  # dopri8: 486 trees of order 9
def test_tableau_does_not_satisfy_next_order(name):
    tab = ALL_TABLEAUS[name]
    assert tab.order_conditions_residual(tab.order + 1) > 1e-5


@pytest.mark.parametrize("name", ADAPTIVE)
def test_embedded_solution_has_one_order_less(name):
    tab = ALL_TABLEAUS[name]
    embedded = [b - e for b, e in zip(tab.b, tab.b_err)]
    assert tab.order_conditions_residual(tab.order - 1, embedded) <= _slack(name)
    assert tab.order_conditions_residual(tab.order, embedded) > 1e-5


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_order(name):
    tab, order = ALL_TABLEAUS[name], DENSE_ORDER[name]
    if tab.b_dense is not None:
        points = [(polynomial_weights_at(tab.b_dense, F(th, 10)), F(th, 10)) for th in (1, 3, 5, 8)]
    else:
        points = [(tab.b_mid, F(1, 2))]
    for weights, theta in points:
        assert tab.order_conditions_residual(order, weights, theta) <= _slack(name), f"theta={theta}"
        assert tab.order_conditions_residual(order + 1, weights, theta) > 1e-6, f"theta={theta}"


_TORCHDIFFEQ = {
    "dopri5": (tdq_dopri5._DORMAND_PRINCE_SHAMPINE_TABLEAU, tdq_dopri5.DPS_C_MID, 1),
    "dopri8": (tdq_dopri8._DOPRI8_TABLEAU, tdq_dopri8._C_mid, 1),
    "bosh3": (tdq_bosh3._BOGACKI_SHAMPINE_TABLEAU, tdq_bosh3._BS_C_MID, 1),
    "fehlberg2": (tdq_fehlberg2._FEHLBERG2_TABLEAU, tdq_fehlberg2._FE_C_MID, 1),
    # torchdiffeq stores adaptive_heun's error weights negated (only |error| is used).
    "adaptive_heun": (tdq_adaptive_heun._ADAPTIVE_HEUN_TABLEAU, tdq_adaptive_heun._AH_C_MID, -1),
}


def _f64(xs):
    return torch.tensor([float(x) for x in xs], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(_TORCHDIFFEQ))
def test_adaptive_tableau_matches_torchdiffeq_coefficients(name):
    tab = ALL_TABLEAUS[name]
    ref, mid, err_sign = _TORCHDIFFEQ[name]
    exact = {"rtol": 0, "atol": 1e-15}
    torch.testing.assert_close(_f64(tab.c[1:]), ref.alpha, **exact)
    for i, row in enumerate(ref.beta):
        torch.testing.assert_close(_f64(tab.a[i + 1]), row, **exact)
    torch.testing.assert_close(_f64(tab.b), ref.c_sol, **exact)
    torch.testing.assert_close(_f64(tab.b_err), err_sign * ref.c_error, **exact)
    torch.testing.assert_close(_f64(tab.b_mid), mid, **exact)
    # torchdiffeq skips the final combination exactly when the last stage is the solution.
    assert tab.fsal == bool(ref.c_sol[-1] == 0 and (ref.c_sol[:-1] == ref.beta[-1]).all())


def test_tsit5_matches_torchode_coefficients():
    ref = TorchodeTsit5.TABLEAU
    exact = {"rtol": 0, "atol": 1e-15}
    torch.testing.assert_close(_f64(TSIT5.c), ref.c, **exact)
    a = torch.tensor([[float(x) for x in row] + [0.0] * (7 - len(row)) for row in TSIT5.a], dtype=torch.float64)
    torch.testing.assert_close(a, ref.a, **exact)
    torch.testing.assert_close(_f64(TSIT5.b), ref.b, **exact)
    torch.testing.assert_close(_f64(TSIT5.b_err), ref.b_err, **exact)
    # torchode keeps the interpolant's theta**2..theta**4 stage weights (theta**1 is k_0 alone).
    torch.testing.assert_close(torch.tensor([[float(x) for x in row] for row in TSIT5.b_dense[1:]],
                                            dtype=torch.float64), ref.b_other, **DECIMAL_COEFFICIENT_TOL)
    assert [float(x) for x in TSIT5.b_dense[0]] == [1.0] + [0.0] * 6
    assert TSIT5.fsal


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
                               tdq_adams._BASHFORTH_DIVISOR[k], **DECIMAL_COEFFICIENT_TOL)
    if k == 1:
        # torchdiffeq's 1-point Moulton entry shares Bashforth's divisor 11 (giving 1/11); it is
        # never used (its corrector needs >= 4 points). The exact rule is backward Euler: [1].
        assert moulton(1).floats() == (1.0,)
        return
    torch.testing.assert_close(torch.tensor(moulton(k).floats(), dtype=torch.float64),
                               tdq_adams._MOULTON_DIVISOR[k], **DECIMAL_COEFFICIENT_TOL)


def test_broken_adams_rule_raises():
    with pytest.raises(ValueError, match=r"moment of degree 0 is .*expected 1/1"):
        AdamsRule(nodes=(0, -1), weights=(F(3, 2), F(-1, 3)))
    with pytest.raises(ValueError, match=r"moment of degree 1"):
        AdamsRule(nodes=(0, -1), weights=(F(1, 2), F(1, 2)))


@pytest.mark.parametrize("name", sorted(set(ADAPTIVE) - {"tsit5"}))
def test_dense_output_reproduces_endpoints_and_midpoint(name):
    # With arbitrary stage values, p(0) = y0, p(1) = y1, p(1/2) = y0 + dt sum b_mid k, p'(0) = dt k0,
    # p'(1) = dt * (last stage), FSAL or not (torchdiffeq's fit).
    tab = ALL_TABLEAUS[name]
    dense = DenseOutput.for_tableau(tab)
    g = torch.Generator().manual_seed(0)
    ks = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(tab.num_stages)]
    y0, y1 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    dt = 0.3
    c = dense.fit(y0, y1, ks, dt)
    assert len(c) == 5
    p = lambda x: sum(ci * x ** i for i, ci in enumerate(c))
    y_mid = y0 + dt * sum(float(w) * k for w, k in zip(tab.b_mid, ks))
    torch.testing.assert_close(p(0.0), y0)
    torch.testing.assert_close(p(1.0), y1)
    torch.testing.assert_close(p(0.5), y_mid)
    torch.testing.assert_close(c[1], dt * ks[0])
    torch.testing.assert_close(c[1] + 2 * c[2] + 3 * c[3] + 4 * c[4], dt * ks[-1])  # p'(1)


def test_tsit5_dense_output_is_its_continuous_extension():
    dense = DenseOutput.for_tableau(TSIT5)
    g = torch.Generator().manual_seed(1)
    ks = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(TSIT5.num_stages)]
    y0 = torch.randn(5, generator=g, dtype=torch.float64)
    dt = 0.3
    y1 = y0 + dt * sum(float(w) * k for w, k in zip(TSIT5.b, ks))
    c = dense.fit(y0, y1, ks, dt)
    for theta in (F(0), F(1, 4), F(2, 3), F(1)):
        w = polynomial_weights_at(TSIT5.b_dense, theta)
        expected = y0 + dt * sum(float(wj) * k for wj, k in zip(w, ks))
        torch.testing.assert_close(sum(ci * float(theta) ** i for i, ci in enumerate(c)), expected)


def test_broken_dense_rows_raise():
    kw = {"name": "heun", "order": 2, "c": (0, 1), "a": ((), (1,)), "b": (F(1, 2), F(1, 2))}
    ButcherTableau(**kw, b_dense=((1, 0), (F(-1, 2), F(1, 2))))  # y0 + dt(theta k0 + theta^2 (k1-k0)/2)
    with pytest.raises(ValueError, match=r"dense output at theta=1 gives weight"):
        ButcherTableau(**kw, b_dense=((1, 0), (F(-1, 2), F(1, 3))))
    with pytest.raises(ValueError, match=r"b_dense must be"):
        ButcherTableau(**kw, b_dense=((1, 0, 0),))
