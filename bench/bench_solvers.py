"""odeint on a conv RHS: every runnable odekern backend vs torchdiffeq (and torchode for dopri5).

Problem: dy/dt = tanh(conv3x3(y)), y of shape (B=4, 32, 64, 64), float32, t from 0 to 1.
Methods: rk4 with 4 steps, dopri5 at rtol=1e-3, atol=1e-5 (loose, so a bench stays short).
Modes: fwd; fwd+bwd through backprop; fwd+bwd through the adjoint.

Ratios: the torchdiffeq case of each (method, mode) runs first; later providers record
``speedup_vs_torchdiffeq`` (torchdiffeq median / own median, > 1 means faster) in extra_info,
with the RHS evaluation count ``nfe`` so unequal step counts are visible, and ``peak_bytes``
(odekern.testing.PeakMemory: malloc bytes in use above the start, one untimed call).

    cd /work/main && python -m pytest bench/bench_solvers.py --benchmark-only -q
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchdiffeq
from torch import nn

import odekern
from odekern.dispatch import BACKEND_NAMES, availability, registered, use_backend
from odekern.ops.rk_stage.op import COMBINE
from odekern.testing import PeakMemory

SHAPE = (4, 32, 64, 64)
ROUNDS = 2  # + the untimed nfe-counting call, which doubles as warm-up: ~2 min in all
DOPRI5_TOL = {"rtol": 1e-3, "atol": 1e-5}
METHODS = {
    "rk4": {"method": "rk4", "options": {"step_size": 0.25}},
    "dopri5": dict(method="dopri5", **DOPRI5_TOL),
}
MODES = ("fwd", "fwd+bwd:backprop", "fwd+bwd:adjoint")

# A backend other than the reference changes odeint only through the fused solver-stage op;
# backends without a registered rk_combine kernel would just rerun the reference.
SOLVER_STAGE_OP = COMBINE

_medians: dict[tuple[str, str, str], float] = {}


class ConvRHS(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return torch.tanh(self.conv(y))


def _problem():
    torch.manual_seed(0)
    func = ConvRHS(SHAPE[1])
    with torch.no_grad():
        func.conv.weight.mul_(0.5)  # keeps dopri5's step count moderate and deterministic
    y0 = torch.randn(*SHAPE, requires_grad=True)
    return func, y0, torch.tensor([0.0, 1.0])


def _odekern_providers():
    """``odekern-<backend>`` for every backend; a param that cannot run carries its skip reason."""
    out = []
    avail = availability()
    for name in BACKEND_NAMES:
        reason = None
        if avail[name] is not True:
            reason = f"backend {name} unavailable: {avail[name]}"
        elif name != "reference" and name not in registered(SOLVER_STAGE_OP):
            reason = f"odeint has no {name} kernel of {SOLVER_STAGE_OP} (fused solver stages)"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(f"odekern-{name}", id=f"odekern-{name}", marks=marks))
    return out


PROVIDERS = [pytest.param("torchdiffeq", id="torchdiffeq")] + _odekern_providers()


def _runner(provider: str, method: str, mode: str, func, y0, t):
    kwargs = METHODS[method]
    adjoint = mode.endswith("adjoint")
    if provider == "torchdiffeq":
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
    else:
        solve = odekern.odeint_adjoint if adjoint else odekern.odeint
    backend = provider.split("-", 1)[1] if provider.startswith("odekern-") else None

    def run():
        y = y0 if mode != "fwd" else y0.detach()
        with use_backend(backend) if backend else contextlib.nullcontext():
            if mode == "fwd":
                with torch.no_grad():
                    return solve(func, y, t, **kwargs)[-1]
            out = solve(func, y, t, **kwargs)[-1]
            out.square().mean().backward()
            return out

    return run


def _untimed_call(run, func: ConvRHS) -> tuple[int, int | None]:
    """One call before timing (it doubles as warm-up): RHS evaluations and peak malloc bytes."""
    func.nfe = 0
    if not PeakMemory.available():
        run()
        return func.nfe, None
    with PeakMemory() as mem:
        mem.watch(func)
        run()
    nfe, func.nfe = func.nfe, 0
    return nfe, mem.peak_bytes


def _record_ratio(benchmark, key: tuple[str, str, str], provider: str) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    median = stats.stats.median
    _medians[key + (provider,)] = median
    baseline = _medians.get(key + ("torchdiffeq",))
    if provider != "torchdiffeq" and baseline is not None:
        benchmark.extra_info["speedup_vs_torchdiffeq"] = round(baseline / median, 3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("provider", PROVIDERS)
def test_odeint_conv(run_bench, benchmark, provider, method, mode):
    func, y0, t = _problem()
    run = _runner(provider, method, mode, func, y0, t)
    nfe, peak = _untimed_call(run, func)
    run_bench(
        run,
        provider=provider,
        rounds=ROUNDS,
        warmup_rounds=0,
        method=method,
        mode=mode,
        shape=list(SHAPE),
        nfe=nfe,
        peak_bytes=peak,
    )
    _record_ratio(benchmark, (method, mode, "conv"), provider)


# --------------------------------------------------------------------------- torchode (dopri5)


def _torchode_solver(func, y0):
    import torchode as to

    shape = y0.shape

    def flat_rhs(t, y):  # torchode states are (batch, features); t is per sample
        return func(t[0], y.view(shape)).reshape(shape[0], -1)

    term = to.ODETerm(flat_rhs)
    step = to.Dopri5(term=term)
    controller = to.IntegralController(term=term, **DOPRI5_TOL)
    return to.AutoDiffAdjoint(step, controller), to


@pytest.mark.parametrize("mode", MODES[:2])
def test_torchode_dopri5_conv(run_bench, benchmark, mode):
    pytest.importorskip("torchode", reason="torchode not installed")
    func, y0, _ = _problem()
    solver, to = _torchode_solver(func, y0)
    t_eval = torch.tensor([[0.0, 1.0]]).expand(SHAPE[0], 2)

    def run():
        y = y0 if mode != "fwd" else y0.detach()
        problem = to.InitialValueProblem(y0=y.reshape(SHAPE[0], -1), t_eval=t_eval)
        if mode == "fwd":
            with torch.no_grad():
                return solver.solve(problem).ys[:, -1]
        out = solver.solve(problem).ys[:, -1]
        out.square().mean().backward()
        return out

    nfe, peak = _untimed_call(run, func)
    # torchode steps every sample separately (its own controller): nfe counts batched calls.
    run_bench(
        run,
        provider="torchode",
        rounds=ROUNDS,
        warmup_rounds=0,
        method="dopri5",
        mode=mode,
        shape=list(SHAPE),
        nfe=nfe,
        peak_bytes=peak,
    )
    _record_ratio(benchmark, ("dopri5", mode, "conv"), "torchode")
