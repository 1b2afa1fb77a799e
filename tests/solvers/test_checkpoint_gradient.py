"""Gradient mode "checkpoint": exact discrete gradients (== backprop), gradcheck, memory flat in
the number of steps, ODEBlock integration, bad input."""

import contextlib

import pytest
import torch
from torch import nn
from solver_problems import assert_backprops

import odekern
from odekern import ODEBlock, odeint, testing
from odekern.solvers import checkpoint_schedule as schedule
from odekern.checkpoint import odeint_checkpointed
from odekern.dispatch import requested_backend


class ConvRHS(nn.Module):
    def __init__(self, channels=3, dtype=torch.float64):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1).to(dtype)

    def forward(self, t, y):
        return torch.tanh(self.conv(y)) * torch.cos(t) - 0.3 * y


@pytest.mark.parametrize("method", ["rk4", "midpoint", "euler"])
@pytest.mark.parametrize("checkpoints", [1, 3, 16])
def test_equals_backprop(method, checkpoints):
    func = ConvRHS()
    y0 = testing.randn(2, 3, 4, 5, dtype=torch.float64, seed=1, requires_grad=True)
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=torch.float64)
    opts = {"step_size": 0.1}
    leaves = (y0, *func.parameters())
    got = odeint_checkpointed(func, y0, t, checkpoints=checkpoints, method=method, options=opts)
    ref = odeint(func, y0, t, method=method, options=opts)
    assert_backprops(got, ref, leaves)


def test_reverse_time_and_repeated_output_times():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=torch.float64, seed=2, requires_grad=True)
    t = torch.tensor([1.0, 0.75, 0.25], dtype=torch.float64)
    leaves = (y0, *func.parameters())
    got = odeint_checkpointed(func, y0, t, checkpoints=2, method="rk4", options={"step_size": 0.25})
    ref = odeint(func, y0, t, method="rk4", options={"step_size": 0.25})
    assert_backprops(got, ref, leaves)


@pytest.mark.parametrize("case", ["rk4", "euler-decreasing", "midpoint-tuple", "heun3-float32", "rk4-perturb"])
def test_output_times_between_grid_points_equal_backprop(case):
    """An output time off the step grid is filled as odeint fills it, by linear interpolation of
    the grid states around it; values and gradients equal backprop's (they were refused)."""
    method, _, variant = case.partition("-")
    dtype = torch.float32 if variant == "float32" else torch.float64
    func = ConvRHS(dtype=dtype)
    t = torch.tensor([0.0, 0.33, 0.5, 0.61, 0.62, 1.0], dtype=dtype)
    if variant == "decreasing":
        t = 1.0 - t
    y0 = testing.randn(2, 3, 4, 5, dtype=dtype, seed=3, requires_grad=True)
    y0 = (y0, testing.randn(2, 3, 4, 5, dtype=dtype, seed=4, requires_grad=True)) if variant == "tuple" else y0
    if variant == "tuple":
        def rhs(t, y):
            return func(t, y[0]) + y[1], -y[0]
    else:
        rhs = func
    opts = {"step_size": 0.25, **({"perturb": True} if variant == "perturb" else {})}
    leaves = (*((y0,) if isinstance(y0, torch.Tensor) else y0), *func.parameters())
    got = odeint_checkpointed(rhs, y0, t, checkpoints=2, method=method, options=dict(opts))
    ref = odeint(rhs, y0, t, method=method, options=dict(opts))
    got, ref = (got, ref) if isinstance(got, tuple) else ((got,), (ref,))
    for a, b in zip(got, ref):
        testing.assert_close(a, b)
    weights = [testing.randn(*a.shape, dtype=dtype, seed=7 + k) for k, a in enumerate(got)]

    def gradient(solution):
        return torch.autograd.grad(sum((a * w).sum() for a, w in zip(solution, weights)), leaves)

    for g, r in zip(gradient(got), gradient(ref)):
        testing.assert_close(g, r)


@pytest.mark.parametrize("decreasing", [False, True])
def test_a_grid_constructor_gives_backprops_grid(decreasing):
    """options['grid_constructor'] (torchdiffeq's) builds the step grid, called as odeint calls
    it (with t as given, also when decreasing); it was refused."""
    calls = []

    def uneven(func, y0, t):
        calls.append(t.tolist())
        return torch.cat([t[:1], t[0] + (t[-1] - t[0]) * torch.tensor([0.1, 0.35, 0.5, 0.8]).to(t), t[-1:]])

    func = ConvRHS()
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    t = t.flip(0) if decreasing else t
    y0 = testing.randn(1, 3, 4, 4, dtype=torch.float64, seed=8, requires_grad=True)
    leaves = (y0, *func.parameters())
    got = odeint_checkpointed(func, y0, t, checkpoints=2, method="rk4", options={"grid_constructor": uneven})
    ref = odeint(func, y0, t, method="rk4", options={"grid_constructor": uneven})
    assert calls[0] == calls[1] == t.tolist()
    assert_backprops(got, ref, leaves)


def test_grid_options_are_checked_as_odeint_checks_them():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for options, error, match in [
        ({"step_size": float("inf")}, ValueError, r"options\['step_size'\] must be > 0 and finite"),
        ({"step_size": "0.1"}, TypeError, r"options\['step_size'\] must be a positive number"),
        ({"step_size": 0.1, "grid_constructor": lambda f, y, t: t}, ValueError, "mutually exclusive"),
        ({"grid_constructor": 3}, TypeError, "must be callable"),
        ({"grid_constructor": lambda f, y, t: t[:1]}, ValueError, "at least 2 times"),
    ]:
        for solve in (odeint, lambda *a, **k: odeint_checkpointed(*a, checkpoints=2, **k)):
            with pytest.raises(error, match=match):
                solve(func, y0, t, method="rk4", options=dict(options))


def test_output_times_between_grid_points_gradcheck():
    w = testing.randn(3, 3, dtype=torch.float64, seed=4, requires_grad=True)
    y0 = testing.randn(3, dtype=torch.float64, seed=5, requires_grad=True)
    t = torch.tensor([0.0, 0.1, 0.37, 0.5], dtype=torch.float64)

    def solve(y0, w):
        return odeint_checkpointed(lambda t, y: torch.tanh(w @ y), y0, t, checkpoints=2, method="rk4",
                                   options={"step_size": 0.125}, adjoint_params=(w,))

    assert torch.autograd.gradcheck(solve, (y0, w))


def test_ode_block_output_times_off_the_grid():
    """ODEBlock(t=(0, 0.3, 1), step_size=0.25): the intermediate time only shapes odeint's
    outputs; the checkpointed block gave an error where backprop's gave the answer."""
    func = ConvRHS()
    x = testing.randn(1, 3, 4, 4, dtype=torch.float64, seed=6, requires_grad=True)
    blocks = [ODEBlock(func, t=(0.0, 0.3, 1.0), method="rk4", step_size=0.25, gradient=g)
              for g in ("checkpoint", "backprop")]
    got, ref = (b(x) for b in blocks)
    assert_backprops(got, ref, (x, *func.parameters()))


def test_gradcheck_float64():
    func = ConvRHS(channels=1)
    params = tuple(func.parameters())
    y0 = testing.randn(1, 1, 3, 3, dtype=torch.float64, seed=3, requires_grad=True)
    t = torch.tensor([0.0, 0.4], dtype=torch.float64)

    def solve(y, *ps):
        return odeint_checkpointed(func, y, t, checkpoints=2, method="rk4", options={"step_size": 0.1},
                                   adjoint_params=ps)

    assert torch.autograd.gradcheck(solve, (y0, *params))


def _peak(mode, n_steps, checkpoints=4):
    """Exact peak of live tensor bytes over forward + backward (odekern.testing.LiveTensorBytes)."""
    func = ConvRHS(channels=4, dtype=torch.float32)
    y0 = testing.randn(1, 4, 16, 16, seed=4, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / n_steps}
    with testing.LiveTensorBytes() as live:
        if mode == "checkpoint":
            out = odeint_checkpointed(func, y0, t, checkpoints=checkpoints, method="rk4", options=opts)
        else:
            out = odeint(func, y0, t, method="rk4", options=opts)
        out[-1].square().sum().backward()
        del out
    return live.peak_bytes / (y0.numel() * y0.element_size())  # in states


def test_live_tensor_bytes_measure():
    """The measure the memory test relies on: peak of simultaneously live storages, views once."""
    x = torch.ones(1000)  # created outside: not counted
    with testing.LiveTensorBytes() as live:
        a = x * 2  # 4000 B
        b = a[::2] + 1  # 2000 B, a still alive: 6000
        del a
        c = b.view(2, 250) * 3  # 2000 B, a freed: 4000
        d = c.view(-1)  # a view: no new storage
    assert live.peak_bytes == 6000, live.peak_bytes
    assert d.numel() == 500


def test_memory_flat_in_steps_while_backprop_grows():
    ck4, ck16, ck64 = _peak("checkpoint", 4), _peak("checkpoint", 16), _peak("checkpoint", 64)
    bp4, bp16 = _peak("backprop", 4), _peak("backprop", 16)
    assert bp16 > 3 * bp4, (bp4, bp16)  # backprop keeps every step's graph
    # With 4 checkpoints the 4-step solve stores every state once; longer solves hold as many
    # stored states plus what reversing a recomputed step holds (2.0-2.1 states measured at 16
    # and at 64 steps), and from there on more steps add nothing.
    assert ck64 <= ck4 + 2.5, (ck4, ck64)
    assert ck64 <= 1.01 * ck16, (ck16, ck64)
    assert ck64 < bp16 / 2
    # Absolute: 4 stored states + one recorded RK4 step (with its backward) + the solution, its
    # gradient and the adjoint; a schedule that kept an old adjoint or graph per level would not fit.
    assert ck64 <= 26, ck64


class CountingRHS(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return -self.weight * y + torch.sin(t)


@pytest.mark.parametrize("n_steps,checkpoints", [(4, 4), (5, 4), (16, 2), (16, 4), (37, 3), (12, 1)])
def test_recomputation_follows_the_binomial_schedule(n_steps, checkpoints):
    """RHS calls = 4 per step for: the forward solve, the recomputation the schedule prescribes
    minus the states the forward pass already stored, and one recorded step per reversed step."""
    func = CountingRHS()
    y0 = testing.randn(3, dtype=torch.float64, seed=6, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    opts = {"step_size": 1.0 / n_steps}
    out = odeint_checkpointed(func, y0, t, checkpoints=checkpoints, method="rk4", options=opts)
    assert func.calls == 4 * n_steps
    func.calls = 0
    got = torch.autograd.grad(out[-1].sum(), (y0, func.weight))
    first = schedule.first_sweep(n_steps, checkpoints)
    recomputed = schedule.recomputed_steps(n_steps, checkpoints) - (first[-1] if first else 0)
    assert func.calls == 4 * (recomputed + n_steps)
    ref = torch.autograd.grad(odeint(func, y0, t, method="rk4", options=opts)[-1].sum(), (y0, func.weight))
    for g, r in zip(got, ref):
        testing.assert_close(g, r)


def test_ode_block_checkpoint_mode_matches_backprop():
    torch.manual_seed(0)
    func = ConvRHS()
    x = testing.randn(2, 3, 4, 4, dtype=torch.float64, seed=5, requires_grad=True)
    ref_block = ODEBlock(func, method="rk4", step_size=0.125, gradient="backprop")
    ck_block = ODEBlock(func, method="rk4", step_size=0.125, gradient="checkpoint", checkpoints=3)
    leaves = (x, *func.parameters())
    got, ref = ck_block(x), ref_block(x)
    assert_backprops(got, ref, leaves)


def test_bad_input():
    func = ConvRHS()
    y0 = testing.randn(1, 3, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="checkpoints must be an int >= 1"):
            odeint_checkpointed(func, y0, t, checkpoints=bad, method="rk4")
        with pytest.raises(ValueError, match="checkpoints must be an int >= 1"):
            ODEBlock(func, method="rk4", gradient="checkpoint", checkpoints=bad)
    with pytest.raises(ValueError, match="method must be one of"):
        odeint_checkpointed(func, y0, t, checkpoints=2, method="implicit_adams")
    with pytest.raises(ValueError, match="method must be one of"):
        ODEBlock(func, method="implicit_adams", gradient="checkpoint")
    for grad_mode in (torch.enable_grad, torch.no_grad):
        with grad_mode(), pytest.raises(ValueError, match="'cubic' needs every output time on the step grid"):
            odeint_checkpointed(func, y0, torch.tensor([0.0, 0.33, 1.0], dtype=torch.float64), checkpoints=2,
                                method="rk4", options={"step_size": 0.25, "interp": "cubic"})
    with pytest.raises(ValueError, match=r"options\['interp'\] must be 'linear' or 'cubic', got 'spline'"):
        odeint_checkpointed(func, y0, t, checkpoints=2, method="rk4", options={"interp": "spline"})
    with pytest.raises(ValueError, match="shape"):
        odeint_checkpointed(lambda t, y: y[..., :1], y0, t, checkpoints=2, method="rk4")


@pytest.mark.parametrize("requires_grad", [True, False])
def test_nan_mid_solve_names_the_time(requires_grad):
    def blows_up(t, y):
        return torch.where(t > 0.45, torch.full_like(y, float("nan")), -y)

    # rk4 (3/8 rule) evaluates at t0 + h/3 and t0 + 2h/3: the step from 0.4 is the first to see t > 0.45.
    with pytest.raises(odekern.solvers.NonFiniteError, match=r"after t=0\.4: the step to t=0\.5 produced NaN/inf"):
        odeint_checkpointed(blows_up, torch.ones(3, dtype=torch.float64, requires_grad=requires_grad),
                            torch.tensor([0.0, 1.0], dtype=torch.float64),
                            checkpoints=2, method="rk4", options={"step_size": 0.1})


def test_nan_from_a_func_that_does_not_repeat_itself_names_the_segment():
    # Only the result of a run of steps is checked; the repeat that names the step sees no NaN here.
    calls = []

    def nan_once(t, y):
        calls.append(float(t))
        return torch.full_like(y, float("nan")) if len(calls) == 6 else -y

    with pytest.raises(odekern.solvers.NonFiniteError,
                       match=r"the solution at t=[0-9.]+ is not finite \(a repeat of the steps checking each one"):
        odeint_checkpointed(nan_once, torch.ones(3, dtype=torch.float64, requires_grad=True),
                            torch.tensor([0.0, 1.0], dtype=torch.float64),
                            checkpoints=2, method="rk4", options={"step_size": 0.1})


@pytest.mark.parametrize("how", ["no_grad", "no input requires grad"])
def test_nothing_to_differentiate_solves_as_odeint(how, monkeypatch):
    """Inference through a checkpointed block prepares no backward pass (no stored states or
    generator states, no autograd.Function): the solve is odeint's, with its reused buffers."""
    func = ConvRHS()
    func.requires_grad_(how != "no input requires grad")
    x = testing.randn(2, 3, 4, 4, dtype=torch.float64, seed=9)
    block = ODEBlock(func, t=(0.0, 0.3, 1.0), method="rk4", step_size=0.125, gradient="checkpoint")
    with torch.no_grad():
        want = ODEBlock(func, t=(0.0, 0.3, 1.0), method="rk4", step_size=0.125)(x)

    def unexpected(*args):
        raise AssertionError("the checkpointed Function ran with nothing to differentiate")

    monkeypatch.setattr(odekern.checkpoint._CheckpointedSolve, "apply", unexpected)
    with torch.no_grad() if how == "no_grad" else contextlib.nullcontext():
        got = block(x)
    assert torch.equal(got, want)
    assert not got.requires_grad


def test_nothing_to_differentiate_builds_the_grid_once():
    """odeint builds the grid of a solve with nothing to differentiate: a grid_constructor is
    called once, as by odeint, not once more by the checkpointed mode before it."""
    calls = []

    def halves(func, y0, t):
        calls.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 5, dtype=t.dtype)

    y0 = testing.randn(3, dtype=torch.float64, seed=10)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        got = odeint_checkpointed(lambda t, y: -y, y0, t, checkpoints=2, method="rk4",
                                  options={"grid_constructor": halves})
    assert calls == [[0.0, 1.0]]
    testing.assert_close(got, odeint(lambda t, y: -y, y0, t, method="rk4", options={"grid_constructor": halves}))


class Conditioned(nn.Module):
    """An RHS conditioned on a tensor another module computes, set as a plain attribute before
    each solve (a common pattern: the conditioning is not a parameter of the RHS)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3).to(torch.float64)
        self.context = None

    def forward(self, t, y):
        return torch.tanh(self.lin(y) + self.context) * torch.cos(t)


# Read by name inside an RHS function below: a module-level tensor, neither parameter nor closure.
GLOBAL_RATE = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)


def _global_rate_rhs(t, y):
    return -GLOBAL_RATE * y


def _block_grads(gradient, func, leaves, make_input):
    for leaf in leaves:
        leaf.grad = None
    block = ODEBlock(func, method="rk4", step_size=0.125, gradient=gradient, checkpoints=2)
    out = block(make_input())
    (out * testing.randn(*out.shape, dtype=out.dtype, seed=98)).sum().backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def _assert_checkpoint_equals_backprop(func, leaves, make_input):
    ref, ref_grads = _block_grads("backprop", func, leaves, make_input)
    got, got_grads = _block_grads("checkpoint", func, leaves, make_input)
    testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads):
        assert r is not None and g is not None
        testing.assert_close(g, r)


def test_a_tensor_attribute_computed_by_another_module_gets_backprops_gradient():
    # The encoder's gradient flows through the RHS's context tensor; leaving that tensor out of
    # the differentiated inputs gave the encoder no gradient at all, without a word.
    func = Conditioned()
    encoder = nn.Linear(3, 3).to(torch.float64)
    x = testing.randn(4, 3, dtype=torch.float64, seed=11)

    def make_input():
        func.context = encoder(x).exp()
        return x

    _assert_checkpoint_equals_backprop(func, [encoder.weight, encoder.bias, *func.lin.parameters()], make_input)


def test_closure_and_global_tensors_get_backprops_gradient():
    scale = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    x = testing.randn(4, 3, dtype=torch.float64, seed=12)  # does not require grad: only the tensors do
    _assert_checkpoint_equals_backprop(lambda t, y: -y * scale, [scale], lambda: x)
    _assert_checkpoint_equals_backprop(_global_rate_rhs, [GLOBAL_RATE], lambda: x)


def test_explicit_adjoint_params_leaving_a_reachable_tensor_out_warn_and_are_respected():
    func = Conditioned()
    func.context = testing.randn(4, 3, dtype=torch.float64, seed=13, requires_grad=True)
    y0 = testing.randn(4, 3, dtype=torch.float64, seed=14)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"odeint_checkpointed: func\.context \(a tensor of shape \(4, 3\)\) .*"
                                         r"gradient mode 'checkpoint' gives it no gradient"):
        out = odeint_checkpointed(func, y0, t, checkpoints=2, method="rk4", options={"step_size": 0.25},
                                  adjoint_params=tuple(func.parameters()))
    out[-1].sum().backward()
    assert func.context.grad is None and func.lin.weight.grad is not None


def test_a_tensor_listed_twice_in_adjoint_params_gets_its_gradient_once():
    func = Conditioned()
    func.context = testing.randn(4, 3, dtype=torch.float64, seed=15)
    y0 = testing.randn(4, 3, dtype=torch.float64, seed=16)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    params = tuple(func.parameters())
    kw = {"method": "rk4", "options": {"step_size": 0.25}}
    twice = torch.autograd.grad(
        odeint_checkpointed(func, y0, t, checkpoints=2, adjoint_params=params + params, **kw)[-1].sum(), params)
    backprop = torch.autograd.grad(odeint(func, y0, t, **kw)[-1].sum(), params)
    for a, b in zip(twice, backprop):
        testing.assert_close(a, b)


def test_an_adjoint_param_that_is_not_a_tensor_is_named():
    # It was dropped without a word; odeint_adjoint names it, and so does the checkpointed solve.
    func = Conditioned()
    func.context = testing.randn(4, 3, dtype=torch.float64, seed=17)
    y0 = testing.randn(4, 3, dtype=torch.float64, seed=18)
    with pytest.raises(TypeError, match=r"odeint_checkpointed: adjoint_params\[1\] must be a torch.Tensor, got str"):
        odeint_checkpointed(func, y0, torch.tensor([0.0, 0.5], dtype=torch.float64), checkpoints=2, method="rk4",
                            options={"step_size": 0.25}, adjoint_params=[func.lin.weight, "bias"])


class BackendRecorder(CountingRHS):
    """Records the backend in force at every RHS call."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, t, y):
        self.seen.append(requested_backend())
        return super().forward(t, y)


def test_backward_keeps_the_forced_backend():
    """backward() runs after the use_backend block exits; its replays and recorded steps must
    still run on the backend the forward was forced to (which ODEBlock(backend=...) relies on)."""
    func = BackendRecorder()
    y0 = testing.randn(3, dtype=torch.float64, seed=6, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with odekern.use_backend("reference"):
        out = odeint_checkpointed(func, y0, t, checkpoints=2, method="rk4", options={"step_size": 0.125})
    func.seen.clear()
    torch.autograd.grad(out[-1].sum(), (y0, func.weight))
    assert func.seen and set(func.seen) == {"reference"}, func.seen


@pytest.mark.parametrize("checkpoints", [1, 2, 3, 20])
def test_a_random_rhs_gets_backprops_gradient(checkpoints):
    """Dropout in func draws new masks at every call: the backward pass's recomputed and recorded
    steps must draw the forward's again (else the gradient is another trajectory's, ~0.9 off
    here), and leave the caller's generator where backprop leaves it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Dropout(0.3), nn.Tanh(), nn.Linear(12, 6)).double().train()
    y0 = testing.randn(4, 6, dtype=torch.float64, seed=9, requires_grad=True)
    leaves = (y0, *net.parameters())

    def solve_and_grads(gradient, **extra):
        torch.manual_seed(1)
        block = ODEBlock(lambda t, y: net(y), method="rk4", step_size=0.1, gradient=gradient, **extra)
        out = block(y0)
        grads = torch.autograd.grad(out.square().sum(), leaves)
        return out, grads, torch.rand(3)

    out, grads, after = solve_and_grads("checkpoint", checkpoints=checkpoints)
    ref_out, ref_grads, ref_after = solve_and_grads("backprop")
    testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        testing.assert_close(g, r)
    assert torch.equal(after, ref_after)


def test_batchnorm_statistics_end_as_backprop_leaves_them():
    """The backward pass runs func again; a BatchNorm in training mode must not count those
    calls (24 extra updates of its running statistics here), and the gradient is backprop's."""

    def run(gradient, **extra):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)).double().train()
        y0 = testing.randn(2, 3, 5, 5, dtype=torch.float64, seed=4, requires_grad=True)
        block = ODEBlock(lambda t, y: net(y), method="rk4", step_size=0.25, gradient=gradient, **extra)
        grads = torch.autograd.grad(block(y0).square().sum(), (y0, *net.parameters()))
        return grads, dict(net[1].named_buffers())

    grads, buffers = run("checkpoint", checkpoints=2)
    ref_grads, ref_buffers = run("backprop")
    assert int(buffers["num_batches_tracked"]) == int(ref_buffers["num_batches_tracked"]) == 16
    for name in ("running_mean", "running_var"):
        testing.assert_close(buffers[name], ref_buffers[name])
    for g, r in zip(grads, ref_grads):
        testing.assert_close(g, r)


def test_a_parameter_changed_between_forward_and_backward_is_refused():
    """Backward would recompute the steps with the new values; autograd refuses it, as for backprop."""
    func = CountingRHS()
    y0 = testing.randn(3, dtype=torch.float64, seed=6, requires_grad=True)
    out = odeint_checkpointed(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), checkpoints=2,
                              method="rk4", options={"step_size": 0.25})
    with torch.no_grad():
        func.weight.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out[-1].sum().backward()

