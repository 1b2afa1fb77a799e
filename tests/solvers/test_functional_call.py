"""Gradients with respect to tensors substituted by ``torch.func.functional_call`` (how
meta-learning code differentiates adapted weights): the continuous adjoint and the checkpointed
gradient evaluate ``func`` again in their backward pass, after the call has returned, and must
see the substituted tensors there too. Before, they gave those tensors a zero gradient without an
error (as torchdiffeq's adjoint does)."""

from __future__ import annotations

import pytest
import torch
from solver_problems import TanhField
from torch import nn
from torch.func import functional_call

import odekern
from odekern.module_state import forward_tensors
from odekern.testing import assert_close, randn

F64 = torch.float64
T = torch.tensor([0.0, 0.5, 1.0], dtype=F64)


def _substitutes(module):
    """Other weights for every parameter and buffer, the parameters to be differentiated."""
    return {name: (tensor.detach() * 1.3 + 0.05).requires_grad_(tensor.requires_grad)
            for name, tensor in forward_tensors(module).items()}


def _loaded(module, substitutes):
    """``module`` with the substitutes copied into it: the reference, without functional_call."""
    with torch.no_grad():
        for name, tensor in forward_tensors(module).items():
            tensor.copy_(substitutes[name])
    return module


class _Holder(nn.Module):
    """``solve(func)`` with ``func`` a submodule, so that functional_call substitutes its tensors."""

    def __init__(self, func, solve):
        super().__init__()
        self.func = func
        self.solve = solve

    def forward(self):
        return self.solve(self.func)


def _under_functional_call(func, substitutes, solve):
    return functional_call(_Holder(func, solve), {f"func.{name}": tensor for name, tensor in substitutes.items()}, ())


@pytest.mark.parametrize("gradient", ["adjoint", "checkpoint"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_ode_block_under_functional_call(method, gradient):
    accuracy = {"step_size": 0.125} if method == "rk4" else {"rtol": 1e-10, "atol": 1e-12}

    def make_block(mode):
        return odekern.ODEBlock(TanhField(), method=method, gradient=mode, **accuracy)

    block = make_block(gradient)
    substitutes = _substitutes(block)
    x = randn(2, 3, dtype=F64, seed=1)
    out = functional_call(block, substitutes, (x,))
    leaves = [substitutes[name] for name, _ in block.named_parameters()]
    grads = torch.autograd.grad(out.square().sum(), leaves)
    reference = _loaded(make_block("backprop"), substitutes)
    ref_out = reference(x)
    ref_grads = torch.autograd.grad(ref_out.square().sum(), list(reference.parameters()))
    assert_close(out, ref_out)
    # The adjoint's gradient is the continuous one: backprop's up to the solver's error (rk4, h = 1/8).
    tolerance = {"kind": "cross", "rtol": 1e-4, "atol": 1e-6} if gradient == "adjoint" else {}
    for got, want in zip(grads, ref_grads):
        assert got.abs().max() > 0
        assert_close(got, want, **tolerance)
    # The module's own parameters took no part.
    assert all(p.grad is None for p in block.parameters())


@pytest.mark.parametrize("entry", ["odeint_adjoint", "odeint_checkpointed"])
def test_entry_points_with_a_module_func(entry):
    func = TanhField()
    substitutes = _substitutes(func)
    y0 = randn(2, 3, dtype=F64, seed=2)
    extra = {"checkpoints": 2} if entry == "odeint_checkpointed" else {}

    def solve(module):
        return getattr(odekern, entry)(module, y0, T, method="rk4", options={"step_size": 0.125}, **extra)

    out = _under_functional_call(func, substitutes, solve)
    leaves = [substitutes[name] for name, _ in func.named_parameters()]
    grads = torch.autograd.grad(out.square().sum(), leaves)
    loaded = _loaded(TanhField(), substitutes)
    ref = odekern.odeint(loaded, y0, T, method="rk4", options={"step_size": 0.125})
    ref_grads = torch.autograd.grad(ref.square().sum(), list(loaded.parameters()))
    tolerance = {"kind": "cross", "rtol": 1e-4, "atol": 1e-6} if entry == "odeint_adjoint" else {}
    for got, want in zip(grads, ref_grads):
        assert got.abs().max() > 0
        assert_close(got, want, **tolerance)


def test_event_time_under_functional_call():
    """odeint_event's gradient of the event time evaluates func at the event in its backward
    pass: with the substituted tensors, as the solve did."""
    func = TanhField()
    substitutes = _substitutes(func)
    y0 = torch.tensor([1.0, 2.0, 0.5], dtype=F64)

    def event_time(module):
        event_t, _ = odekern.odeint_event(module, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y.sum() - 3.0)
        return event_t

    got = _under_functional_call(func, substitutes, event_time)
    grads = torch.autograd.grad(got, [substitutes[name] for name, _ in func.named_parameters()])
    loaded = _loaded(TanhField(), substitutes)
    want = event_time(loaded)
    ref_grads = torch.autograd.grad(want, list(loaded.parameters()))
    assert_close(got, want)
    for g, r in zip(grads, ref_grads):
        assert g.abs().max() > 0
        assert_close(g, r)
