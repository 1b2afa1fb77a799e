"""Every exception torchdiffeq raises on purpose (an ``assert`` or a ``raise`` in its source) is
raised by odekern as an instance of the same type, so an ``except`` written around a torchdiffeq
call keeps catching it after the import is switched. Training loops skip a failed solve with
``except AssertionError`` (torchdiffeq's ``max_num_steps exceeded`` / ``underflow in dt``).

Where torchdiffeq fails by accident deep inside (an ``IndexError`` for an empty ``t``, an
``AttributeError`` for a tuple holding a float), odekern's clearer error is its own business and
is tested with the argument checks."""

import numpy as np
import pytest
import torch
import torchdiffeq
from solver_problems import Decay

import odekern
from odekern.solvers import NonFiniteError, SolveError

T = torch.tensor([0.0, 1.0])


def _decay(t, y):
    return -y


def _blow_up(t, y):
    return y * y


def _nan_after_half(t, y):
    return -y if t < 0.5 else y * float("nan")


def _stiff(t, y):
    return -1e5 * (y - torch.cos(t))


def _y0():
    return torch.tensor([1.0])


def _pair():
    return (torch.tensor([1.0]), torch.tensor([2.0]))


def _decay_pair(t, y):
    return tuple(-c for c in y)


# name -> (a call taking the library, torchdiffeq or odekern; the type odekern's error also is: an
# argument of the wrong kind a TypeError, of a wrong value a ValueError, a solve that fails a
# RuntimeError). Each call fails on purpose in torchdiffeq.
CASES = {
    "t is a NumPy array": (lambda lib: lib.odeint(_decay, _y0(), np.array([0.0, 1.0])), TypeError),
    "t is an integer tensor": (lambda lib: lib.odeint(_decay, _y0(), torch.tensor([0, 1])), TypeError),
    "t is 2-D": (lambda lib: lib.odeint(_decay, _y0(), torch.zeros(2, 2)), ValueError),
    "t is not ordered": (lambda lib: lib.odeint(_decay, _y0(), torch.tensor([0.0, 1.0, 0.5])), ValueError),
    "t repeats a time": (lambda lib: lib.odeint(_decay, _y0(), torch.tensor([0.0, 0.0])), ValueError),
    "t holds NaN": (lambda lib: lib.odeint(_decay, _y0(), torch.tensor([0.0, float("nan")])), ValueError),
    "y0 is a list": (lambda lib: lib.odeint(_decay, [1.0], T), TypeError),
    "y0 is a float": (lambda lib: lib.odeint(_decay, 1.0, T), TypeError),
    "unknown method": (lambda lib: lib.odeint(_decay, _y0(), T, method="rk45"), ValueError),
    "rtol requires grad": (lambda lib: lib.odeint(
        _decay, _y0(), T, rtol=torch.tensor(1e-3, requires_grad=True)), ValueError),
    "atol requires grad": (lambda lib: lib.odeint(
        _decay, _y0(), T, atol=torch.tensor(1e-6, requires_grad=True)), ValueError),
    "tuple rtol too long": (lambda lib: lib.odeint(_decay_pair, _pair(), T, rtol=(1e-3, 1e-3, 1e-3)), ValueError),
    "tuple atol too short": (lambda lib: lib.odeint(_decay_pair, _pair(), T, atol=(1e-6,)), ValueError),
    "step_size with grid_constructor": (lambda lib: lib.odeint(
        _decay, _y0(), T, method="euler",
        options=dict(step_size=0.1, grid_constructor=lambda f, y, t: t)), ValueError),
    "grid misses the end": (lambda lib: lib.odeint(
        _decay, _y0(), T, method="euler",
        options=dict(grid_constructor=lambda f, y, t: torch.tensor([0.0, 0.5]))), ValueError),
    "max_order above 12": (lambda lib: lib.odeint(
        _decay, _y0(), T, method="implicit_adams", options=dict(step_size=0.1, max_order=13)), ValueError),
    "step_t shares a point with jump_t": (lambda lib: lib.odeint(
        _decay, _y0(), T, options=dict(step_t=torch.tensor([0.5]), jump_t=torch.tensor([0.5]))), ValueError),
    "first_step is 0": (lambda lib: lib.odeint(_decay, _y0(), T, options=dict(first_step=0.0)), ValueError),
    "first_step is negative": (lambda lib: lib.odeint(_decay, _y0(), T, options=dict(first_step=-0.1)), ValueError),
    "max_step is negative": (lambda lib: lib.odeint(_decay, _y0(), T, options=dict(max_step=-3.0)), ValueError),
    "max_num_steps is None": (lambda lib: lib.odeint(_decay, _y0(), T, options=dict(max_num_steps=None)),
                              TypeError),
    "max_num_steps is 0": (lambda lib: lib.odeint(_decay, _y0(), T, options=dict(max_num_steps=0)), ValueError),
    "max_num_steps exceeded": (lambda lib: lib.odeint(
        _stiff, _y0(), torch.tensor([0.0, 2.0]), options=dict(max_num_steps=50)), RuntimeError),
    "step size underflow (blow-up), dopri5": (lambda lib: lib.odeint(
        _blow_up, _y0(), torch.tensor([0.0, 2.0])), RuntimeError),
    "step size underflow (blow-up), bosh3": (lambda lib: lib.odeint(
        _blow_up, _y0(), torch.tensor([0.0, 2.0]), method="bosh3"), RuntimeError),
    "step size underflow (blow-up), adjoint": (lambda lib: lib.odeint_adjoint(
        lambda t, y: y * y, _y0(), torch.tensor([0.0, 2.0]), adjoint_params=()), RuntimeError),
    "max_num_steps exceeded in the adjoint's backward solve": (lambda lib: lib.odeint_adjoint(
        Decay(torch.float32), _y0().requires_grad_(), T, adjoint_options=dict(max_num_steps=1)).sum().backward(), RuntimeError),
    "func turns NaN mid-solve": (lambda lib: lib.odeint(
        _nan_after_half, _y0(), torch.tensor([0.0, 2.0])), RuntimeError),
    "func is NaN at t0": (lambda lib: lib.odeint(lambda t, y: y * float("nan"), _y0(), T), RuntimeError),
    "event search blows up": (lambda lib: lib.odeint_event(
        _blow_up, _y0(), torch.tensor(0.0), event_fn=lambda t, y: y[0] - 1e30), RuntimeError),
    "event with three times": (lambda lib: lib.odeint(
        _decay, _y0(), torch.tensor([0.0, 1.0, 2.0]), event_fn=lambda t, y: y[0] - 0.5), ValueError),
    "fixed-grid event without step_size": (lambda lib: lib.odeint_event(
        _decay, _y0(), torch.tensor(0.0), event_fn=lambda t, y: y[0] - 0.5, method="euler"), ValueError),
    "adjoint of a plain function": (lambda lib: lib.odeint_adjoint(_decay, _y0(), T), ValueError),
    "adjoint_method differs, no adjoint_options": (lambda lib: lib.odeint_adjoint(
        Decay(torch.float32), _y0(), T, adjoint_method="bosh3", options=dict(first_step=0.1)), ValueError),
    "odeint_dense of a tuple state": (lambda lib: lib.odeint_dense(_decay_pair, _pair(), torch.tensor(0.0),
                                                                  torch.tensor(1.0)), TypeError),
}


def _raised(call, lib):
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is what is compared
        call(lib)
    return info.value


@pytest.mark.parametrize("name", sorted(CASES))
def test_odekern_raises_what_torchdiffeq_raises(name):
    call, own_type = CASES[name]
    theirs = _raised(call, torchdiffeq)
    ours = _raised(call, odekern)
    assert isinstance(ours, type(theirs)), (
        f"torchdiffeq raises {type(theirs).__name__}, odekern {type(ours).__name__}: {ours}")
    assert isinstance(ours, own_type), f"odekern raises {type(ours).__name__}, not a {own_type.__name__}: {ours}"


def test_failed_solves_are_solve_errors_and_name_the_time():
    with pytest.raises(SolveError, match=r"max_num_steps=50 exceeded .* reached t="):
        odekern.odeint(_stiff, _y0(), torch.tensor([0.0, 2.0]), options=dict(max_num_steps=50))
    with pytest.raises(SolveError, match=r"step size underflow at t=1"):
        odekern.odeint(_blow_up, _y0(), torch.tensor([0.0, 2.0]))
    with pytest.raises(NonFiniteError, match=r"non-finite .* after t=0.5"):
        odekern.odeint(_nan_after_half, _y0(), torch.tensor([0.0, 2.0]))
    # RuntimeError, the type these had before, still catches them all.
    assert issubclass(SolveError, RuntimeError) and issubclass(NonFiniteError, SolveError)


def test_a_returned_partial_solution_raises_nothing():
    # on_max_steps="return" is odekern's way to keep going; the type change leaves it alone.
    solution, status = odekern.odeint(_stiff, _y0(), torch.tensor([0.0, 2.0]),
                                      options=dict(max_num_steps=50, on_max_steps="return"))
    assert not status.success and solution.shape == (2, 1) and bool(torch.isfinite(solution).all())
