"""Fused solver stages on a conv-RHS block: odekern vs torchdiffeq, same run.

    PYTHONPATH=$PWD python -m pytest bench/bench_stages.py --benchmark-only

Block: B=4, 32 channels, 128x128 (and 256x256 with fewer rounds), RHS = conv3x3 + tanh.

Timing: the providers of one row (odekern, torchdiffeq, the RHS-only baseline) run interleaved,
round after round, and each keeps its minimum (the machine is shared and noisy). pytest-benchmark's
own statistics are one extra run of odekern; the numbers to read are in ``extra_info``:

- ``odekern_s`` / ``torchdiffeq_s`` / ``rhs_only_s``: interleaved minima. ``rhs_only_s`` makes
  the same RHS calls as the solve, nothing else (fwd+bwd adjoint: the forward's RHS calls plus
  one RHS call and one vector-Jacobian product per RHS call of the backward solve): the floor no
  solver can beat, since the conv dominates.
- ``speedup_vs_torchdiffeq`` = torchdiffeq_s / odekern_s (targets: forward >= 1.6,
  fwd+bwd adjoint >= 2.5), and ``speedup_ceiling`` = torchdiffeq_s / rhs_only_s: the most any
  solver could reach against torchdiffeq on this RHS.
- ``overhead_odekern_s`` / ``overhead_torchdiffeq_s``: time outside the RHS (total - rhs_only)
  and ``overhead_ratio`` = torchdiffeq's / odekern's: what the fused stages actually change.
- ``nfe_odekern`` / ``nfe_torchdiffeq``: RHS calls of each solve (asserted equal: same steps).

Memory rows: adjoint / checkpoint / backprop at 4, 16 and 64 RK4 steps (2x8x64x64 state): exact
peak of live tensor bytes (odekern.testing.LiveTensorBytes, forward + backward) and malloc peak
sampled at RHS calls (odekern.testing.PeakMemory); ``growth_4_to_64`` of the exact peak (targets
<= 1.1 for adjoint and checkpoint; backprop grows linearly).

Dispatch crossover: stages.linear_combination (base + 3 k) with the fused kernels forced vs the
plain PyTorch path, without and with autograd: the measurement behind
``odekern.ops.rk_stage.dispatch.MIN_NUMEL``.
"""

import statistics
import time

import pytest
import torch
from torch import nn

import odekern
from odekern import testing
from odekern.solvers import stages
from odekern.checkpoint import odeint_checkpointed

torchdiffeq = pytest.importorskip("torchdiffeq")


class ConvRHS(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.mul_(0.5)
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(self.conv(y))


SIZES = {"128": (4, 32, 128, 128), "256": (4, 32, 256, 256)}
METHODS = {"rk4": ("rk4", {"step_size": 0.25}), "dopri5": ("dopri5", None)}
TOL = {"rtol": 1e-3, "atol": 1e-4}
# Rounds per provider: this host's speed drifts by tens of percent for seconds at a time, and
# the overheads compared here are a few tenths of the solve, so a minimum needs several rounds.
ROUNDS = {"128": 6, "256": 3}


def _problem(size):
    torch.manual_seed(0)
    shape = SIZES[size]
    return ConvRHS(shape[1]), torch.randn(*shape) * 0.5, torch.tensor([0.0, 1.0])


def interleaved_rounds(providers: dict, rounds: int) -> dict:
    """Each provider once as warm-up, then ``rounds`` rounds of all providers (rotating the order
    so none always runs right after another); every provider's time per round."""
    names = list(providers)
    for name in names:
        providers[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            providers[name]()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_minima(providers: dict, rounds: int) -> dict:
    """``interleaved_rounds``' minimum time per provider."""
    return {name: min(t) for name, t in interleaved_rounds(providers, rounds).items()}


def paired_ratio(times: dict, baseline: str, ours: str) -> float:
    """The median over rounds of baseline time / our time, each pair timed back to back in the
    same round: on a host whose speed drifts for seconds at a time (this VM's), two minima can
    come from different speeds, a ratio within one round cannot."""
    return statistics.median(b / a for a, b in zip(times[ours], times[baseline]))


def _count_calls(func, fn):
    func.calls = 0
    fn()
    return func.calls


def _record(benchmark, t, nfe_ours, nfe_theirs):
    ours, theirs, floor = t["odekern"], t["torchdiffeq"], t["rhs_only"]
    benchmark.extra_info.update(
        odekern_s=ours, torchdiffeq_s=theirs, rhs_only_s=floor,
        speedup_vs_torchdiffeq=theirs / ours, speedup_ceiling=theirs / floor,
        overhead_odekern_s=ours - floor, overhead_torchdiffeq_s=theirs - floor,
        overhead_ratio=(theirs - floor) / max(ours - floor, 1e-9),
        nfe_odekern=nfe_ours, nfe_torchdiffeq=nfe_theirs)


@pytest.mark.parametrize("size", ["128", "256"])
@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_forward(run_bench, benchmark, size, method):
    func, y0, t = _problem(size)
    name, options = METHODS[method]

    def ours():
        with torch.no_grad():
            return odekern.odeint(func, y0, t, method=name, options=options, **TOL)

    def theirs():
        with torch.no_grad():
            return torchdiffeq.odeint(func, y0, t, method=name, options=options, **TOL)

    nfe_ours, nfe_theirs = _count_calls(func, ours), _count_calls(func, theirs)
    assert nfe_ours == nfe_theirs, f"{method}: odekern made {nfe_ours} RHS calls, torchdiffeq {nfe_theirs}"
    t_rhs = t[0]

    def rhs_only():
        with torch.no_grad():
            for _ in range(nfe_ours):
                func(t_rhs, y0)

    times = interleaved_minima({"odekern": ours, "torchdiffeq": theirs, "rhs_only": rhs_only}, ROUNDS[size])
    run_bench(ours, provider=f"odekern[{'cpu' if odekern.backends()['cpu'] is True else 'reference'}]",
              rounds=1, warmup_rounds=0, size=size, method=method, mode="fwd")
    _record(benchmark, times, nfe_ours, nfe_theirs)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_fwd_bwd_adjoint(run_bench, benchmark, method):
    func, y0, t = _problem("128")
    name, options = METHODS[method]
    params = tuple(func.parameters())

    def run(lib):
        def go():
            y = y0.clone().requires_grad_()
            out = lib.odeint_adjoint(func, y, t, method=name, options=options, adjoint_params=params, **TOL)
            func.calls = 0  # from here on: the backward's RHS calls (one vjp each)
            out[-1].square().mean().backward()
            return func.calls
        return go

    ours, theirs = run(odekern), run(torchdiffeq)
    nfe = {}
    for lib, fn in (("odekern", ours), ("torchdiffeq", theirs)):
        func.calls = 0
        y = y0.clone().requires_grad_()
        with torch.no_grad():
            lib_mod = odekern if lib == "odekern" else torchdiffeq
            lib_mod.odeint(func, y, t, method=name, options=options, **TOL)
        nfe_fwd = func.calls
        nfe[lib] = (nfe_fwd, fn())
    assert nfe["odekern"] == nfe["torchdiffeq"], f"{method}: (forward, backward) RHS calls differ: {nfe}"
    nfe_fwd, nfe_bwd = nfe["odekern"]
    t_rhs = t[0]

    def rhs_only():
        with torch.no_grad():
            for _ in range(nfe_fwd):
                func(t_rhs, y0)
        for _ in range(nfe_bwd):
            with torch.enable_grad():
                y = y0.detach().requires_grad_()
                f = func(t_rhs, y)
                torch.autograd.grad(f, (y, *params), torch.ones_like(f))

    times = interleaved_minima({"odekern": ours, "torchdiffeq": theirs, "rhs_only": rhs_only}, ROUNDS["128"])
    run_bench(ours, provider="odekern.odeint_adjoint", rounds=1, warmup_rounds=0, size="128", method=method,
              mode="fwd+bwd")
    _record(benchmark, times, sum(nfe["odekern"]), sum(nfe["torchdiffeq"]))
    benchmark.extra_info.update(nfe_forward=nfe_fwd, nfe_backward_vjp=nfe_bwd)


def _memory(mode, n_steps):
    torch.manual_seed(0)
    func = ConvRHS(8)
    y0 = torch.randn(2, 8, 64, 64, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / n_steps}

    def solve_and_backward():
        if mode == "adjoint":
            out = odekern.odeint_adjoint(func, y0, t, method="rk4", options=opts)
        elif mode == "checkpoint":
            out = odeint_checkpointed(func, y0, t, checkpoints=4, method="rk4", options=opts)
        else:
            out = odekern.odeint(func, y0, t, method="rk4", options=opts)
        out[-1].square().sum().backward()

    with testing.LiveTensorBytes() as live:
        solve_and_backward()
    with testing.PeakMemory() as sampled:
        sampled.watch(func)
        solve_and_backward()
    return live.peak_bytes, sampled.peak_bytes


@pytest.mark.parametrize("mode", ["adjoint", "checkpoint", "backprop"])
def test_peak_memory_4_to_64_steps(run_bench, benchmark, mode):
    _memory(mode, 4)  # warm-up: one-time allocations of the first solve
    peaks = {n: _memory(mode, n) for n in (4, 16, 64)}
    run_bench(lambda: _memory(mode, 16), provider=f"odekern[{mode}]", rounds=1, warmup_rounds=0,
              mode=mode, size="2x8x64x64", checkpoints=4 if mode == "checkpoint" else None)
    state = 2 * 8 * 64 * 64 * 4
    for n, (live, sampled) in peaks.items():
        benchmark.extra_info[f"live_peak_states_{n}_steps"] = live / state
        benchmark.extra_info[f"malloc_peak_states_{n}_steps"] = sampled / state
    benchmark.extra_info["growth_4_to_64"] = peaks[64][0] / peaks[4][0]
    benchmark.extra_info["malloc_growth_4_to_64"] = peaks[64][1] / peaks[4][1]


@pytest.mark.parametrize("log2_numel", [8, 12, 14, 16, 17, 18, 20])
def test_dispatch_crossover(run_bench, benchmark, log2_numel):
    n = 1 << log2_numel
    y, ks = torch.randn(n), [torch.randn(n) for _ in range(3)]
    out = torch.empty(n)
    yg, ksg = y.clone().requires_grad_(), [k.clone().requires_grad_() for k in ks]
    coeffs = [0.1, 0.2, 0.3]
    calls = 20

    def combos(backend, grad):
        def go():
            with odekern.use_backend(backend), torch.set_grad_enabled(grad):
                for _ in range(calls):
                    if grad:
                        stages.linear_combination(coeffs, ksg, scale=0.5, base=yg, out=out)
                    else:
                        stages.linear_combination(coeffs, ks, scale=0.5, base=y, out=out)
        return go

    fused = "cpu" if odekern.backends()["cpu"] is True else "reference"
    times = interleaved_minima({"fused_no_grad": combos(fused, False), "torch_no_grad": combos("reference", False),
                                "fused_grad": combos(fused, True), "torch_grad": combos("reference", True)}, 5)
    run_bench(combos(fused, False), provider=f"stages.linear_combination[{fused}]", rounds=1, warmup_rounds=0,
              numel=n, mode="dispatch")
    benchmark.extra_info.update({f"{k}_us": v / calls * 1e6 for k, v in times.items()})
    benchmark.extra_info["fused_over_torch_no_grad"] = times["fused_no_grad"] / times["torch_no_grad"]
    benchmark.extra_info["fused_over_torch_grad"] = times["fused_grad"] / times["torch_grad"]


def markdown_tables(benchmarks: list) -> str:
    """README tables from pytest-benchmark's JSON (``--benchmark-json=FILE``), see ``__main__``."""
    speed = ["| case | method | odekern s | torchdiffeq s | RHS-only s | speedup | ceiling | "
             "overhead odekern s | overhead torchdiffeq s | overhead ratio | nfe (both) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    memory = ["| mode | exact peak, states: 4 / 16 / 64 steps | growth 4->64 | malloc peak (sampled): 4 / 16 / 64 | "
              "malloc growth |", "|---|---|---|---|---|"]
    dispatch = ["| elements | fused no-grad us | torch no-grad us | fused grad us | torch grad us |",
                "|---|---|---|---|---|"]
    for b in benchmarks:
        e = b["extra_info"]
        if "speedup_vs_torchdiffeq" in e:
            case = f"{e['mode']} {'4x32x' + e['size'] + 'x' + e['size']}"
            speed.append(f"| {case} | {e['method']} | {e['odekern_s']:.3f} | {e['torchdiffeq_s']:.3f} | "
                         f"{e['rhs_only_s']:.3f} | {e['speedup_vs_torchdiffeq']:.2f}x | {e['speedup_ceiling']:.2f}x | "
                         f"{e['overhead_odekern_s']:.3f} | {e['overhead_torchdiffeq_s']:.3f} | "
                         f"{e['overhead_ratio']:.2f}x | {e['nfe_odekern']} |")
        elif "growth_4_to_64" in e:
            live = " / ".join(f"{e[f'live_peak_states_{n}_steps']:.1f}" for n in (4, 16, 64))
            sampled = " / ".join(f"{e[f'malloc_peak_states_{n}_steps']:.1f}" for n in (4, 16, 64))
            memory.append(f"| {e['mode']} | {live} | {e['growth_4_to_64']:.2f}x | {sampled} | "
                          f"{e['malloc_growth_4_to_64']:.2f}x |")
        elif e.get("mode") == "dispatch":
            dispatch.append(f"| 2^{int(e['numel']).bit_length() - 1} | {e['fused_no_grad_us']:.0f} | "
                            f"{e['torch_no_grad_us']:.0f} | {e['fused_grad_us']:.0f} | {e['torch_grad_us']:.0f} |")
    return "\n\n".join("\n".join(t) for t in (speed, memory, dispatch) if len(t) > 2)


if __name__ == "__main__":
    # PYTHONPATH=$PWD python -m pytest bench/bench_stages.py --benchmark-only --benchmark-json=stages.json
    # python bench/bench_stages.py stages.json      -> the README tables
    import json
    import sys

    with open(sys.argv[1]) as f:
        print(markdown_tables(json.load(f)["benchmarks"]))
