"""ODEBlock: any order (continuous-unet Eq. 1 / Proposition 1), gradient modes, validation.

References: a first-order system [x, x', ...]' = [x', ..., func] built by hand and solved with
torchdiffeq.odeint (same weights), closed-form solutions of x'' = -x, and gradcheck in float64.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torchdiffeq
from torch import nn

from odekern import ODEBlock
from odekern.nn.ode_block import GRADIENT_MODES
from odekern.testing import assert_adaptive_accuracy_ok, assert_close, randn

F64 = torch.float64
C = 3  # channels of x


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


class FirstOrder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)

    def forward(self, t, x):
        return torch.tanh(self.conv(x)) * (1 + t)


class Accel(nn.Module):
    """x'' = f(t, x, x'): the shape of continuous-unet's dynamic block (conv on [x, x'])."""

    def __init__(self, order: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(order * C, C, 3, padding=1)

    def forward(self, t, *derivatives):
        return torch.tanh(self.conv(torch.cat(derivatives, dim=1))) - 0.3 * derivatives[0]


def hand_built_system(accel: nn.Module, order: int):
    """The first-order system of Proposition 1, written out independently of ODEBlock."""

    def rhs(t, z):
        parts = [z[:, i * C : (i + 1) * C] for i in range(order)]
        return torch.cat(parts[1:] + [accel(t, *parts)], dim=1)

    return rhs


def _x(seed=0, dtype=torch.float32, shape=(2, C, 5, 7)):
    return randn(*shape, dtype=dtype, seed=seed, requires_grad=True)


SOLVERS = {
    "rk4": {"method": "rk4", "step_size": 0.25},
    "dopri5": {"method": "dopri5"},
}


def _reference_kwargs(cfg):
    method = cfg["method"]
    options = {"step_size": cfg["step_size"]} if "step_size" in cfg else None
    return {"method": method, "options": options}


# --------------------------------------------------------------------------- against torchdiffeq


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_order1_matches_torchdiffeq(solver):
    func = FirstOrder()
    block = ODEBlock(func, **SOLVERS[solver])
    x = _x()
    out = block(x)
    ref = torchdiffeq.odeint(
        func, x, torch.tensor([0.0, 1.0]), **_reference_kwargs(SOLVERS[solver])
    )[-1]
    assert_close(out, ref, kind="cross")
    grads = torch.autograd.grad(out.square().sum(), (x, *func.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, *func.parameters()))
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, kind="cross")


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize(
    "with_velocity_init", [False, True], ids=["zero_velocity", "velocity_init"]
)
def test_order2_matches_hand_built_system(solver, with_velocity_init):
    accel = Accel()
    g = nn.Conv2d(C, C, 1) if with_velocity_init else None
    block = ODEBlock(accel, order=2, velocity_init=g, return_state=True, **SOLVERS[solver])
    x = _x(seed=1)
    state = block(x)

    v0 = g(x) if g is not None else torch.zeros_like(x)
    ref = torchdiffeq.odeint(
        hand_built_system(accel, 2),
        torch.cat([x, v0], dim=1),
        torch.tensor([0.0, 1.0]),
        **_reference_kwargs(SOLVERS[solver]),
    )[-1]
    assert state.shape == (2, 2 * C, 5, 7)
    assert_close(state, ref, kind="cross")

    wrt = (x, *accel.parameters()) + (tuple(g.parameters()) if g is not None else ())
    loss = lambda s: (s[:, :C] ** 2).sum() + s[:, C:].sum()
    for name, a, b in zip(
        range(len(wrt)), torch.autograd.grad(loss(state), wrt), torch.autograd.grad(loss(ref), wrt)
    ):
        assert_close(a, b, kind="cross", msg=f"gradient {name}")


def test_order2_returns_position_only_by_default():
    accel = Accel()
    x = _x(seed=2)
    full = ODEBlock(accel, order=2, return_state=True, step_size=0.5)(x)
    position = ODEBlock(accel, order=2, step_size=0.5)(x)
    assert position.shape == x.shape
    assert_close(position, full[:, :C], kind="rounding")


def test_order3_matches_hand_built_system():
    accel = Accel(order=3)
    x = _x(seed=3)
    init = nn.Conv2d(C, 2 * C, 1)  # x'(t0) and x''(t0), concatenated
    state = ODEBlock(accel, order=3, velocity_init=init, return_state=True, step_size=0.25)(x)
    ref = torchdiffeq.odeint(
        hand_built_system(accel, 3),
        torch.cat([x, init(x)], dim=1),
        torch.tensor([0.0, 1.0]),
        method="rk4",
        options={"step_size": 0.25},
    )[-1]
    assert_close(state, ref, kind="cross")


class Spring(nn.Module):
    """x'' = -k x, no parameters to learn except k."""

    def __init__(self, k: float):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, x, v):
        return -self.k * x


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_harmonic_oscillator_closed_form(gradient):
    """x'' = -k x, x'(0) = w x(0): x(T) = x0 (cos(sT) + w/s sin(sT)), s = sqrt(k); d/dk too."""
    k, w, T = 1.7, 0.4, 1.3
    spring = Spring(k)
    g = nn.Conv1d(1, 1, 1, bias=False).double()
    with torch.no_grad():
        g.weight.fill_(w)
    block = ODEBlock(
        spring,
        t=(0.0, T),
        method="dopri5",
        rtol=1e-10,
        atol=1e-12,
        order=2,
        velocity_init=g,
        gradient=gradient,
    )
    x0 = randn(2, 1, 4, dtype=F64, seed=4, requires_grad=True)
    out = block(x0)

    def exact(x0_, k_):
        s = torch.sqrt(k_)
        return x0_ * (torch.cos(s * T) + w / s * torch.sin(s * T))

    kk = torch.tensor(k, dtype=F64, requires_grad=True)
    ref = exact(x0, kk)
    assert_close(out, ref, kind="cross")
    got = torch.autograd.grad(out.sum(), (x0, spring.k))
    want = torch.autograd.grad(ref.sum(), (x0, kk))
    assert_close(got[0], want[0], kind="cross", msg="d/dx0")
    assert_close(got[1], want[1], kind="cross", msg="d/dk")


# --------------------------------------------------------------------------- gradient modes


@pytest.mark.parametrize("order", [1, 2])
def test_adjoint_mode_matches_backprop(order):
    torch.manual_seed(0)
    func = (Accel() if order == 2 else FirstOrder()).double()
    g = nn.Conv2d(C, C, 1).double() if order == 2 else None
    kwargs = {"order": order, "velocity_init": g, "method": "dopri5", "rtol": 1e-10, "atol": 1e-12}
    x = _x(seed=5, dtype=F64, shape=(1, C, 4, 5))
    outs, grads = [], []
    params = tuple(func.parameters()) + (tuple(g.parameters()) if g is not None else ())
    for gradient in ("backprop", "adjoint"):
        out = ODEBlock(func, gradient=gradient, **kwargs)(x)
        outs.append(out)
        grads.append(torch.autograd.grad((out**2).sum(), (x, *params)))
    assert_close(outs[1], outs[0], kind="rounding", msg="same forward solve")
    for i, (a, b) in enumerate(zip(*grads)):
        assert_close(a, b, kind="cross", msg=f"gradient {i}")


@pytest.mark.parametrize("gradient", sorted(GRADIENT_MODES))
def test_gradcheck_order2(gradient):
    torch.manual_seed(0)
    accel = Accel().double()
    g = nn.Conv2d(C, C, 1).double()
    block = ODEBlock(
        accel, order=2, velocity_init=g, method="rk4", step_size=0.1, gradient=gradient
    )
    x = _x(seed=6, dtype=F64, shape=(1, C, 3, 3))
    params = tuple(block.parameters())
    # rk4 at h=0.1: the continuous adjoint is within O(h^4) ~ 1e-5 of the discrete gradient.
    tol = {"atol": 1e-5, "rtol": 1e-3} if gradient == "adjoint" else {}
    assert torch.autograd.gradcheck(lambda x_, *p: block(x_), (x, *params), fast_mode=True, **tol)


def test_chained_blocks_equal_one_block():
    """Continuing from return_state via integrate_state = one solve over the joined interval."""
    accel = Accel()
    x = _x(seed=7)
    first = ODEBlock(accel, t=(0.0, 0.5), order=2, step_size=0.125, return_state=True)
    second = ODEBlock(accel, t=(0.5, 1.0), order=2, step_size=0.125, return_state=True)
    whole = ODEBlock(accel, t=(0.0, 1.0), order=2, step_size=0.125, return_state=True)
    assert_close(second.integrate_state(first(x)), whole(x), kind="rounding")


def test_intermediate_times_and_reverse_time():
    func = FirstOrder()
    x = _x(seed=8)
    t = torch.tensor([1.0, 0.6, 0.0])
    out = ODEBlock(func, t=t, method="dopri5")(x)
    ref = torchdiffeq.odeint(func, x, t, method="dopri5")[-1]
    assert_close(out, ref, kind="cross")


def test_backend_reference_matches_auto():
    func = FirstOrder()
    x = _x(seed=9)
    assert_close(
        ODEBlock(func, backend="reference", step_size=0.5)(x),
        ODEBlock(func, step_size=0.5)(x),
        kind="rounding",
    )


@pytest.mark.parametrize("gradient", sorted(GRADIENT_MODES))
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_every_backend_matches_reference(backend, gradient, method):
    """Forced backends (fused solver stages where registered) equal the reference core.

    float64: in float32 a last-bit difference in dopri5's error ratio shifts the adaptive steps
    enough (~4e-5 relative in the adjoint gradient) to exceed pure rounding tolerance."""
    accel = Accel().double()
    g = nn.Conv2d(C, C, 1).double()
    kwargs = {"order": 2, "velocity_init": g, "method": method, "gradient": gradient}
    if method == "rk4":
        kwargs["step_size"] = 0.25
    x = _x(seed=11, dtype=F64)
    results = []
    for name in (backend, "reference"):
        out = ODEBlock(accel, backend=name, **kwargs)(x)
        grads = torch.autograd.grad(out.square().sum(), (x, *accel.parameters(), *g.parameters()))
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert_close(out, ref, kind="rounding", msg=f"{backend} forward")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(a, b, kind="rounding", msg=f"{backend} gradient {i}")


def test_float64_module():
    block = ODEBlock(FirstOrder(), step_size=0.5).double()
    out = block(_x(dtype=F64))
    assert out.dtype == F64


def test_plain_function_rhs():
    x = _x(seed=10)
    out = ODEBlock(lambda t, x_: -x_, method="dopri5", rtol=1e-9, atol=1e-11)(x.double())
    assert_close(out, x.double() * math.exp(-1.0), kind="cross")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("order", [0, -1, 1.5, True])
def test_bad_order(order):
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        ODEBlock(Accel(), order=order)


def test_unknown_gradient_mode_lists_valid_ones():
    listed = re.escape(f"gradient must be one of {sorted(GRADIENT_MODES)}, got 'magic'")
    with pytest.raises(ValueError, match=listed):
        ODEBlock(FirstOrder(), gradient="magic")


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        ValueError, match="method 'rk5' is not a known solver; valid methods: .*'rk4'"
    ):
        ODEBlock(FirstOrder(), method="rk5")


def test_unknown_option_warns_as_torchdiffeq():
    with pytest.warns(UserWarning, match=r"RK4: Unexpected arguments \{'bogus': 1\}"):
        block = ODEBlock(FirstOrder(), options={"bogus": 1})
    assert "bogus" not in block.options


@pytest.mark.parametrize("step_size", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_bad_step_size(step_size):
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        ODEBlock(FirstOrder(), step_size=step_size)


def test_step_size_conflicting_with_options():
    with pytest.raises(ValueError, match="step_size=0.1 conflicts with options"):
        ODEBlock(FirstOrder(), step_size=0.1, options={"step_size": 0.2})


@pytest.mark.parametrize(
    "t, match",
    [
        ((1.0,), "t must hold at least 2 times"),
        ((0.0, 0.0), "t must be strictly increasing or strictly decreasing"),
        ((0.0, 1.0, 0.5), "t must be strictly increasing or strictly decreasing"),
        ((0.0, float("nan")), "t must be finite"),
        (torch.zeros(2, 2), "t must be 1-D"),
        ("ab", "t must be a 1-D sequence or tensor of times"),
    ],
)
def test_bad_t(t, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ODEBlock(FirstOrder(), t=t)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        ODEBlock(FirstOrder(), backend="gpu")


def test_adjoint_needs_module_func():
    with pytest.raises(ValueError, match="gradient='adjoint' needs func to be an nn.Module"):
        ODEBlock(lambda t, x: -x, gradient="adjoint")


def test_velocity_init_needs_order2():
    with pytest.raises(ValueError, match="velocity_init needs order >= 2"):
        ODEBlock(FirstOrder(), velocity_init=nn.Identity())


def test_velocity_init_wrong_shape():
    block = ODEBlock(
        Accel(order=3), order=3, velocity_init=nn.Identity()
    )  # gives C, needs 2*C channels
    with pytest.raises(
        ValueError, match=r"velocity_init\(x\) must return the 2 initial derivative"
    ):
        block(_x())


def test_x_without_channel_dim_for_higher_order():
    block = ODEBlock(Spring(1.0), order=2)
    with pytest.raises(ValueError, match="x must have a channel dimension"):
        block(torch.ones(4, dtype=F64))


def test_state_channels_not_divisible_by_order():
    block = ODEBlock(Accel(), order=2, return_state=True)
    with pytest.raises(ValueError, match=r"channels \(dim 1, 5\) must be divisible by order=2"):
        block.integrate_state(torch.ones(1, 5, 4, 4))


def test_integer_x():
    with pytest.raises(TypeError, match="^ODEBlock: x must be a floating point tensor"):
        ODEBlock(FirstOrder())(torch.ones(1, C, 4, 4, dtype=torch.int64))


def test_non_finite_x_is_named_as_the_blocks_input():
    x = torch.ones(1, C, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"^ODEBlock: x must be finite, but it contains NaN or inf"):
        ODEBlock(FirstOrder())(x)


def test_rhs_of_wrong_shape():
    class Wrong(nn.Module):
        def forward(self, t, x, v):
            return torch.cat([x, v], dim=1)

    with pytest.raises(RuntimeError, match=r"func must return x\^\(2\) shaped like x"):
        ODEBlock(Wrong(), order=2)(_x())


@pytest.mark.parametrize("method, kw", [("rk4", {"step_size": 0.25}), ("dopri5", {})])
@pytest.mark.parametrize("grad", [False, True])
def test_channels_last_input_keeps_its_memory_format(method, kw, grad):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    block = ODEBlock(lambda t, y: torch.tanh(conv(y)), method=method, **kw)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        out = block(x)
        expected = block(x.contiguous())
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected)


# Adaptive methods beyond dopri5 (tsit5 included), in an order-2 block: backprop and the adjoint
# give the same forward solve and gradients as accurate (against a tightly solved float64
# gradient) as each other, and so does the checkpoint mode, which refuses fehlberg2 and
# adaptive_heun (a step starts from a stage that is not the previous step's solution). The
# adjoint's backward solve ends on an interpolated output, and torchdiffeq's dense output for
# dopri8 and fehlberg2 passes through a low-order midpoint: their adjoint gradients carry that
# interpolation error (5e-5 here), far above the solve tolerance.
LOW_ORDER_DENSE_ADJOINT = pytest.mark.xfail(strict=True, reason="torchdiffeq's low-order dense output ends "
                                            "the adjoint's backward solve")
ADAPTIVE_BLOCK_TOL = {"adaptive_heun": {"rtol": 1e-5, "atol": 1e-7}}  # first-order error estimate


@pytest.mark.parametrize("gradient", sorted(GRADIENT_MODES))
@pytest.mark.parametrize("method", ["dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5"])
def test_other_adaptive_methods_in_every_gradient_mode(method, gradient, request):
    if gradient == "checkpoint" and method in ("fehlberg2", "adaptive_heun"):
        with pytest.raises(ValueError, match="cannot be replayed step by step"):
            ODEBlock(Accel(), method=method, gradient=gradient, order=2)
        return
    if gradient == "adjoint" and method in ("dopri8", "fehlberg2"):
        request.applymarker(LOW_ORDER_DENSE_ADJOINT)
    torch.manual_seed(0)
    accel = Accel().double()
    g = nn.Conv2d(C, C, 1).double()
    x = _x(seed=13, dtype=F64, shape=(1, C, 2, 3))
    tol = ADAPTIVE_BLOCK_TOL.get(method, {"rtol": 1e-7, "atol": 1e-9})
    kwargs = {"order": 2, "velocity_init": g, "options": {"step_t": [1.0]}}  # no interpolated forward output
    params = (x, *accel.parameters(), *g.parameters())
    results = []
    for m, mode, tl in ((method, "backprop", tol), (method, gradient, tol),
                        ("dopri5", "backprop", {"rtol": 1e-12, "atol": 1e-14})):
        out = ODEBlock(accel, method=m, gradient=mode, **tl, **kwargs)(x)
        results.append((out, torch.autograd.grad(out.square().sum(), params)))
    (ref, ref_grads), (out, grads), (_, exact) = results
    assert out.shape == x.shape
    assert_close(out, ref, kind="rounding", msg="same forward solve")
    for a, b, e in zip(grads, ref_grads, exact):
        assert_adaptive_accuracy_ok(a, b, e, **tol)
        assert_adaptive_accuracy_ok(b, a, e, **tol)


class Conditioned(nn.Module):
    """dx/dt = tanh(conv(x) + context) (1 + t), ``context`` a tensor set on the module before each
    solve by another module (not a parameter of this one)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1).to(F64)
        self.context = None

    def forward(self, t, x):
        return torch.tanh(self.conv(x) + self.context) * (1 + t)


@pytest.mark.parametrize("method,step_size", [("rk4", 0.25), ("dopri5", None)])
def test_adjoint_mode_trains_the_module_behind_a_conditioning_tensor(method, step_size):
    # The adjoint gave the module computing func.context no gradient (only func's parameters
    # were adjoint parameters), while backprop and checkpoint trained it. Reference: torchdiffeq's
    # odeint_adjoint told about the context explicitly.
    func, encoder = Conditioned(), nn.Conv2d(C, C, 1).to(F64)
    x = randn(2, C, 5, 5, dtype=F64, seed=21)
    t = torch.tensor([0.0, 0.5], dtype=F64)
    leaves = (encoder.weight, encoder.bias, *func.parameters())
    func.context = encoder(x).tanh()
    options = {} if step_size is None else {"step_size": step_size}
    ref = torchdiffeq.odeint_adjoint(func, x, t, method=method, options=options,
                                     adjoint_params=(*func.parameters(), func.context))[-1]
    ref_grads = torch.autograd.grad(ref.square().sum(), leaves)
    func.context = encoder(x).tanh()
    block = ODEBlock(func, t=(0.0, 0.5), method=method, step_size=step_size, gradient="adjoint")
    out = block(x)
    got_grads = torch.autograd.grad(out.square().sum(), leaves)
    assert_close(out, ref)
    for g, r in zip(got_grads, ref_grads):
        assert_close(g, r)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("checkpoints", [0, -1, 2.5, "8", None])
def test_checkpoints_is_checked_in_every_gradient_mode(gradient, checkpoints):
    # Unused outside "checkpoint", but a bad value would wait silently for the mode to change.
    class Decay(nn.Module):  # a module: the adjoint mode needs one
        def forward(self, t, y):
            return -y

    with pytest.raises(ValueError, match=r"^ODEBlock: checkpoints must be an int >= 1"):
        ODEBlock(Decay(), method="rk4", step_size=0.5, gradient=gradient, checkpoints=checkpoints)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_the_times_follow_the_buffer(method):
    """The block reads its ``t`` buffer again only when it has changed (on a GPU each read is a
    host sync): written in place, replaced, or moved to another dtype."""
    decay = lambda t, y: -y  # noqa: E731
    kwargs = {"method": method, **({"step_size": 0.125} if method == "rk4" else {})}
    block, x = ODEBlock(decay, **kwargs), torch.ones(3, dtype=torch.float64)

    def solved_to(end):
        return ODEBlock(decay, t=torch.tensor([0.0, end]), **kwargs)(x)

    assert torch.equal(block(x), solved_to(1.0))
    assert torch.equal(block(x), solved_to(1.0))
    block.t.copy_(torch.tensor([0.0, 2.0]))
    assert torch.equal(block(x), solved_to(2.0))
    block.t = torch.tensor([0.0, 0.5])
    assert torch.equal(block(x), solved_to(0.5))
    block.double()
    assert block.t.dtype == torch.float64 and torch.equal(block(x), solved_to(0.5))
    with torch.no_grad():
        block.t[-1] = 3.0
    assert torch.equal(block(x), solved_to(3.0))
