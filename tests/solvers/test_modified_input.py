"""A ``func`` that writes into the state it is given: the solve follows torchdiffeq's (altered)
result, with one warning naming the problem, attributed to the caller's line."""

import warnings

import pytest
import torch
import torchdiffeq

import odekern
from odekern.testing import assert_close

F64 = torch.float64
T = torch.linspace(0.0, 1.0, 3, dtype=F64)


def _grows_its_input(t, y):
    y.mul_(1.0 + 1e-3)  # the bug: y is the solver's state
    return -y


@pytest.mark.parametrize("method, options",
                         [("rk4", {"step_size": 0.1}), ("dopri5", None), ("euler", {"step_size": 0.1})])
def test_a_func_writing_into_its_input_warns_once_and_computes_what_torchdiffeq_does(method, options):
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = odekern.odeint(_grows_its_input, y0.clone(), T, method=method, options=options)
    messages = [w for w in caught if "func modified its input y in place" in str(w.message)]
    assert len(messages) == 1 and messages[0].filename == __file__
    assert "at t=0" in str(messages[0].message)
    theirs = torchdiffeq.odeint(_grows_its_input, y0.clone(), T, method=method, options=options)
    assert_close(ours, theirs, kind="cross")


def test_writing_into_a_view_or_a_tuple_component_is_seen():
    def zero_first(t, y):
        y[..., 0] = 0.0  # a write through an index is a write to y
        return -y

    with pytest.warns(UserWarning, match="func modified its input y in place"):
        odekern.odeint(zero_first, torch.ones(2, 3, dtype=F64), T, method="rk4", options={"step_size": 0.25})

    def tuple_rhs(t, y):
        a, b = y
        b.add_(1e-3)
        return -a, -b

    with pytest.warns(UserWarning, match="func modified its input y in place"):
        odekern.odeint(tuple_rhs, (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)), T, method="dopri5")


def test_out_of_place_funcs_do_not_warn():
    def clean(t, y):
        z = y.clone()
        z.mul_(2.0)  # in place on its own copy
        return -z

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odekern.odeint(clean, torch.ones(3, dtype=F64), T, method="dopri5")
        odekern.odeint(clean, torch.ones(3, dtype=F64), T, method="rk4", options={"step_size": 0.1})
