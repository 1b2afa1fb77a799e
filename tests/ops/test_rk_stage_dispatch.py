"""rk_stage's solver route (odekern/ops/rk_stage/dispatch.py): size threshold, cached backend
decision, direct kernel call without autograd; values against the plain formulas."""

import contextlib

import pytest
import torch

import odekern
import odekern.dispatch
from odekern import testing
from odekern.ops.rk_stage import dispatch, op, reference
from odekern.solvers import stages


@pytest.fixture
def counted():
    """Counts calls of the registered rk_stage kernels (what the fused path runs)."""
    calls = {op.COMBINE: 0, op.ERROR_RATIO: 0}
    with contextlib.ExitStack() as stack:
        for which in calls:
            for name, entry in odekern.dispatch.registered(which).items():
                def fn(*a, _fn=entry.fn, _which=which):
                    calls[_which] += 1
                    return _fn(*a)

                stack.enter_context(odekern.dispatch.replaced(which, name, fn))
        yield calls


def _operands(n, requires_grad=False, dtype=torch.float64):
    y = testing.randn(n, dtype=dtype, seed=1, requires_grad=requires_grad)
    ks = [testing.randn(n, dtype=dtype, seed=2 + j, requires_grad=requires_grad) for j in range(3)]
    return y, ks


def _expected(y, ks, coeffs, scale):
    return reference.rk_combine(y.detach(), [k.detach() for k in ks], [scale * c for c in coeffs])


def _needs_cpu():
    if odekern.backends()["cpu"] is not True:
        pytest.skip(f"backend cpu unavailable: {odekern.backends()['cpu']}")


@pytest.mark.parametrize("recording", [False, True])
def test_threshold_picks_pytorch_below_and_fused_above(counted, monkeypatch, recording):
    _needs_cpu()
    monkeypatch.setitem(dispatch.MIN_NUMEL, "grad" if recording else "no_grad", 100)
    coeffs = [0.5, -0.25, 0.125]
    for n, fused in ((99, False), (100, True), (257, True)):
        y, ks = _operands(n, requires_grad=recording)
        before = counted[op.COMBINE]
        with torch.set_grad_enabled(recording):
            got = stages.linear_combination(coeffs, ks, scale=0.3, base=y, out=torch.empty(n, dtype=y.dtype))
        assert (counted[op.COMBINE] > before) == fused, (n, fused)
        testing.assert_close(got.detach(), _expected(y, ks, coeffs, 0.3))
        if recording:  # both routes keep the gradient
            (gy, gk0) = torch.autograd.grad(got.sum(), (y, ks[0]))
            testing.assert_close(gy, torch.ones_like(gy))
            testing.assert_close(gk0, torch.full_like(gk0, 0.3 * 0.5))


def test_forced_backend_ignores_threshold(counted, monkeypatch):
    _needs_cpu()
    monkeypatch.setitem(dispatch.MIN_NUMEL, "no_grad", 10**9)
    y, ks = _operands(17)
    with torch.no_grad(), odekern.use_backend("cpu"):
        got = stages.linear_combination([1.0, 2.0, 3.0], ks, scale=0.1, base=y)
    assert counted[op.COMBINE] == 1
    testing.assert_close(got, _expected(y, ks, [1.0, 2.0, 3.0], 0.1))
    with torch.no_grad():
        stages.linear_combination([1.0, 2.0, 3.0], ks, scale=0.1, base=y)
    assert counted[op.COMBINE] == 1  # auto: below the threshold, plain PyTorch


def test_backend_decision_is_cached_per_device_and_dtype(monkeypatch):
    _needs_cpu()
    odekern.dispatch.clear_selection_cache()
    selections = []
    real_select = odekern.dispatch.select

    def select(*a, **kw):
        selections.append(kw["y"].dtype)
        return real_select(*a, **kw)

    monkeypatch.setattr(odekern.dispatch, "select", select)
    y, ks = _operands(8)
    for _ in range(3):
        assert dispatch.backend_for(op.COMBINE, y, ks).name == "cpu"
    assert selections == [torch.float64]
    y32, ks32 = _operands(8, dtype=torch.float32)
    assert dispatch.backend_for(op.COMBINE, y32, ks32).name == "cpu"
    assert selections == [torch.float64, torch.float32]
    # A forced reference backend is part of the key: no fused kernel for it.
    assert dispatch.backend_for(op.COMBINE, y, ks, forced="reference") is None
    # Mixed operand dtypes are not cached and take the full selection (which refuses them).
    assert dispatch.backend_for(op.COMBINE, y, [ks[0], ks32[1]]) is None
    assert len(selections) == 4


def test_no_grad_route_skips_the_custom_op(monkeypatch):
    _needs_cpu()

    def boom(*a, **kw):
        raise AssertionError("the eager no-grad route must call the kernel directly")

    monkeypatch.setattr(op, "rk_combine_out", boom)
    monkeypatch.setattr(op, "rk_error_ratio", boom)
    monkeypatch.setitem(dispatch.MIN_NUMEL, "no_grad", 0)
    y, ks = _operands(33)
    out = torch.empty_like(y)
    with torch.no_grad():
        got = dispatch.try_combine(y, ks, [0.1, 0.2, 0.3], out)
        ratio = dispatch.try_error_ratio(y, got, ks, [0.1, -0.2, 0.1], 1e-3, 1e-6)
    assert got is out
    testing.assert_close(got, reference.rk_combine(y, ks, [0.1, 0.2, 0.3]))
    testing.assert_close(ratio, reference.rk_error_ratio(y, got, ks, [0.1, -0.2, 0.1], 1e-3, 1e-6))
    assert ratio.dtype == torch.float64 and ratio.dim() == 0


def test_solver_results_identical_on_both_sides_of_the_threshold(monkeypatch):
    """A whole dopri5 solve with the fused route forced on (threshold 0) and off (threshold
    above the state) agrees within rounding."""
    _needs_cpu()
    y0 = testing.randn(2, 50, dtype=torch.float64, seed=9)
    t = torch.tensor([0.0, 0.7], dtype=torch.float64)

    def f(t, y):
        return torch.tanh(y.flip(-1)) - 0.3 * y

    results = []
    for limit in (0, 10**9):
        monkeypatch.setitem(dispatch.MIN_NUMEL, "no_grad", limit)
        with torch.no_grad():
            results.append(odekern.odeint(f, y0, t, method="dopri5", rtol=1e-7, atol=1e-9))
    testing.assert_close(results[0], results[1])


def test_solve_stages_decide_once_and_match_the_module_functions(counted, monkeypatch):
    """A solve's bound stages select the backend once, call the kernel once per combination
    without a further selection, and give the module function's values."""
    _needs_cpu()
    monkeypatch.setitem(dispatch.MIN_NUMEL, "no_grad", 0)
    odekern.dispatch.clear_selection_cache()
    selections = []
    real_select = odekern.dispatch.select
    monkeypatch.setattr(odekern.dispatch, "select", lambda *a, **kw: selections.append(1) or real_select(*a, **kw))
    y, ks = _operands(40)
    bound = stages.SolveStages(y)
    assert len(selections) == 1
    coeffs = [0.5, 0.0, -0.75]
    with torch.no_grad():
        for _ in range(3):
            out = torch.empty_like(y)
            got = bound.stage_state(y, 0.2, coeffs, ks, out=out)
            assert got is out
            testing.assert_close(got, stages.stage_state(y, 0.2, coeffs, ks))
    assert counted[op.COMBINE] == 3 + 3  # the bound calls and the module function's
    assert len(selections) == 1  # the selection cache answered the module function


@pytest.mark.parametrize("recording", [False, True])
def test_solve_stages_on_tuple_states_and_recorded_operands(recording):
    """Tuple states combine per component; recorded operands keep their gradients."""
    parts = [_operands(n, requires_grad=recording) for n in (1, 30)]
    y = tuple(p[0] for p in parts)
    ks = [tuple(p[1][j] for p in parts) for j in range(3)]
    bound = stages.SolveStages(y)
    out = tuple(torch.empty_like(c) for c in y)
    coeffs = [0.5, -0.25, 0.125]
    with torch.set_grad_enabled(recording):
        got = bound.linear_combination(coeffs, ks, scale=0.3, base=y, out=out)
    assert (got is out) == (not recording)
    for i, c in enumerate(got):
        testing.assert_close(c.detach(), _expected(y[i], [k[i] for k in ks], coeffs, 0.3))
    if recording:
        (g,) = torch.autograd.grad(sum(c.sum() for c in got), ks[1][1])
        testing.assert_close(g, torch.full_like(g, 0.3 * -0.25))


def test_solve_stages_keep_a_differentiable_step_differentiable():
    y, ks = _operands(12)
    dt = torch.tensor(0.3, dtype=y.dtype, requires_grad=True)
    got = stages.SolveStages(y).stage_state(y, dt, [2.0], ks[:1], out=torch.empty_like(y))
    (g,) = torch.autograd.grad(got.sum(), dt)
    testing.assert_close(g, 2.0 * ks[0].sum())


def test_solve_stages_take_the_backend_in_force_when_the_solve_starts(counted, monkeypatch):
    _needs_cpu()
    monkeypatch.setitem(dispatch.MIN_NUMEL, "no_grad", 10**9)
    y, ks = _operands(17)
    with odekern.use_backend("cpu"):
        bound = stages.SolveStages(y)
    with torch.no_grad():
        got = bound.add(y, ks[0], out=torch.empty_like(y))
    assert counted[op.COMBINE] == 1
    testing.assert_close(got, y + ks[0])
    with pytest.raises(RuntimeError, match="cuda"), odekern.use_backend("cuda"):
        stages.SolveStages(y)


def test_single_term_combinations_take_pytorch_unless_a_backend_is_forced(counted):
    """``base + c k`` is one torch op, cheaper than any kernel call (dispatch.MIN_TERMS): in
    automatic selection neither a solve's bound stages nor the module function call a kernel for
    it, while a forced backend still runs it; the values agree either way."""
    _needs_cpu()
    y, ks = _operands(64)
    want = y + 0.3 * 0.5 * ks[0]
    with torch.no_grad():
        for forced in (None, "cpu"):
            with odekern.use_backend(forced) if forced else contextlib.nullcontext():
                bound = stages.SolveStages(y)
                before = counted[op.COMBINE]
                got = [bound.stage_state(y, 0.3, [0.5], ks[:1], out=torch.empty_like(y)),
                       stages.stage_state(y, 0.3, [0.5], ks[:1], out=torch.empty_like(y))]
                # Two terms still go to the kernel in both modes.
                bound.stage_state(y, 0.3, [0.5, 0.25], ks[:2], out=torch.empty_like(y))
            calls = counted[op.COMBINE] - before
            assert calls == (3 if forced else 1), forced
            for g in got:
                testing.assert_close(g, want)


def test_solve_stages_with_grad_enabled_and_nothing_recorded_take_the_bound_kernel(counted, monkeypatch):
    """Grad enabled but no operand requiring grad (``odeint`` outside ``torch.no_grad`` on a
    ``func`` without parameters): no buffer is reused, yet each combination is the kernel bound
    when the solve started, into a fresh tensor, not the module route's per-call selection
    (which took a dopri5 solve on a small state from 3 to 10 ms)."""
    _needs_cpu()
    routed = []
    real = dispatch.try_combine
    monkeypatch.setattr(dispatch, "try_combine", lambda *a, **kw: routed.append(1) or real(*a, **kw))
    y, ks = _operands(40)
    bound = stages.SolveStages(y)
    coeffs = [0.5, 0.0, -0.75]
    assert torch.is_grad_enabled()
    got = bound.stage_state(y, 0.2, coeffs, ks)
    assert counted[op.COMBINE] == 1 and not routed
    testing.assert_close(got, _expected(y, ks, coeffs, 0.2))
