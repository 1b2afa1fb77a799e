"""A warning about a user's call names that call's line, however deep inside odekern it is raised
(``odekern._warnings.warn_caller``): Python's default filters show a DeprecationWarning only
when it is attributed to ``__main__``, and a user looking for what to change needs the line.

Each case is a function whose one statement (the line after its ``def``) is the user's call."""

import warnings

import pytest
import torch
from torch import nn

import odekern

T = torch.linspace(0.0, 1.0, 3)


def _decay(t, y):
    return -y


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 3)

    def forward(self, t, y):
        return self.layer(y)


def _closure_with_a_stray_tensor():
    layer, scale = nn.Linear(3, 3), torch.ones(3, requires_grad=True)
    return (lambda t, y: layer(y) * scale), tuple(layer.parameters())


def odeint_per_sample_norm():
    odekern.odeint(_decay, torch.ones(2, 3), T, options={"norm": "per_sample"})


def odeint_adjoint_per_sample_norm():
    odekern.odeint_adjoint(_Linear(), torch.ones(2, 3), T, options={"norm": "per_sample"})


def ode_block_per_sample_norm():
    odekern.ODEBlock(_Linear(), method="dopri5", options={"norm": "per_sample"})


def scipy_solver_is_forward_only():
    odekern.odeint(_decay, torch.ones(2, 3, requires_grad=True), T, method="scipy_solver")


def nmode_solve_former_gradient_name():
    odekern.nmode_solve(torch.zeros(2, 3), torch.zeros(1, 3), gradient="exact")


def adjoint_misses_a_closure_tensor(func_and_params=_closure_with_a_stray_tensor()):
    odekern.odeint_adjoint(func_and_params[0], torch.ones(2, 3), T, adjoint_params=func_and_params[1], method="rk4", options={"step_size": 0.5})  # noqa: E501 (one statement, one line)


def _modifies_its_input(t, y):
    y.mul_(1.0)  # an in-place operation on the solver's state, which odekern warns about
    return -y


def adjoint_func_modifies_its_input(params=(torch.zeros(1, requires_grad=True),)):
    odekern.odeint_adjoint(_modifies_its_input, torch.ones(2, 3), T, adjoint_params=params, method="rk4", options={"step_size": 0.5})  # noqa: E501


def checkpoint_func_modifies_its_input(y0=torch.ones(2, 3, requires_grad=True)):
    odekern.odeint_checkpointed(_modifies_its_input, y0, T, checkpoints=2, method="rk4", options={"step_size": 0.5})  # noqa: E501


def adaptive_checkpoint_func_modifies_its_input(y0=torch.ones(2, 3, requires_grad=True)):
    odekern.odeint_checkpointed(_modifies_its_input, y0, T, checkpoints=2, method="dopri5")


def block_in_sequential_func_modifies_its_input(model=nn.Sequential(odekern.ODEBlock(_modifies_its_input, method="rk4", step_size=0.5))):  # noqa: E501
    model(torch.ones(2, 3))


def adams_time_derivatives():
    odekern.odeint(_decay, torch.ones(2, 3), torch.linspace(0.0, 1.0, 3, requires_grad=True), method="explicit_adams", options={"step_size": 0.25})  # noqa: E501


CASES = [odeint_per_sample_norm, odeint_adjoint_per_sample_norm, ode_block_per_sample_norm,
         scipy_solver_is_forward_only, nmode_solve_former_gradient_name, adjoint_misses_a_closure_tensor,
         adams_time_derivatives, adjoint_func_modifies_its_input,
         checkpoint_func_modifies_its_input, adaptive_checkpoint_func_modifies_its_input,
         block_in_sequential_func_modifies_its_input]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
def test_the_warning_names_the_users_line(case):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case()
    assert caught, f"{case.__name__} gave no warning"
    for w in caught:
        assert (w.filename, w.lineno) == (__file__, case.__code__.co_firstlineno + 1), (
            f"{case.__name__}: {w.category.__name__} attributed to {w.filename}:{w.lineno}: {w.message}")
