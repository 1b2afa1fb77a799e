"""nmode_solve under torch.func and forward-mode AD, and with time tensors that require grad.

Oracles: the inner-product identity <u, J v> = <J^T u, v> between forward mode (jvp, run by
the reference in plain torch ops) and reverse mode through the C++ kernels' own backward;
central finite differences in float64 ("cross" tolerances); a Python loop for vmap; the
closed form dy1/dt1 = f(y1) of the autonomous ODE for time gradients.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from nmode_backends import require_available

import odekern
from odekern.ops.nmode_solve import NmodeConfig, reference
from odekern.testing import assert_close, randn

F64 = torch.float64
RK4 = dict(method="rk4", step_size=0.1)
SETTINGS = [RK4, dict(method="dopri5"), dict(method="dopri5", control="per_element")]


def _inputs(seed=0):
    return randn(2, 3, 4, dtype=F64, seed=seed), randn(1, 3, 4, dtype=F64, seed=seed + 1)


def _vjp_through_backend(y0, g, v_y, v_g, u, backend, **kw):
    """<J^T u, v> with J^T u from the backend's own backward (no transform involved)."""
    y0 = y0.clone().requires_grad_()
    g = g.clone().requires_grad_()
    y1 = odekern.nmode_solve(y0, g, 0.0, 0.5, backend=backend, **kw)
    gy, gg = torch.autograd.grad(y1, (y0, g), u)
    return (gy * v_y).sum() + (gg * v_g).sum()


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda k: "-".join(map(str, k.values())))
def test_jvp_matches_reverse_mode(backend, kw):
    y0, g = _inputs()
    v_y, v_g, u = randn(*y0.shape, dtype=F64, seed=5), randn(*g.shape, dtype=F64, seed=6), randn(*y0.shape, dtype=F64, seed=7)
    solve = lambda y, gg: odekern.nmode_solve(y, gg, 0.0, 0.5, backend=backend, **kw)  # noqa: E731
    _, tangent = torch.func.jvp(solve, (y0, g), (v_y, v_g))
    assert tangent.abs().max() > 0.1  # a dropped tangent would be zero
    assert_close((u * tangent).sum(), _vjp_through_backend(y0, g, v_y, v_g, u, backend, **kw))


def test_forward_ad_dual_tensors_match_finite_differences():
    require_available("cpu")
    y0, g = _inputs(3)
    v = randn(*y0.shape, dtype=F64, seed=4)
    with fwAD.dual_level():
        out = odekern.nmode_solve(fwAD.make_dual(y0, v), g, 0.0, 0.5, backend="cpu", **RK4)
        tangent = fwAD.unpack_dual(out).tangent
    eps = 1e-6
    fd = (odekern.nmode_solve(y0 + eps * v, g, 0.0, 0.5, **RK4)
          - odekern.nmode_solve(y0 - eps * v, g, 0.0, 0.5, **RK4)) / (2 * eps)
    assert tangent is not None
    assert_close(tangent, fd, kind="cross")


@pytest.mark.parametrize("transform", ["grad", "jacrev", "jacfwd", "hessian"])
def test_func_transforms_agree_with_autograd(transform):
    require_available("cpu")
    y0, g = randn(5, dtype=F64, seed=8), randn(5, dtype=F64, seed=9)
    loss = lambda y: (odekern.nmode_solve(y, g, 0.0, 0.5, **RK4) ** 2).sum()  # noqa: E731
    result = getattr(torch.func, transform)(loss)(y0)
    y = y0.clone().requires_grad_()
    # Outside transforms the C++ backward has no double backward; the reference (plain autograd)
    # gives the second derivatives.
    cfg = NmodeConfig(**RK4)
    twice = lambda y: (reference.forward(y, g, 0.0, 0.5, cfg, False)[0] ** 2).sum()  # noqa: E731
    grad, = torch.autograd.grad((twice if transform == "hessian" else loss)(y), y,
                                create_graph=transform == "hessian")
    if transform == "hessian":
        expected = torch.stack([torch.autograd.grad(grad[i], y, retain_graph=True)[0] for i in range(5)])
        assert_close(result, expected)
    elif transform == "grad":
        assert_close(result, grad)
    else:  # the Jacobian of a scalar is the gradient
        assert_close(result.reshape(-1), grad)


def test_vmap_matches_a_loop_for_fixed_steps_and_refuses_adaptive():
    require_available("cpu")
    ys, g = randn(4, 3, dtype=F64, seed=10), randn(3, dtype=F64, seed=11)
    solve = lambda y: odekern.nmode_solve(y, g, 0.0, 0.5, **RK4)  # noqa: E731
    assert_close(torch.func.vmap(solve)(ys), torch.stack([solve(y) for y in ys]))
    with pytest.raises(ValueError, match="vmap"):
        torch.func.vmap(lambda y: odekern.nmode_solve(y, g, 0.0, 0.5))(ys)


@pytest.mark.parametrize("which", ["t0", "t1"])
@pytest.mark.parametrize("return_f", [False, True])
def test_time_gradients_are_those_of_the_exact_solution(which, return_f):
    require_available("cpu")
    y0, g = _inputs(12)
    times = {"t0": torch.tensor(0.1, dtype=F64, requires_grad=True),
             "t1": torch.tensor(0.6, dtype=F64, requires_grad=True)}
    out = odekern.nmode_solve(y0, g, times["t0"], times["t1"], rtol=1e-10, atol=1e-12, return_f=return_f)
    y1 = out[0] if return_f else out
    grad, = torch.autograd.grad(y1.sum(), times[which], retain_graph=True)
    sign = 1.0 if which == "t1" else -1.0
    assert_close(grad, sign * reference.rhs(y1.detach(), g).sum())
    if return_f:
        f1 = out[2]
        grad_f, = torch.autograd.grad(f1.sum(), times[which])
        rate = reference.rhs(y1.detach(), g)
        assert_close(grad_f, sign * ((torch.sin(2 * (y1.detach() + g)) - 1) * rate).sum())
    # Against central differences of the solve itself (the same ODE, not the formula).
    eps = 1e-6
    shifted = {k: float(v.detach()) for k, v in times.items()}
    plus, minus = dict(shifted), dict(shifted)
    plus[which] += eps
    minus[which] -= eps
    solve = lambda t: odekern.nmode_solve(y0, g, t["t0"], t["t1"], rtol=1e-12, atol=1e-14).sum()  # noqa: E731
    assert_close(grad, (solve(plus) - solve(minus)) / (2 * eps), kind="cross")


def test_channels_last_input_keeps_its_memory_format(backend):
    y0 = randn(2, 3, 5, 4, dtype=torch.float32, seed=13).contiguous(memory_format=torch.channels_last)
    g = randn(1, 3, 5, 4, dtype=torch.float32, seed=14)
    y1, f0, f1 = odekern.nmode_solve(y0, g, 0.0, 0.5, backend=backend, return_f=True)
    for out in (y1, f0, f1):
        assert out.shape == y0.shape
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(y1, odekern.nmode_solve(y0.contiguous(), g, 0.0, 0.5, backend=backend))
    # Gradients flow back through the permutation to both inputs.
    y0r, gr = y0.clone().requires_grad_(), g.clone().requires_grad_()
    odekern.nmode_solve(y0r, gr, 0.0, 0.5, backend=backend).sum().backward()
    y0c, gc = y0.contiguous().requires_grad_(), g.clone().requires_grad_()
    odekern.nmode_solve(y0c, gc, 0.0, 0.5, backend=backend).sum().backward()
    assert_close(y0r.grad, y0c.grad)
    assert_close(gr.grad, gc.grad)
