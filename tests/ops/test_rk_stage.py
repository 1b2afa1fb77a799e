"""rk_stage: every backend against reference.py (the spec), both autograd routes, opcheck,
gradcheck, odd/empty/strided shapes, bad input."""

import pytest
import torch

from odekern import testing
from odekern.ops.rk_stage import op, reference, rk_combine, rk_error_ratio

DTYPES = [torch.float32, torch.float64]
SHAPES = [(0,), (1,), (3, 5, 7), (2, 3, 1031)]  # empty, one element, odd, > one Triton block


def _inputs(shape, nk, dtype, seed=0):
    y = testing.randn(*shape, dtype=dtype, seed=seed)
    ks = [testing.randn(*shape, dtype=dtype, seed=seed + 1 + j) for j in range(nk)]
    coeffs = [0.1 * (j + 1) - 0.27 for j in range(nk)]
    return y, ks, coeffs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nk", [1, 7, 13, 16])  # 16 > kMaxK = 13: folded in two chunks
def test_combine_matches_reference(backend, dtype, shape, nk):
    y, ks, coeffs = _inputs(shape, nk, dtype)
    out = torch.full_like(y, float("nan"))
    got = rk_combine(y, ks, coeffs, out=out, backend=backend)
    assert got is out
    testing.assert_close(got, reference.rk_combine(y, ks, coeffs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_rounds_into_the_base_once(backend, dtype):
    # Four terms of 0.4 ulp(1): added onto y = 1 one at a time each rounds away; their sum, 1.6
    # ulp, added once rounds to 1 + 2 ulp (torchdiffeq's y0 + dy). Over many small steps the
    # first way drifts (tests/solvers/test_rounding_drift.py).
    eps = torch.finfo(dtype).eps
    y = torch.ones(1031, dtype=dtype)
    ks = [torch.ones_like(y) for _ in range(4)]
    got = rk_combine(y, ks, [0.4 * eps] * 4, out=torch.full_like(y, float("nan")), backend=backend)
    assert torch.equal(got, torch.full_like(y, 1 + 2 * eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nk", [1, 7, 8])
def test_combine_without_base(backend, dtype, nk):
    _, ks, coeffs = _inputs((3, 5, 7), nk, dtype, seed=23)
    got = rk_combine(None, ks, coeffs, out=torch.full_like(ks[0], float("nan")), backend=backend)
    testing.assert_close(got, reference.rk_combine(None, ks, coeffs))


def test_combine_without_stages_is_the_base(backend):
    y = testing.randn(3, 5, dtype=torch.float64)
    got = rk_combine(y, [], [], out=torch.full_like(y, float("nan")), backend=backend)
    assert torch.equal(got, y)
    with pytest.raises(ValueError, match="needs a base y or at least one k"):
        rk_combine(None, [], [], out=torch.full_like(y, float("nan")), backend=backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nk", [6, 9, 13])  # dopri5 (6 non-zero error weights), dopri8 (9), kMaxK
def test_error_ratio_matches_reference(backend, dtype, shape, nk):
    y0, ks, coeffs = _inputs(shape, nk, dtype, seed=29)
    y1 = reference.rk_combine(y0, ks, coeffs)
    err_coeffs = [0.02 * (j - 2) for j in range(nk)]
    got = rk_error_ratio(testing.non_contiguous(y0), y1, ks, err_coeffs, rtol=1e-3, atol=1e-6,
                         backend=backend)
    expected = reference.rk_error_ratio(y0, y1, ks, err_coeffs, 1e-3, 1e-6)
    assert got.dtype == torch.float64 and got.dim() == 0
    testing.assert_close(got, expected, **testing.tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_in_place_and_strided(backend, dtype):
    y, ks, coeffs = _inputs((4, 33), 3, dtype)
    expected = reference.rk_combine(y, ks, coeffs)
    y_in_place = y.clone()
    rk_combine(y_in_place, ks, coeffs, out=y_in_place, backend=backend)
    testing.assert_close(y_in_place, expected)
    strided = [testing.non_contiguous(t) for t in [y, *ks]]
    out = testing.non_contiguous(torch.zeros_like(y))
    rk_combine(strided[0], strided[1:], coeffs, out=out, backend=backend)
    testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_route_matches_reference_autograd(backend, dtype):
    y, ks, coeffs = _inputs((3, 17), 4, dtype, seed=7)
    leaves = [t.clone().requires_grad_() for t in [y, *ks]]
    got = rk_combine(leaves[0], leaves[1:], coeffs, out=torch.zeros_like(y), backend=backend)
    assert got.grad_fn is not None
    weight = testing.randn(3, 17, dtype=dtype, seed=11)
    grads = torch.autograd.grad((got * weight).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in [y, *ks]]
    ref = reference.rk_combine(ref_leaves[0], ref_leaves[1:], coeffs)
    ref_grads = torch.autograd.grad((ref * weight).sum(), ref_leaves)
    testing.assert_close(got, ref)
    for g, r in zip(grads, ref_grads):
        testing.assert_close(g, r)


def test_gradcheck_float64(backend):
    y, ks, coeffs = _inputs((2, 5), 3, torch.float64, seed=13)
    leaves = [t.requires_grad_() for t in [y, *ks]]
    assert torch.autograd.gradcheck(lambda y_, *k_: op.rk_combine(y_, list(k_), coeffs, True, backend),
                                    tuple(leaves))
    assert torch.autograd.gradcheck(lambda *k_: op.rk_combine(k_[0], list(k_), coeffs, False, backend),
                                    tuple(leaves[1:]))


def test_time_grid_gradient_takes_differentiable_route(backend):
    y, ks, _ = _inputs((4,), 2, torch.float64, seed=17)
    dt = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = rk_combine(y, ks, [dt * 0.5, dt * 0.25], backend=backend)
    (g,) = torch.autograd.grad(out.sum(), dt)
    testing.assert_close(g, (0.5 * ks[0] + 0.25 * ks[1]).sum())


def test_opcheck(backend):
    y, ks, coeffs = _inputs((3, 7), 2, torch.float32, seed=19)
    torch.library.opcheck(op.rk_combine_out, (y, ks, coeffs, torch.empty_like(y), backend))
    torch.library.opcheck(op.rk_error_ratio, (y, y + 1, ks, [0.1, -0.1], 1e-3, 1e-6, backend))
    leaves = [t.clone().requires_grad_() for t in [y, *ks]]
    torch.library.opcheck(op.rk_combine, (leaves[0], leaves[1:], coeffs, True, backend))
    torch.library.opcheck(op.rk_combine, (leaves[1], leaves[1:], coeffs, False, backend))


def test_bad_input():
    y, ks, coeffs = _inputs((3, 4), 2, torch.float32)
    with pytest.raises(ValueError, match=r"ks\[1\] has shape"):
        rk_combine(y, [ks[0], ks[1][:, :2]], coeffs)
    with pytest.raises(ValueError, match="2 k tensors but 3 coefficients"):
        rk_combine(y, ks, coeffs + [1.0])
    with pytest.raises(ValueError, match="out must have the state's shape"):
        rk_combine(y, ks, coeffs, out=torch.empty(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="2 k tensors but 1 coefficients"):
        rk_error_ratio(y, y, ks, [1.0], rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match=r"rtol must be a scalar"):
        rk_error_ratio(y, y, ks, [1.0, 1.0], rtol=torch.full((2,), 1e-3), atol=1e-6)
    with pytest.raises(ValueError, match="backend must be"):
        rk_combine(y, ks, coeffs, backend="gpu")


def test_forced_backend_refusal_names_reason():
    y = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="float16"):
        rk_combine(y, [y], [1.0], backend="cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_error_pass_beyond_its_capacity_is_refused_by_the_kernels_and_solved_by_the_reference(backend, dtype):
    # 14 terms: more than one pass takes. A forced kernel backend refuses with a clear error;
    # automatic selection falls back to the reference, which takes any number.
    y0, ks, coeffs = _inputs((3, 5), 14, dtype, seed=31)
    y1 = reference.rk_combine(y0, ks, coeffs)
    err_coeffs = [0.01 * (j - 5) for j in range(14)]
    expected = reference.rk_error_ratio(y0, y1, ks, err_coeffs, 1e-3, 1e-6)
    testing.assert_close(rk_error_ratio(y0, y1, ks, err_coeffs, rtol=1e-3, atol=1e-6), expected, **testing.tol(dtype))
    if backend != "reference":
        with pytest.raises(RuntimeError, match=r"takes 1\.\.13 stages, got 14"):
            rk_error_ratio(y0, y1, ks, err_coeffs, rtol=1e-3, atol=1e-6, backend=backend)
