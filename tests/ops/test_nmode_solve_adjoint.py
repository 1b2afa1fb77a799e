"""nmode_solve's continuous adjoint (gradient="adjoint") on sizes that stress the vectorised
CPU path: lanes of 64 elements that refill as elements finish (each element runs its own
adaptive dopri5 on [y, a_y, a_g]), tasks of up to 4096 elements (a small state is cut into
about 8 tasks per thread), g repeating across block and task boundaries.

Oracle: the pure-PyTorch reference (odekern/ops/nmode_solve/reference.py: torch's own sin,
the adjoint integrated per element with torchdiffeq's algorithm), "rounding" tolerances
scaled by the gradient's size as in test_nmode_solve.py; torch.autograd.gradcheck (float64).
"""

from __future__ import annotations


import pytest
import torch
from nmode_backends import interpreted, require_backend

import odekern
from odekern.testing import SOLVE_GRADCHECK_TOL, assert_close, backend_peak_atol, randn

from odekern import dispatch as backends

CNM = dict(method="dopri5", rtol=1e-7, atol=1e-9)


def _require(backend, y0, g, **kw):
    if backend == "reference":
        pytest.skip("the reference is the oracle of these tests")
    require_backend(backend, y0, g, **kw)


def _inputs(shape, g_shape, dtype, seed=0, y_scale=1.0):
    g = randn(max(1, torch.Size(g_shape).numel()), dtype=dtype, seed=seed + 1, scale=0.7).reshape(g_shape)
    return randn(*shape, dtype=dtype, seed=seed, scale=y_scale), g


def _adjoint_grads(y0, g, t1, backend, **kw):
    """Gradients of a loss using y1, f0 and f1 (all three cotangent seeds are non-zero and
    differ per element, so the adjoint's per-element step counts differ)."""
    a = y0.detach().clone().requires_grad_(True)
    b = g.detach().clone().requires_grad_(True)
    y1, f0, f1 = odekern.nmode_solve(a, b, 0.0, t1, return_f=True, backend=backend, gradient="adjoint", **kw)
    w = torch.linspace(-2.0, 3.0, y1.numel(), dtype=y1.dtype).view_as(y1)
    loss = (w * y1).sum() + (f1 ** 2).sum() + (w.flip(-1) * f0).sum()
    loss.backward()
    return a.grad, b.grad


SIZES = {
    "one": ((1,), (1,)),
    "block-minus-one": ((63,), (63,)),
    "block-plus-one": ((5, 13), (13,)),            # 65 elements, g repeats inside blocks
    "odd-blocks": ((3, 130), (130,)),
    "across-tasks": ((2, 2, 1051), (1, 2, 1051)),  # 4204 elements: several tasks, g straddles them
    "scalar-g": ((4, 37), ()),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("control", ["global", "per_element"])
@pytest.mark.parametrize("size", list(SIZES))
def test_dopri5_adjoint_matches_reference(backend, size, control, dtype):
    shape, g_shape = SIZES[size]
    if size == "across-tasks" and interpreted(backend):
        pytest.skip("straddles the CPU backend's tasks; Triton's 128-lane blocks are straddled by "
                    "the smaller sizes, and interpreted this size takes ~15 s per case")
    # A wide spread of amplitudes: elements need different numbers of adjoint steps.
    y0, g = _inputs(shape, g_shape, dtype, y_scale=2.5)
    kw = dict(CNM, control=control)
    _require(backend, y0, g, gradient="adjoint", **kw)
    got = _adjoint_grads(y0, g, 0.05, backend, **kw)
    want = _adjoint_grads(y0, g, 0.05, "reference", **kw)
    for name, x, r in zip(("grad_y0", "grad_g"), got, want):
        assert_close(x, r, msg=f"{backend} {size} {control}: {name}", atol=backend_peak_atol(r))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("method,step_size,t1", [("rk4", 0.05, 0.5), ("midpoint", 0.1, 0.35), ("euler", 0.1, 0.3)])
def test_fixed_step_adjoint_matches_reference(backend, method, step_size, t1, dtype):
    y0, g = _inputs(*SIZES["block-plus-one"], dtype)
    kw = dict(method=method, step_size=step_size)
    _require(backend, y0, g, gradient="adjoint", **kw)
    got = _adjoint_grads(y0, g, t1, backend, **kw)
    want = _adjoint_grads(y0, g, t1, "reference", **kw)
    for name, x, r in zip(("grad_y0", "grad_g"), got, want):
        assert_close(x, r, msg=f"{backend} {method}: {name}", atol=backend_peak_atol(r))


def test_adjoint_long_interval_many_steps_matches_reference(backend):
    # Over [0, 2] elements take tens of adaptive steps, with rejections: lanes refill at
    # very different times.
    y0, g = _inputs((3, 41), (41,), torch.float64, y_scale=3.0)
    kw = dict(method="dopri5", rtol=1e-6, atol=1e-8)
    _require(backend, y0, g, gradient="adjoint", **kw)
    got = _adjoint_grads(y0, g, 2.0, backend, **kw)
    want = _adjoint_grads(y0, g, 2.0, "reference", **kw)
    for x, r in zip(got, want):
        assert_close(x, r, atol=max(1.0, r.abs().max().item()) * 1e-10)


def test_adjoint_gradcheck_on_a_size_that_is_not_a_block_multiple(backend):
    y0 = randn(67, dtype=torch.float64, seed=5, scale=2.0, requires_grad=True)
    g = randn(67, dtype=torch.float64, seed=6, scale=0.7, requires_grad=True)
    _require(backend, y0, g, gradient="adjoint", **CNM)

    def fn(y, gg):
        return odekern.nmode_solve(y, gg, 0.0, 0.05, return_f=True, backend=backend, gradient="adjoint", **CNM)

    # The adjoint is the gradient of the ODE, not of the discrete solve: it matches finite
    # differences to the discretisation error (same tolerance as test_nmode_solve.py).
    # Interpreted Triton: fast mode (one random projection of the 134-input Jacobian).
    assert torch.autograd.gradcheck(fn, (y0, g), fast_mode=interpreted(backend), **SOLVE_GRADCHECK_TOL["adjoint"])


def test_adjoint_step_limit_raises_like_the_reference(backend):
    # The forward (global control) needs 2 attempts here; some elements' adjoint needs 3.
    y0, g = _inputs((4, 33), (33,), torch.float64, y_scale=2.5)
    kw = dict(CNM, max_num_steps=2)
    _require(backend, y0, g, gradient="adjoint", **kw)
    for b in (backend, "reference"):
        a = y0.clone().requires_grad_(True)
        y1 = odekern.nmode_solve(a, g, 0.0, 0.05, backend=b, gradient="adjoint", **kw)
        with pytest.raises(RuntimeError, match="max_num_steps"):
            y1.sum().backward()
