"""odeint with the fused rk_stage kernels == odeint on the plain-PyTorch reference core.

The solvers reach the kernels only through odekern/solvers/stages.py; forcing the
``reference`` backend there runs the reference core, every other backend runs the fused ops.
"""

import contextlib
import copy

import pytest
import torch
from torch import nn

import odekern
from odekern import odeint, testing
from odekern.dispatch import registered, replaced
from odekern.solvers.checks import NonFiniteError

METHODS = [("dopri5", None), ("rk4", {"step_size": 0.1}), ("euler", {"step_size": 0.05}),
           ("implicit_adams", {"step_size": 0.1})]  # every stages.py entry point: RK, error, Adams
# Every other adaptive method: FSAL and not, up to dopri8's 13-term combinations (9 error weights).
ADAPTIVE = [("dopri8", None), ("bosh3", None), ("fehlberg2", None), ("adaptive_heun", None), ("tsit5", None)]


class ConvRHS(nn.Module):
    """A small conv RHS of the dynamic-block shape (B, C, H, W)."""

    def __init__(self, channels=3, dtype=torch.float64):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype)
        with torch.no_grad():
            self.conv.weight.mul_(0.3)

    def forward(self, t, y):
        return torch.tanh(self.conv(y)) - 0.5 * y + torch.sin(t)


def _fused_only(backend):
    if backend == "reference":
        pytest.skip("the reference backend is the oracle of this comparison, not a fused path")
    return backend


def _solve(backend, func, y0, t, method, options, **kw):
    with odekern.use_backend(backend):
        return odeint(func, y0, t, method=method, options=options, rtol=1e-6, atol=1e-8, **kw)


@pytest.mark.parametrize("method,options", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_equals_reference_core(backend, method, options, dtype):
    _fused_only(backend)
    func = ConvRHS(dtype=dtype)
    y0 = testing.randn(2, 3, 5, 7, dtype=dtype, seed=1)
    t = torch.linspace(0.0, 0.6, 4, dtype=dtype)
    with torch.no_grad():
        ref = _solve("reference", func, y0, t, method, options)
        got = _solve(backend, func, y0, t, method, options)
    testing.assert_close(got, ref, msg=f"{method} with backend {backend}")


@pytest.mark.parametrize("method,options", [METHODS[0], METHODS[1], METHODS[3]], ids=["dopri5", "rk4", "implicit_adams"])
def test_backprop_gradients_equal_reference_core(backend, method, options):
    _fused_only(backend)
    func = ConvRHS()
    y0 = testing.randn(1, 3, 4, 5, dtype=torch.float64, seed=2)
    t = torch.tensor([0.0, 0.3, 0.5], dtype=torch.float64)
    grads = {}
    for name in ("reference", backend):
        y = y0.clone().requires_grad_()
        out = _solve(name, func, y, t, method, options)
        grads[name] = torch.autograd.grad(out.square().sum(), (y, *func.parameters()))
    for g, r in zip(grads[backend], grads["reference"]):
        testing.assert_close(g, r)


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_fused_kernels_are_actually_used(backend, method):
    _fused_only(backend)
    calls = {"rk_combine": 0, "rk_error_ratio": 0}
    with contextlib.ExitStack() as stack:
        for op in calls:
            entry = registered(op)[backend]

            def counted(*a, _fn=entry.fn, _op=op):
                calls[_op] += 1
                return _fn(*a)

            stack.enter_context(replaced(op, backend, counted))
        func = ConvRHS()
        y0 = testing.randn(1, 3, 4, 4, dtype=torch.float64, seed=3)
        with torch.no_grad():
            _solve(backend, func, y0, torch.tensor([0.0, 0.5], dtype=torch.float64), method, None)
    assert calls["rk_combine"] > 0 and calls["rk_error_ratio"] > 0, calls


@pytest.mark.parametrize("method", [m for m, _ in ADAPTIVE])
def test_other_adaptive_methods_equal_reference_core(backend, method):
    # Forward (float32, where the fused arithmetic differs most from torch's) and backprop
    # gradients (float64) on a small state at a loose tolerance: few steps, so that the Triton
    # interpreter stays quick.
    _fused_only(backend)
    t = torch.tensor([0.0, 0.2, 0.4], dtype=torch.float64)
    # adaptive_heun's first-order error estimate needs ~10x the steps of the others at one tolerance.
    tol = {"rtol": 1e-2, "atol": 1e-4} if method == "adaptive_heun" else {"rtol": 1e-4, "atol": 1e-6}
    for dtype in (torch.float32, torch.float64):
        func = ConvRHS(dtype=dtype)
        y0 = testing.randn(1, 3, 2, 3, dtype=dtype, seed=4, requires_grad=dtype == torch.float64)
        outs = {}
        for name in ("reference", backend):
            with odekern.use_backend(name):
                out = odeint(func, y0, t.to(dtype), method=method, **tol)
            grads = torch.autograd.grad(out.square().sum(), (y0, *func.parameters())) if y0.requires_grad else ()
            outs[name] = (out, grads)
        fused, reference = outs[backend][0], outs["reference"][0]
        if dtype == torch.float32 and not torch.allclose(fused, reference, **testing.tol(dtype)):
            # A float32 error estimate of a step far below the tolerance is rounding noise whose
            # last bits differ between the fused and the PyTorch arithmetic: the step sequences
            # part (tsit5's first error ratio here comes out 2.0e-5 or 5.2e-5 by that rounding). Each
            # solution must then be as accurate as the other or as the tolerance allows.
            exact = odeint(copy.deepcopy(func).double(), y0.double(), t, method="dopri8", rtol=1e-12, atol=1e-14)
            for a, b in ((fused, reference), (reference, fused)):
                testing.assert_adaptive_accuracy_ok(a.detach(), b.detach(), exact.detach(), **tol)
        else:
            testing.assert_close(fused, reference, msg=f"{method} {dtype} with backend {backend}")
        for g, r in zip(outs[backend][1], outs["reference"][1]):
            testing.assert_close(g, r)


def test_bad_rhs_output_still_rejected_on_fused_path(backend):
    _fused_only(backend)
    y0 = torch.zeros(2, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        _solve(backend, lambda t, y: torch.zeros(3), y0, t, "rk4", {"step_size": 0.5})
    with pytest.raises(TypeError, match="dtype torch.complex128 .* needs a complex state"):
        _solve(backend, lambda t, y: y + 0j, y0, t, "dopri5", None)
    # Another real dtype is cast to the state's before the fused stages see it.
    ones = _solve(backend, lambda t, y: torch.ones_like(y, dtype=torch.int64), y0, t, "rk4", {"step_size": 0.5})
    testing.assert_close(ones[-1], torch.ones_like(y0))


@pytest.mark.parametrize("method,options", [("rk4", {"step_size": 0.1}), ("dopri5", None)])
def test_nan_mid_solve_names_the_time_on_fused_path(backend, method, options):
    _fused_only(backend)

    def blows_up(t, y):
        return torch.where(t > 0.45, torch.full_like(y, float("nan")), -y)

    with pytest.raises(NonFiniteError, match=r"t=0\.[0-9]"):
        _solve(backend, blows_up, torch.ones(4, dtype=torch.float64),
               torch.tensor([0.0, 1.0], dtype=torch.float64), method, options)
