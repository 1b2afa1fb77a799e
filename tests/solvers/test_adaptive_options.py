"""What odekern adds to torchdiffeq's dopri5: per-sample step control, min/max step, and
max_num_steps either raising (with the time reached) or returning a partial solution + status."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq
from solver_problems import MLPODE, Counting

from odekern import odeint
from odekern.solvers import SolveStatus
from odekern.testing import assert_close

F64 = torch.float64


def cubic_decay(t, y):
    """dy/dt = -y^3: stiffness 3 y^2 depends on the sample's own magnitude.
    Exact: y(t) = y0 / sqrt(1 + 2 y0^2 t)."""
    return -y * y * y


def cubic_exact(y0, t):
    return y0 / torch.sqrt(1 + 2 * y0 * y0 * t)


def test_per_sample_matches_solving_each_sample_alone():
    y0 = torch.tensor([[0.5, -0.4], [3.0, 2.0], [20.0, -15.0]], dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0, 2.0], dtype=F64)
    y, status = odeint(cubic_decay, y0, t, rtol=1e-6, atol=1e-8,
                       options={"control": "per_sample", "on_max_steps": "return"})
    assert y.shape == (4, 3, 2) and isinstance(status, SolveStatus) and status.success
    assert len(status.per_sample) == 3
    for b in range(3):
        alone = odeint(cubic_decay, y0[b:b + 1], t, rtol=1e-6, atol=1e-8)
        assert_close(y[:, b:b + 1], alone)
    # The samples really were controlled separately: the stiffer the row, the more steps.
    steps = [s.n_steps for s in status.per_sample]
    assert steps[0] < steps[1] < steps[2], steps
    assert status.n_steps == sum(steps)


def test_per_sample_is_accurate_and_differentiable():
    y0 = torch.tensor([[0.5], [4.0]], dtype=F64, requires_grad=True)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    y = odeint(cubic_decay, y0, t, rtol=1e-9, atol=1e-11, options={"control": "per_sample"})
    exact = cubic_exact(y0.detach(), t[:, None, None])
    assert_close(y, exact, rtol=1e-7, atol=1e-9)
    (g,) = torch.autograd.grad(y[-1].sum(), y0)
    assert_close(g, (1 + 2 * y0.detach() ** 2 * 1.5) ** -1.5, rtol=1e-6, atol=1e-8)


def test_per_sample_reverse_time():
    # Backward from t=1 to t=0 with y' = -y^3: 1/y(0)^2 = 1/y(1)^2 - 2.
    y1 = torch.tensor([[0.3], [0.6]], dtype=F64)
    t = torch.tensor([1.0, 0.0], dtype=F64)
    y = odeint(cubic_decay, y1, t, rtol=1e-9, atol=1e-11, options={"control": "per_sample"})
    assert_close(y[-1], torch.sign(y1) / torch.sqrt(1 / (y1 * y1) - 2), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("opts", [{"max_step": 0.05}, {"min_step": 0.2, "first_step": 0.2},
                                  {"min_step": 1e-3, "max_step": 0.3}])
def test_min_max_step_match_torchdiffeq(opts):
    # torchdiffeq's dopri5 has min_step/max_step too (clamp; a step at min_step is always accepted).
    func = MLPODE(3)
    y0 = torch.linspace(-1, 1, 6, dtype=F64).reshape(2, 3)
    t = torch.tensor([0.0, 0.5, 1.5], dtype=F64)
    ours, theirs = Counting(func), Counting(func)
    with torch.no_grad():
        y = odeint(ours, y0, t, rtol=1e-10, atol=1e-12, options=opts)
        y_ref = torchdiffeq.odeint(theirs, y0, t, rtol=1e-10, atol=1e-12, method="dopri5", options=dict(opts))
    assert_close(y, y_ref, kind="cross")
    assert abs(ours.n - theirs.n) <= 6


def test_max_step_bounds_every_step_and_min_step_forces_acceptance():
    def rhs(t, y):
        return -y

    y0 = torch.ones(2, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    _, status = odeint(rhs, y0, t, rtol=1e-3, atol=1e-5, options={"max_step": 0.1, "on_max_steps": "return"})
    assert status.n_steps >= 10  # at least 1.0 / max_step accepted steps
    _, status = odeint(rhs, y0, t, rtol=1e-14, atol=1e-14, options={"min_step": 0.25, "on_max_steps": "return"})
    # Tolerance 1e-14 is unreachable at dt >= 0.25, but min_step forces every step through.
    assert status.n_rejected == 0 and status.n_steps <= 4


def test_max_num_steps_raises_with_time_reached_and_last_dt():
    with pytest.raises(RuntimeError, match=r"odeint\(method='dopri5'\): max_num_steps=5 exceeded while integrating "
                                           r"towards t=2; reached t=0\.\d+ with last dt=\d\.\d+e[-+]\d+ "
                                           r"\(\d+ accepted, \d+ rejected steps\)"):
        odeint(lambda t, y: -y * torch.cos(4 * t), torch.ones(3, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
               options={"max_num_steps": 5})


def test_max_num_steps_reverse_time_reports_user_time():
    with pytest.raises(RuntimeError, match=r"towards t=-2; reached t=-0\.\d+ with last dt="):
        odeint(lambda t, y: -y * torch.cos(4 * t), torch.ones(3, dtype=F64), torch.tensor([0.0, -2.0], dtype=F64),
               options={"max_num_steps": 5})


def test_max_num_steps_return_gives_partial_solution_and_status():
    func = lambda t, y: -y * torch.cos(4 * t)
    y0 = torch.ones(3, dtype=F64)
    t = torch.tensor([0.0, 0.05, 1.0, 2.0], dtype=F64)
    y, status = odeint(func, y0, t, options={"max_num_steps": 5, "on_max_steps": "return"})
    assert not status.success and "max_num_steps=5 exceeded" in status.message
    assert 0.05 < status.t_reached < 1.0 and status.n_outputs_reached == 2
    # Rows that were reached are the true solution; the rest repeat the state at t_reached.
    full = odeint(func, y0, t)
    assert_close(y[:2], full[:2])
    reached = odeint(func, y0, torch.tensor([0.0, status.t_reached], dtype=F64))[-1]
    assert_close(y[2], reached, kind="cross")
    assert torch.equal(y[2], y[3])
    # Without the stop, the same call returns (solution, status) with success.
    y_ok, ok = odeint(func, y0, t, options={"on_max_steps": "return"})
    assert ok.success and ok.n_outputs_reached == 4 and ok.t_reached == 2.0
    assert_close(y_ok, full)


def test_on_max_steps_return_with_tuple_state():
    y0 = (torch.ones(2, dtype=F64), torch.zeros(1, dtype=F64))
    (a, b), status = odeint(lambda t, s: (-s[0] * torch.cos(5 * t), s[0][:1]), y0,
                            torch.tensor([0.0, 3.0], dtype=F64), options={"max_num_steps": 3, "on_max_steps": "return"})
    assert a.shape == (2, 2) and b.shape == (2, 1) and not status.success
