"""``odeint_adjoint`` warns (once, naming it) about a tensor that requires grad and that ``func``
reaches but ``adjoint_params`` leaves out: the adjoint would silently give it no gradient (the
official CNM-UNet code keeps gamma and its conv outside the ODE function this way)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import odekern

pytestmark = pytest.mark.usefixtures("one_thread")
T = torch.tensor([0.0, 0.5])


class Gamma(nn.Module):
    """An ODE function with a registered conv and a plain tensor attribute ``gamma``."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.gamma = torch.randn(3, requires_grad=True)  # not an nn.Parameter

    def forward(self, t, y):
        return -y + torch.sin(self.lin(y) + self.gamma) ** 2


def _unreached(func, y0=None, **kw):
    y0 = torch.randn(2, 3, requires_grad=True) if y0 is None else y0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        odekern.odeint_adjoint(func, y0, T, method="rk4", options={"step_size": 0.25}, **kw).sum().backward()
    return [str(w.message) for w in caught if "not in adjoint_params" in str(w.message)]


def test_a_plain_tensor_attribute_is_named_and_gets_no_gradient():
    func = Gamma()
    messages = _unreached(func)
    assert len(messages) == 1 and messages[0].startswith("odeint_adjoint: func.gamma (a tensor of shape (3,))")
    assert func.gamma.grad is None and func.lin.weight.grad is not None
    assert _unreached(func) == []  # once per tensor


def test_a_submodule_left_out_of_explicit_adjoint_params_is_named():
    func = Gamma()
    func.gamma.requires_grad_(False)
    messages = _unreached(func, adjoint_params=(func.lin.weight,))
    assert [m.split(" (")[0] for m in messages] == ["odeint_adjoint: func.lin.bias"]


def test_closures_are_searched():
    outer = nn.Conv1d(1, 1, 1)
    scale = torch.ones(3, requires_grad=True)

    def rhs(t, y):
        return -y * scale + outer.weight.sum()

    messages = _unreached(rhs, adjoint_params=())
    assert sorted(m.split(" (")[0] for m in messages) == [
        "odeint_adjoint: func.<closure outer>.bias", "odeint_adjoint: func.<closure outer>.weight",
        "odeint_adjoint: func.<closure scale>"]


@pytest.mark.parametrize("gradient", ["adjoint", "backprop"])
def test_nothing_to_warn_about(gradient):
    # Every parameter in adjoint_params (ODEBlock's adjoint), or no adjoint at all.
    func = Gamma()
    func.gamma = nn.Parameter(func.gamma.detach())  # now registered: in func.parameters()
    block = odekern.ODEBlock(func, gradient=gradient, step_size=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block(torch.randn(2, 3)).sum().backward()
    assert _unreached(Gamma())  # the control: an unreached tensor does warn


def test_bound_methods_are_searched():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.conv = nn.Linear(3, 3)

        def dynamics(self, t, y):
            return -y * self.scale

    model = Model()
    messages = _unreached(model.dynamics, adjoint_params=(model.scale,))
    assert sorted(m.split(" (")[0] for m in messages) == [
        "odeint_adjoint: func.__self__.conv.bias", "odeint_adjoint: func.__self__.conv.weight"]


def test_data_parallel_replica_parameters_are_its_tensor_attributes():
    # In a DataParallel replica the parameters are plain tensor attributes (parameters() is empty);
    # odeint_adjoint differentiates them as torchdiffeq does (and so has nothing to warn about).
    func = Gamma()
    func.gamma.requires_grad_(False)
    weight = func.lin.weight
    del func.lin._parameters["weight"]
    func.lin.weight = weight.detach().clone().requires_grad_(True)  # a plain attribute now
    func.lin._is_replica = func._is_replica = True
    assert _unreached(func) == []
    assert func.lin.weight.grad is not None


# Read by name inside the RHS function below: a module-level tensor, neither parameter nor closure.
MODULE_LEVEL_SCALE = torch.ones(3, requires_grad=True)


def _rhs_reading_a_global(t, y):
    return -y * MODULE_LEVEL_SCALE


def test_globals_named_by_the_function_are_searched():
    class Holder(nn.Module):
        def dynamics(self, t, y):
            return _rhs_reading_a_global(t, y)

    assert [m.split(" (")[0] for m in _unreached(_rhs_reading_a_global, adjoint_params=())] == [
        "odeint_adjoint: func.<global MODULE_LEVEL_SCALE>"]
    # Through a bound method's function and a helper it calls (warned once per tensor: a fresh one).
    global MODULE_LEVEL_SCALE
    MODULE_LEVEL_SCALE = torch.ones(3, requires_grad=True)
    assert [m.split(" (")[0] for m in _unreached(Holder().dynamics, adjoint_params=())] == [
        "odeint_adjoint: func.__func__.<global _rhs_reading_a_global>.<global MODULE_LEVEL_SCALE>"]
