"""Benchmarks of nmode_solve: ``pytest bench/ops/bench_nmode_solve.py --benchmark-only``.

The CNM-UNet setting (float32, [8, 3, 128, 128] unless NMODE_BENCH_SHAPE=B,C,H,W):
- "rk4": rk4, dt = 0.05 over [0, 1] (20 steps, 80 RHS evaluations), forward;
- "cnm": dopri5, rtol 1e-7, atol 1e-9, t in [0, 0.05] (CNM-UNet), forward and fwd+bwd
  (torchdiffeq with odeint_adjoint, as the CNM-UNet code does).
Providers: odekern (each available CPU backend), torchdiffeq, torchode (dopri5 forward only:
it has no rk4, and its adjoint is not a drop-in), and two floors: `floor-poly` runs our
polynomial cos in a register-resident C++ loop (no memory traffic) as many times per element
as the solve evaluates the RHS; `floor-torch.cos` does the same count with torch.cos over the
tensor. Ratios to torchdiffeq and to the floor are recorded in extra_info of the odekern rows
and printed by the last benchmark (test_zz_summary) (they are measured in the same run).
Peak memory vs steps: bytes autograd saves for the backward (deterministic), 4/16/64 steps.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import odekern
from odekern.testing import NmodeRHS, SavedTensorBytes

torchdiffeq = pytest.importorskip("torchdiffeq")

SHAPE = tuple(int(s) for s in os.environ.get("NMODE_BENCH_SHAPE", "8,3,128,128").split(","))
G_SHAPE = (1,) + SHAPE[1:]
RESULTS: dict[str, float] = {}


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(SHAPE, generator=gen).to(dtype)
    g = (0.5 * torch.randn(G_SHAPE, generator=gen)).to(dtype)
    return y0, g


def _cnm_forward():
    """y(t1) and the step statistics (accepted, rejected, ...) of odekern's global-control
    dopri5 on the CNM setting, from the op itself."""
    from odekern.ops.nmode_solve.config import NmodeConfig
    from odekern.ops.nmode_solve.op import nmode_solve_op

    y0, g = _inputs()
    y1, _, _, stats = nmode_solve_op(y0.reshape(-1), g.reshape(-1), 0.0, 0.05, *NmodeConfig().to_args(), False,
                                     "auto", -1)
    return y1, stats


def _cnm_rhs_evaluations() -> int:
    """RHS evaluations per element of odekern's global-control dopri5 on the CNM setting."""
    stats = _cnm_forward()[1]
    attempts = int(stats[0] + stats[1])
    return 2 + 6 * attempts  # initial-step selection (2) + 6 new stages per attempt (FSAL)


def _record(run_bench, name, fn, rounds=3, **info):
    run_bench(fn, provider=name.split(":")[1], setting=name.split(":")[0], shape=list(SHAPE), rounds=rounds, **info)
    return name


def _cpu_backends():
    avail = odekern.backends()
    return [b for b in ("cpu", "reference") if avail.get(b) is True]


# ------------------------------------------------------------------------------------------
# rk4, dt = 0.05 over [0, 1], forward.
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu"])
def test_rk4_forward_odekern(benchmark, run_bench, backend):
    if odekern.backends().get(backend) is not True:
        pytest.skip(f"backend {backend}: {odekern.backends().get(backend)}")
    y0, g = _inputs()
    run_bench(lambda: odekern.nmode_solve(y0, g, 0.0, 1.0, method="rk4", step_size=0.05, backend=backend),
              provider=f"odekern-{backend}", setting="rk4-fwd", shape=list(SHAPE))
    RESULTS[f"rk4-fwd:odekern-{backend}"] = benchmark.stats.stats.min


def test_rk4_forward_torchdiffeq(benchmark, run_bench):
    y0, g = _inputs()
    func = NmodeRHS(g)
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        run_bench(lambda: torchdiffeq.odeint(func, y0, t, method="rk4", options=dict(step_size=0.05)),
                  provider="torchdiffeq", setting="rk4-fwd", shape=list(SHAPE), rounds=2)
    RESULTS["rk4-fwd:torchdiffeq"] = benchmark.stats.stats.min


def _floor_op(name="nmode_sin_sq_floor"):
    """A floor op of the test extension (tests/native: built on first use, never shipped):
    ``nmode_sin_sq_floor`` (the forward RHS's sin^2) or ``nmode_sincos_floor`` (the adjoint's)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    from native import build

    return getattr(build.load(), name)


def _floor_poly(n_evals):
    y0, _ = _inputs()
    floor = _floor_op()
    return lambda: floor(y0.reshape(-1), n_evals)


def _adjoint_attempts() -> float:
    """Mean number of attempts per element of the adjoint system's own dopri5 in
    gradient="adjoint"'s backward on the CNM setting (loss = y1.sum(); the reference's counts).
    Each takes 6 RHS evaluations (FSAL) after the 2 of the initial-step selection; the backward
    starts at the forward's y(t1) and evaluates nothing else."""
    from odekern.ops.nmode_solve import reference
    from odekern.ops.nmode_solve.config import NmodeConfig

    cfg = NmodeConfig()
    y1, _ = _cnm_forward()
    gf = _inputs()[1].reshape(-1).repeat(SHAPE[0])
    counts = torch.zeros(y1.shape, dtype=torch.int64)
    x = (y1, torch.ones_like(y1), torch.zeros_like(y1))
    reference.solve_per_element(lambda s: reference.adjoint_rhs(s, gf), x, 0.05, cfg.rtol, cfg.atol,
                                cfg.max_num_steps, attempt_counts=counts)
    return counts.double().mean().item()


def _adjoint_backward_floors():
    """Floors of the adjoint's backward, all without memory traffic: "floor", its sincos
    evaluations alone; "arithmetic-floor", the same evaluations with each attempt's stage and
    error arithmetic (nmode_adjoint_attempt_floor), the least any dopri5 continuous adjoint of
    this system costs whatever its step control; "controlled-floor", that with the backward's
    per-element float64 controller. Returns (providers, sincos count, mean attempts) per
    element."""
    attempts = _adjoint_attempts()
    adjoint = round(2 + 6 * attempts)
    flat = _inputs()[0].reshape(-1)
    sincos, attempt = _floor_op("nmode_sincos_floor"), _floor_op("nmode_adjoint_attempt_floor")

    def with_attempts(control):
        # The attempt floor evaluates the first stage itself: with one more sincos, the 2 of
        # the initial-step selection.
        return lambda: (sincos(flat, 1), attempt(flat, attempts, control))

    floors = {"floor": lambda: sincos(flat, adjoint),
              "arithmetic-floor": with_attempts(False), "controlled-floor": with_attempts(True)}
    return floors, adjoint, attempts


def _adjoint_backward_only():
    """The backward of gradient="adjoint" alone, replayed on one recorded forward."""
    y0, g = _inputs()
    a, b = y0.clone().requires_grad_(True), g.clone().requires_grad_(True)
    y1 = odekern.nmode_solve(a, b, 0.0, 0.05, gradient="adjoint", **CNM)
    return lambda: torch.autograd.grad(y1.sum(), (a, b), retain_graph=True)


def test_rk4_floor_poly(benchmark, run_bench):
    run_bench(_floor_poly(80), provider="floor-poly", setting="rk4-fwd", shape=list(SHAPE), cos_per_element=80)
    RESULTS["rk4-fwd:floor-poly"] = benchmark.stats.stats.min


def test_rk4_floor_torch_cos(benchmark, run_bench):
    x, _ = _inputs()
    out = torch.empty_like(x)

    def go():
        for _ in range(80):
            torch.cos(x, out=out)

    run_bench(go, provider="floor-torch.cos", setting="rk4-fwd", shape=list(SHAPE), cos_per_element=80)
    RESULTS["rk4-fwd:floor-torch.cos"] = benchmark.stats.stats.min


# ------------------------------------------------------------------------------------------
# dopri5, CNM-UNet setting: forward, and forward + backward.
# ------------------------------------------------------------------------------------------
CNM = dict(rtol=1e-7, atol=1e-9)


def test_cnm_forward_odekern(benchmark, run_bench):
    y0, g = _inputs()
    run_bench(lambda: odekern.nmode_solve(y0, g, 0.0, 0.05, **CNM), provider="odekern-cpu-global",
              setting="cnm-fwd", shape=list(SHAPE))
    RESULTS["cnm-fwd:odekern"] = benchmark.stats.stats.min


def test_cnm_forward_odekern_per_element(benchmark, run_bench):
    y0, g = _inputs()
    run_bench(lambda: odekern.nmode_solve(y0, g, 0.0, 0.05, control="per_element", **CNM),
              provider="odekern-cpu-per_element", setting="cnm-fwd", shape=list(SHAPE))
    RESULTS["cnm-fwd:odekern-per_element"] = benchmark.stats.stats.min


def test_cnm_forward_torchdiffeq(benchmark, run_bench):
    y0, g = _inputs()
    func = NmodeRHS(g)
    t = torch.tensor([0.0, 0.05])
    with torch.no_grad():
        run_bench(lambda: torchdiffeq.odeint(func, y0, t, method="dopri5", **CNM), provider="torchdiffeq",
                  setting="cnm-fwd", shape=list(SHAPE), rounds=2)
    RESULTS["cnm-fwd:torchdiffeq"] = benchmark.stats.stats.min


def test_cnm_forward_torchode(benchmark, run_bench):
    to = pytest.importorskip("torchode")
    y0, g = _inputs()
    gflat = g.expand(SHAPE).reshape(SHAPE[0], -1)
    term = to.ODETerm(lambda t, y: -y + torch.sin(y + gflat) ** 2)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=CNM["atol"], rtol=CNM["rtol"], term=term))
    problem = to.InitialValueProblem(y0=y0.reshape(SHAPE[0], -1),
                                     t_eval=torch.tensor([[0.0, 0.05]] * SHAPE[0]))
    with torch.no_grad():
        run_bench(lambda: solver.solve(problem), provider="torchode", setting="cnm-fwd", shape=list(SHAPE), rounds=2)
    RESULTS["cnm-fwd:torchode"] = benchmark.stats.stats.min


@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
def test_cnm_fwd_bwd_odekern(benchmark, run_bench, gradient):
    y0, g = _inputs()

    def go():
        a = y0.clone().requires_grad_(True)
        b = g.clone().requires_grad_(True)
        odekern.nmode_solve(a, b, 0.0, 0.05, gradient=gradient, **CNM).sum().backward()

    run_bench(go, provider=f"odekern-cpu-{gradient}", setting="cnm-fwd+bwd", shape=list(SHAPE))
    RESULTS[f"cnm-fwd+bwd:odekern-{gradient}"] = benchmark.stats.stats.min


def test_cnm_fwd_bwd_torchdiffeq_adjoint(benchmark, run_bench):
    y0, g = _inputs()
    func = NmodeRHS(g)
    t = torch.tensor([0.0, 0.05])

    def go():
        a = y0.clone().requires_grad_(True)
        torchdiffeq.odeint_adjoint(func, a, t, method="dopri5", **CNM)[-1].sum().backward()

    run_bench(go, provider="torchdiffeq-odeint_adjoint", setting="cnm-fwd+bwd", shape=list(SHAPE), rounds=2)
    RESULTS["cnm-fwd+bwd:torchdiffeq"] = benchmark.stats.stats.min


def test_cnm_floor_poly(benchmark, run_bench):
    n = _cnm_rhs_evaluations()
    run_bench(_floor_poly(n), provider="floor-poly", setting="cnm-fwd", shape=list(SHAPE), cos_per_element=n)
    RESULTS["cnm-fwd:floor-poly"] = benchmark.stats.stats.min


def test_cnm_adjoint_backward_odekern(benchmark, run_bench):
    run_bench(_adjoint_backward_only(), provider="odekern-cpu-adjoint", setting="cnm-bwd", shape=list(SHAPE))
    RESULTS["cnm-bwd:odekern-adjoint"] = benchmark.stats.stats.min


@pytest.mark.parametrize("floor", ["floor", "arithmetic-floor", "controlled-floor"])
def test_cnm_adjoint_backward_floor(benchmark, run_bench, floor):
    floors, adjoint, attempts = _adjoint_backward_floors()
    provider = "floor-poly" if floor == "floor" else floor
    run_bench(floors[floor], provider=provider, setting="cnm-bwd", shape=list(SHAPE),
              sincos_per_element=adjoint, attempts_per_element=round(attempts, 3))
    RESULTS[f"cnm-bwd:{provider}"] = benchmark.stats.stats.min


# ------------------------------------------------------------------------------------------
# Peak memory vs steps (deterministic: bytes saved for backward), and the summary.
# ------------------------------------------------------------------------------------------
def _saved_bytes(n_steps, backend):
    y0, g = _inputs()
    y0.requires_grad_(True)
    with SavedTensorBytes() as saved:
        y1 = odekern.nmode_solve(y0, g, 0.0, 1.0, method="rk4", step_size=1.0 / n_steps, backend=backend)
    del y1
    return saved.nbytes


def test_memory_vs_steps(benchmark, run_bench):
    info = {f"saved_bytes_{n}_steps": _saved_bytes(n, "cpu") for n in (4, 16, 64)}
    run_bench(lambda: _saved_bytes(16, "cpu"), provider="odekern-cpu", setting="memory", shape=list(SHAPE),
              rounds=1, **info)
    RESULTS.update({f"memory:{k}": float(v) for k, v in info.items()})


def test_zz_summary(benchmark, run_bench):
    """Ratios between providers measured above (same run); printed and kept in extra_info."""
    r = RESULTS
    ratios = {}

    def ratio(name, num, den):
        if num in r and den in r:
            ratios[name] = r[num] / r[den]

    ratio("rk4 fwd: torchdiffeq / odekern", "rk4-fwd:torchdiffeq", "rk4-fwd:odekern-cpu")
    ratio("rk4 fwd: odekern / floor-poly", "rk4-fwd:odekern-cpu", "rk4-fwd:floor-poly")
    ratio("rk4 fwd: odekern / floor-torch.cos", "rk4-fwd:odekern-cpu", "rk4-fwd:floor-torch.cos")
    ratio("cnm fwd: torchdiffeq / odekern", "cnm-fwd:torchdiffeq", "cnm-fwd:odekern")
    ratio("cnm fwd: torchode / odekern", "cnm-fwd:torchode", "cnm-fwd:odekern")
    ratio("cnm fwd: odekern / floor-poly", "cnm-fwd:odekern", "cnm-fwd:floor-poly")
    ratio("cnm fwd+bwd: torchdiffeq adjoint / odekern checkpoint", "cnm-fwd+bwd:torchdiffeq", "cnm-fwd+bwd:odekern-checkpoint")
    ratio("cnm fwd+bwd: torchdiffeq adjoint / odekern adjoint", "cnm-fwd+bwd:torchdiffeq", "cnm-fwd+bwd:odekern-adjoint")
    ratio("cnm adjoint bwd: odekern / floor-poly", "cnm-bwd:odekern-adjoint", "cnm-bwd:floor-poly")
    ratio("cnm adjoint bwd: arithmetic-floor / floor-poly", "cnm-bwd:arithmetic-floor", "cnm-bwd:floor-poly")
    ratio("cnm adjoint bwd: odekern / arithmetic-floor", "cnm-bwd:odekern-adjoint", "cnm-bwd:arithmetic-floor")
    lines = ["", "| measurement | seconds (min) |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in r.items() if not k.startswith("memory")]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.1f}x |" for k, v in ratios.items()]
    lines += [f"| {k} | {int(v)} bytes |" for k, v in r.items() if k.startswith("memory")]
    print("\n".join(lines))
    run_bench(lambda: None, provider="summary", setting="ratios", shape=list(SHAPE), rounds=1,
              **{k: round(v, 3) for k, v in ratios.items()})


# ------------------------------------------------------------------------------------------
# Interleaved timing outside pytest-benchmark (robust on a shared machine):
#   PYTHONPATH=$PWD python bench/ops/bench_nmode_solve.py [--rounds 10] [--threads 1,2]
# Each round times every provider once, in a shuffled order, in this one process; the table shows the
# minimum over rounds per provider and thread count, and the ratios of those minima.
# ------------------------------------------------------------------------------------------
def _interleaved_providers():
    import time

    from torchdiffeq import odeint, odeint_adjoint

    y0, g = _inputs()
    func = NmodeRHS(g)
    t = torch.tensor([0.0, 0.05])
    n_evals = _cnm_rhs_evaluations()
    flat, floor = y0.reshape(-1), _floor_op()
    bwd_floors, adjoint, attempts = _adjoint_backward_floors()

    def fwd_bwd(gradient):
        def go():
            a = y0.clone().requires_grad_(True)
            b = g.clone().requires_grad_(True)
            odekern.nmode_solve(a, b, 0.0, 0.05, gradient=gradient, **CNM).sum().backward()
        return go

    def td_fwd():
        with torch.no_grad():
            odeint(func, y0, t, method="dopri5", **CNM)

    def td_adjoint():
        a = y0.clone().requires_grad_(True)
        odeint_adjoint(func, a, t, method="dopri5", **CNM)[-1].sum().backward()

    providers = {
        "fwd:odekern": lambda: odekern.nmode_solve(y0, g, 0.0, 0.05, **CNM),
        "fwd:odekern-per_element": lambda: odekern.nmode_solve(y0, g, 0.0, 0.05, control="per_element", **CNM),
        "fwd:floor": lambda: floor(flat, n_evals),
        "fwd:torchdiffeq": td_fwd,
        "fwd+bwd:odekern-adjoint": fwd_bwd("adjoint"),
        "bwd:odekern-adjoint": _adjoint_backward_only(),
        **{f"bwd:{name}": fn for name, fn in bwd_floors.items()},
        "fwd+bwd:odekern-checkpoint": fwd_bwd("checkpoint"),
        "fwd+bwd:torchdiffeq-adjoint": td_adjoint,
    }

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return providers, timed, (n_evals, adjoint, attempts)


def _interleaved_main(argv=None):
    import argparse
    import random

    ap = argparse.ArgumentParser(description="CNM-setting timings, providers interleaved, min over rounds")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--only", default="", help="comma-separated provider prefixes (default: all)")
    ap.add_argument("--accuracy", action="store_true", help="accuracy and time of both step controls per rtol")
    args = ap.parse_args(argv)
    if args.accuracy:
        _accuracy_main(args.rounds)
        return
    providers, timed, (n_evals, adjoint, attempts) = _interleaved_providers()
    if args.only:
        keep = tuple(args.only.split(","))
        providers = {k: v for k, v in providers.items() if k.startswith(keep) or k.endswith("floor")}
    print(f"shape {list(SHAPE)} float32, CNM dopri5 global control; forward floor = {n_evals} sin^2 per "
          f"element, adjoint backward floor = {adjoint} sincos per element ({attempts:.2f} attempts); "
          f"{machine_description_short()}; min over {args.rounds} rounds")
    for threads in (int(s) for s in args.threads.split(",")):
        torch.set_num_threads(threads)
        for fn in providers.values():  # warm-up
            fn()
        best = {k: float("inf") for k in providers}
        # A fresh order each round: a call right after torchdiffeq's (cold caches, allocator
        # churn) is slower, and a fixed order would hand that to the same provider every round.
        order = random.Random(threads)
        names = list(providers)
        for _ in range(args.rounds):
            order.shuffle(names)
            for k in names:
                best[k] = min(best[k], timed(providers[k]))
        print(f"\n{threads} thread(s)")
        for k, v in best.items():
            print(f"  {k:32s} {v * 1e3:9.2f} ms")

        def ratio(label, num, den):
            if num in best and den in best:
                print(f"  {label:44s} {best[num] / best[den]:6.2f}x")

        ratio("fwd: odekern / floor", "fwd:odekern", "fwd:floor")
        ratio("fwd: per_element / global control", "fwd:odekern-per_element", "fwd:odekern")
        ratio("bwd: odekern adjoint / floor", "bwd:odekern-adjoint", "bwd:floor")
        ratio("bwd: arithmetic floor / floor", "bwd:arithmetic-floor", "bwd:floor")
        ratio("bwd: controlled floor / floor", "bwd:controlled-floor", "bwd:floor")
        ratio("bwd: odekern adjoint / arithmetic floor", "bwd:odekern-adjoint", "bwd:arithmetic-floor")
        ratio("fwd: torchdiffeq / odekern", "fwd:torchdiffeq", "fwd:odekern")
        ratio("fwd+bwd: td odeint_adjoint / odekern adjoint", "fwd+bwd:torchdiffeq-adjoint", "fwd+bwd:odekern-adjoint")
        ratio("fwd+bwd: td odeint_adjoint / odekern checkpoint", "fwd+bwd:torchdiffeq-adjoint", "fwd+bwd:odekern-checkpoint")


def _accuracy_main(rounds: int) -> None:
    """Accuracy against time of both step controls: max |y(t1) - exact| (exact: a float64
    per-element solve at rtol 1e-13) and the minimum time over `rounds`, 1 thread, per rtol;
    then, per dtype, what per-element control costs at equal accuracy: for each per-element
    setting, the cheapest global-control setting that is at least as accurate, and the lowest
    ratio of the two times over the per-element settings (a work-precision comparison, so that
    neither control is held to an rtol that suits the other)."""
    import time

    torch.set_num_threads(1)
    y0, g = _inputs()
    exact = odekern.nmode_solve(y0.double(), g.double(), 0.0, 0.05, control="per_element", rtol=1e-13,
                                atol=1e-15)
    print(f"shape {list(SHAPE)}, dopri5 over [0, 0.05], atol = rtol / 100; {machine_description_short()}")
    for dtype in (torch.float32, torch.float64):
        a, b = y0.to(dtype), g.to(dtype)
        points: dict[str, list[tuple[float, float, float]]] = {}  # control -> (rtol, error, seconds)
        for control in ("global", "per_element"):
            for rtol in ACCURACY_RTOLS:
                def solve():
                    return odekern.nmode_solve(a, b, 0.0, 0.05, control=control, rtol=rtol, atol=rtol * 1e-2)
                err = (solve().double() - exact).abs().max().item()
                best = float("inf")
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    solve()
                    best = min(best, time.perf_counter() - t0)
                points.setdefault(control, []).append((rtol, err, best))
                print(f"  {str(dtype):14s} {control:12s} rtol {rtol:.0e}: max error {err:.2e}, {best * 1e3:6.2f} ms")
        ratios = []
        for rtol, err, seconds in points["per_element"]:
            as_accurate = [(s, r) for r, e, s in points["global"] if e <= err]
            if as_accurate:
                g_seconds, g_rtol = min(as_accurate)
                ratios.append((seconds / g_seconds, rtol, g_rtol))
        if ratios:
            ratio, rtol, g_rtol = min(ratios)
            print(f"  {str(dtype):14s} equal accuracy: per_element {ratio:.2f}x global "
                  f"(per_element rtol {rtol:.0e} against global rtol {g_rtol:.0e})")


# Loose to tight: on the CNM interval ([0, 0.05]) a loose rtol still takes one or two steps per
# element, so the cheapest accurate setting of each control can sit anywhere in this range.
ACCURACY_RTOLS = (1e-1, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)


def machine_description_short() -> str:
    import os as _os
    return f"{_os.cpu_count()} cores, torch {torch.__version__}"


if __name__ == "__main__":
    _interleaved_main()
