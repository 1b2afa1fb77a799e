"""The fused-kernel seam (odekern.solvers.stages): in-place ``out=`` path == functional path,
autograd never sees in-place writes, and solvers stay correct when the RHS aliases its input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from solver_problems import ALL_METHODS, NEW_ADAPTIVE
from torchdiffeq._impl.misc import _compute_error_ratio, _linf_norm

from odekern import odeint
from odekern.solvers import stages
from odekern.solvers.norms import max_norm
from odekern.testing import assert_close, randn

F64 = torch.float64


def _ks(n=3, shape=(4, 5), dtype=F64):
    return [randn(*shape, dtype=dtype, seed=10 + j) for j in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_linear_combination_out_path_matches_plain_formula(dtype):
    ks, base = _ks(dtype=dtype), randn(4, 5, dtype=dtype, seed=1)
    coeffs, dt = (0.5, 0.0, -1.25), 0.3
    expected = base.double() + dt * sum(c * k.double() for c, k in zip(coeffs, ks))
    out = torch.empty_like(base)
    with torch.no_grad():
        got = stages.linear_combination(coeffs, ks, scale=dt, base=base, out=out)
    assert got is out  # written in place
    assert_close(got, expected.to(dtype))
    assert_close(stages.linear_combination(coeffs, ks, scale=dt, base=base), expected.to(dtype))
    assert_close(stages.error_estimate(dt, coeffs, ks), (expected - base.double()).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("with_base", [True, False], ids=["base", "no_base"])
@pytest.mark.parametrize("n_terms", [1, 3])
def test_plain_pytorch_out_path_equals_the_recorded_path_bit_for_bit(dtype, with_base, n_terms):
    """The PyTorch code writes into ``out`` with the recorded path's operations in its order, so a
    solve gives the same values with and without a graph (and a single-term combination, which
    skips the kernels, is one op)."""
    ks, base = _ks(n_terms, dtype=dtype), randn(4, 5, dtype=dtype, seed=3) if with_base else None
    coeffs, dt = (0.3, -1.1, 0.7)[:n_terms], 0.1
    out = torch.empty(4, 5, dtype=dtype)
    unrecorded = stages._torch_linear_combination(coeffs, ks, dt, base, out)
    recorded = stages._torch_linear_combination(coeffs, ks, dt, base, None)
    assert unrecorded is out and torch.equal(unrecorded, recorded)
    plain = (base.double() if with_base else 0) + sum(dt * c * k.double() for c, k in zip(coeffs, ks))
    assert_close(unrecorded, plain.to(dtype))


def test_zero_coefficients_are_skipped():
    ks = _ks()
    ks[1] = torch.full_like(ks[1], float("inf"))
    y = stages.stage_state(ks[0], 0.1, (1.0, 0.0), ks[:2])
    assert torch.isfinite(y).all()


def test_out_is_ignored_when_autograd_records():
    ks = [k.requires_grad_() for k in _ks()]
    out = torch.zeros(4, 5, dtype=F64)
    y = stages.step_solution(ks[0], 0.2, (0.25, 0.5, 0.25), ks, out=out)
    assert y is not out and torch.count_nonzero(out) == 0 and y.requires_grad
    (g,) = torch.autograd.grad(y.sum(), ks[1])
    assert_close(g, torch.full_like(g, 0.2 * 0.5))


def test_time_tensor_dt_is_differentiable():
    ks, base = _ks(1), randn(4, 5, dtype=F64, seed=2)
    dt = torch.tensor(0.3, dtype=F64, requires_grad=True)
    y = stages.stage_state(base, dt, (2.0,), ks)
    (g,) = torch.autograd.grad(y.sum(), dt)
    assert_close(g, 2.0 * ks[0].sum())


def test_error_ratio_is_rms_of_scaled_error():
    err, y0, y1 = _ks()
    rtol, atol = 1e-3, 1e-6
    expected = (err / (atol + rtol * torch.maximum(y0.abs(), y1.abs()))).pow(2).mean().sqrt()
    assert_close(stages.error_ratio(err, y0, y1, rtol, atol, lambda x: x.pow(2).mean().sqrt()), expected)


def test_interpolants_match_plain_formulas():
    y0, f0, y1, f1 = _ks(4)
    out = torch.empty_like(y0)
    theta, dt = 0.3, 0.7
    with torch.no_grad():
        assert_close(stages.lerp(y0, y1, theta, out=out), y0 + theta * (y1 - y0))
        h = theta
        hermite = ((1 + 2 * h) * (1 - h) ** 2 * y0 + h * (1 - h) ** 2 * dt * f0 + h * h * (3 - 2 * h) * y1
                   + h * h * (h - 1) * dt * f1)
        assert_close(stages.hermite(y0, f0, y1, f1, dt, theta, out=out), hermite)
        assert_close(stages.polynomial([y0, f0, y1], 0.5, out=out), y0 + 0.5 * f0 + 0.25 * y1)
    assert_close(stages.polynomial([y0, f0, y1], 0.5), y0 + 0.5 * f0 + 0.25 * y1)


@pytest.mark.filterwarnings("ignore:.*did not converge")
@pytest.mark.parametrize("method", [*ALL_METHODS, *NEW_ADAPTIVE])
def test_rhs_returning_its_input_is_safe_with_reused_buffers(method):
    # f(t, y) = y returns the very buffer the solver wrote the stage into: the solver must not
    # overwrite a k it still needs. Exact solution: y0 * exp(t).
    y0 = torch.tensor([1.0, -2.0], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    opts = None if method in ("dopri5", *NEW_ADAPTIVE) else {"step_size": 1 / 64, "max_order": 5} if "adams" in method else {
        "step_size": 1 / 64}
    with torch.no_grad():
        y = odeint(lambda t, y: y, y0, t, method=method, options=opts)
        y_fresh = odeint(lambda t, y: y.clone(), y0, t, method=method, options=opts)
    assert torch.equal(y, y_fresh)
    tol = 2e-2 if method == "euler" else 1e-4
    assert_close(y, y0 * torch.exp(t)[:, None], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tuple_max_norm_error_ratio_matches_the_per_component_formula(dtype):
    """The Adams corrector's max-norm ratio of a tuple state (foreach operations) equals the
    per-component formula, empty components skipped."""
    shapes = [(), (5, 3), (0,), (7,)]
    err, y0, y1 = ([randn(max(1, math.prod(s)), dtype=dtype, seed=10 * j + i)[:math.prod(s)].reshape(s)
                    for i, s in enumerate(shapes)] for j in range(3))
    err, y0, y1 = tuple(err), tuple(y0), tuple(y1)
    got = stages.error_ratio(err, y0, y1, 1e-3, 1e-6, max_norm)
    expected = max((e.abs() / (1e-6 + 1e-3 * torch.maximum(a.abs(), b.abs()))).max()
                   for e, a, b in zip(err, y0, y1) if e.numel())
    assert_close(got, expected)


_FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([0.0, -0.0, 1e-30, 3e38, -3e38]))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(pairs=st.lists(st.tuples(_FLOATS, _FLOATS), min_size=1, max_size=40),
       dtype=st.sampled_from([torch.float32, torch.float64]), rtol=st.sampled_from([1e-7, 1e-3, 0.0]),
       atol=st.sampled_from([1e-9, 1e-6, 0.0]))
def test_corrector_difference_ratio_is_torchdiffeqs_bit_for_bit(pairs, dtype, rtol, atol):
    # The in-place convergence test of Adams' corrector against torchdiffeq's own formula
    # (fixed_adams._has_converged: max-norm ratio of |a - b|), NaN/inf, zeros and overflow included.
    a = torch.tensor([p[0] for p in pairs], dtype=dtype)
    b = torch.tensor([p[1] for p in pairs], dtype=dtype)
    expected = _compute_error_ratio(torch.abs(a - b), rtol, atol, a, b, _linf_norm)
    got = stages.difference_ratio(a, b, rtol, atol)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected) or (got.isnan() and expected.isnan()), (got, expected)
    a0, b0 = (torch.tensor([p[i] for p in pairs], dtype=dtype) for i in (0, 1))
    torch.testing.assert_close((a, b), (a0, b0), rtol=0, atol=0, equal_nan=True)  # inputs untouched


_PREFIX = stages.CORRECTOR_TEST_PREFIX
_BAD = st.sampled_from([("far", 1.0), ("nan", float("nan")), ("inf", float("inf")), ("zero", 0.0)])


@settings(max_examples=150, deadline=None, derandomize=True)
@given(n=st.sampled_from([2 * _PREFIX + 1, 3 * _PREFIX + 7]), dtype=st.sampled_from([torch.float32, F64]),
       where=st.lists(st.sampled_from(["start", "prefix-end", "after-prefix", "last"]), max_size=3),
       bad=_BAD, rtol=st.sampled_from([1e-7, 1e-3]), atol=st.sampled_from([1e-9, 0.0]),
       transposed=st.booleans())
def test_corrector_converged_decides_as_torchdiffeq_whatever_the_prefix_sees(n, dtype, where, bad, rtol, atol,
                                                                            transposed):
    # A large CPU state tests a prefix first; the answer must be torchdiffeq's max-ratio < 1 for a
    # failing element anywhere (inside the prefix, just past it, last), NaN / inf included, and
    # for a non-contiguous state (which skips the prefix).
    a = randn(n, dtype=dtype, seed=3)
    b = a * (1 + 1e-9) if dtype == F64 else a.clone()
    kind, value = bad
    at = {"start": 0, "prefix-end": _PREFIX - 1, "after-prefix": _PREFIX, "last": n - 1}
    for w in where:
        if kind == "far":
            b[at[w]] = a[at[w]] + value
        elif kind == "zero":  # 0 / 0 where atol is 0: NaN in torchdiffeq's quotient
            a[at[w]] = b[at[w]] = 0.0
        else:
            b[at[w]] = value
    if transposed:
        a, b = a[: n - n % 3].reshape(3, -1).t(), b[: n - n % 3].reshape(3, -1).t()
    expected = float(_compute_error_ratio(torch.abs(a - b), rtol, atol, a, b, _linf_norm)) < 1
    assert stages.corrector_converged(a, b, rtol, atol) is expected


def test_corrector_converged_reads_only_the_prefix_when_it_fails():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Sizes(TorchDispatchMode):  # the largest difference a - b formed
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket is torch.ops.aten.sub:
                self.largest = max(self.largest, out.numel())
            return out

    n = 4 * _PREFIX
    a = randn(n, seed=4)
    for failing, largest, converged in ((3, _PREFIX, False), (n - 1, n, False), (None, n, True)):
        b = a.clone()
        if failing is not None:
            b[failing] += 1.0
        with Sizes() as seen:
            assert stages.corrector_converged(a, b, 1e-7, 1e-9) is converged
        assert seen.largest == largest, (failing, seen.largest)


def test_corrector_difference_ratio_of_other_states_takes_the_general_path():
    # Tuple states, tensor tolerances and low precision take error_ratio's path: same value.
    a, b = randn(6, seed=1), randn(6, seed=2)
    for args in (((a, a * 2), (b, b * 2), 1e-3, 1e-6), (a, b, torch.tensor(1e-3), 1e-6),
                 (a.half(), b.half(), 1e-3, 1e-6)):
        expected = stages.error_ratio(stages.difference(args[0], args[1]), *args, max_norm)
        assert torch.equal(stages.difference_ratio(*args), expected)
