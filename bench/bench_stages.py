"""Fused solver stages on a conv-RHS block (issue 4): odekern vs torchdiffeq, same run.

    pytest bench/bench_stages.py --benchmark-only

Block: B=4, 32 channels, 128x128 (a 256x256 case with fewer rounds), RHS = conv3x3 + tanh.
- forward: odekern.odeint (fused rk_stage kernels) vs torchdiffeq.odeint, RK4 (4 steps) and
  Dopri5; extra_info["speedup_vs_torchdiffeq"] = t_torchdiffeq / t_odekern (target >= 1.6).
- fwd+bwd adjoint: odekern.odeint_adjoint vs torchdiffeq.odeint_adjoint (target >= 2.5).
- memory: peak bytes (odekern.testing.PeakMemory) of adjoint / checkpoint / backprop from 4 to
  64 RK4 steps on a smaller block; extra_info["growth_4_to_64"] (target <= 1.1 for adjoint and
  checkpoint, ~16 for backprop).
"""

import time

import pytest
import torch
from torch import nn

import odekern
from odekern import testing
from odekern.solvers.checkpoint import odeint_checkpointed

torchdiffeq = pytest.importorskip("torchdiffeq")


class ConvRHS(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.5)

    def forward(self, t, y):
        return torch.tanh(self.conv(y))


SIZES = {"128": (4, 32, 128, 128), "256": (4, 32, 256, 256)}
METHODS = {"rk4": ("rk4", {"step_size": 0.25}), "dopri5": ("dopri5", None)}
TOL = {"rtol": 1e-3, "atol": 1e-4}


def _problem(size):
    torch.manual_seed(0)
    shape = SIZES[size]
    return ConvRHS(shape[1]), torch.randn(*shape) * 0.5, torch.tensor([0.0, 1.0])


def _best_of(fn, rounds):
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("size", ["128", "256"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_forward(run_bench, benchmark, size, method):
    func, y0, t = _problem(size)
    name, options = METHODS[method]
    rounds = 3 if size == "128" else 1

    def ours():
        with torch.no_grad():
            return odekern.odeint(func, y0, t, method=name, options=options, **TOL)

    def theirs():
        with torch.no_grad():
            return torchdiffeq.odeint(func, y0, t, method=name, options=options, **TOL)

    t_theirs = _best_of(theirs, rounds)
    run_bench(ours, provider=f"odekern[{odekern.backends()['cpu'] is True and 'cpu' or 'reference'}]",
              rounds=rounds, size=size, method=method, mode="fwd")
    t_ours = benchmark.stats.stats.min
    benchmark.extra_info.update(torchdiffeq_s=t_theirs, speedup_vs_torchdiffeq=t_theirs / t_ours)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_fwd_bwd_adjoint(run_bench, benchmark, method):
    func, y0, t = _problem("128")
    name, options = METHODS[method]
    params = tuple(func.parameters())

    def ours():
        y = y0.clone().requires_grad_()
        out = odekern.odeint_adjoint(func, y, t, method=name, options=options, adjoint_params=params, **TOL)
        out[-1].square().mean().backward()

    def theirs():
        y = y0.clone().requires_grad_()
        out = torchdiffeq.odeint_adjoint(func, y, t, method=name, options=options, adjoint_params=params, **TOL)
        out[-1].square().mean().backward()

    t_theirs = _best_of(theirs, 2)
    run_bench(ours, provider="odekern.odeint_adjoint", rounds=2, size="128", method=method, mode="fwd+bwd")
    t_ours = benchmark.stats.stats.min
    benchmark.extra_info.update(torchdiffeq_adjoint_s=t_theirs, speedup_vs_torchdiffeq=t_theirs / t_ours)


def _peak_bytes(mode, n_steps):
    torch.manual_seed(0)
    func = ConvRHS(8)
    y0 = torch.randn(2, 8, 64, 64, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / n_steps}
    with testing.PeakMemory() as mem:
        mem.watch(func)
        if mode == "adjoint":
            out = odekern.odeint_adjoint(func, y0, t, method="rk4", options=opts)
        elif mode == "checkpoint":
            out = odeint_checkpointed(func, y0, t, checkpoints=4, method="rk4", options=opts)
        else:
            out = odekern.odeint(func, y0, t, method="rk4", options=opts)
        out[-1].square().sum().backward()
        del out
    return mem.peak_bytes


@pytest.mark.skipif(not testing.PeakMemory.available(), reason="needs glibc mallinfo2 to measure memory")
@pytest.mark.parametrize("mode", ["adjoint", "checkpoint", "backprop"])
def test_peak_memory_4_to_64_steps(run_bench, benchmark, mode):
    _peak_bytes(mode, 4)  # warm-up
    peaks = {n: _peak_bytes(mode, n) for n in (4, 16, 64)}
    run_bench(lambda: _peak_bytes(mode, 16), provider=f"odekern[{mode}]", rounds=1, warmup_rounds=0,
              mode=mode, size="2x8x64x64")
    benchmark.extra_info.update({f"peak_bytes_{n}_steps": v for n, v in peaks.items()})
    benchmark.extra_info["growth_4_to_64"] = peaks[64] / peaks[4]
