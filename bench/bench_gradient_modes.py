"""Gradient modes of an adaptive solve: time and peak memory of forward + backward.

dopri5 on the drop-in bench's conv module (the continuous U-Net's ODE function, 2 x 16 x 32 x 32,
float32), over longer and longer intervals at a tight tolerance, so the number of accepted
steps grows: odekern's backprop, checkpointed gradient (``gradient="checkpoint"``, 8
checkpoints) and continuous adjoint, and torchdiffeq's backprop and adjoint. Time: minimum of
interleaved rounds. Memory: the exact peak of live tensor storage over the forward and
backward pass (``odekern.testing.LiveTensorBytes``), in states.

    python bench/bench_gradient_modes.py [--rounds 5] [--threads 1]
    python -m pytest bench/bench_gradient_modes.py --benchmark-only
"""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import torchdiffeq

import odekern
from bench_dropin import family
from odekern import testing
from odekern.checkpoint import odeint_checkpointed

RTOL, ATOL = 1e-7, 1e-9
SPANS = (1.0, 4.0, 8.0)
CHECKPOINTS = 8


def _solvers(func, y0: torch.Tensor, t: torch.Tensor) -> dict:
    params = tuple(func.parameters())
    kw = {"method": "dopri5", "rtol": RTOL, "atol": ATOL}
    return {
        "odekern backprop": lambda: odekern.odeint(func, y0, t, **kw),
        "odekern checkpoint": lambda: odeint_checkpointed(func, y0, t, checkpoints=CHECKPOINTS, **kw),
        "odekern adjoint": lambda: odekern.odeint_adjoint(func, y0, t, adjoint_params=params, **kw),
        "torchdiffeq backprop": lambda: torchdiffeq.odeint(func, y0, t, **kw),
        "torchdiffeq adjoint": lambda: torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, **kw),
    }


def _problem(span: float):
    func, y0 = family("conv")[:2]
    return func, y0.detach().clone().requires_grad_(), torch.tensor([0.0, span])


def _fwd_bwd(solve, y0, params) -> None:
    torch.autograd.grad(solve()[-1].square().sum(), (y0, *params))


def measure(span: float, rounds: int) -> list[dict]:
    """One row per mode: seconds (minimum over interleaved rounds) and peak memory in states."""
    func, y0, t = _problem(span)
    params = tuple(func.parameters())
    solvers = _solvers(func, y0, t)
    best = dict.fromkeys(solvers, float("inf"))
    for r in range(rounds + 1):  # the first round warms up
        for name, solve in solvers.items():
            start = time.perf_counter()
            _fwd_bwd(solve, y0, params)
            if r:
                best[name] = min(best[name], time.perf_counter() - start)
    steps = odekern.odeint(func, y0.detach(), t, method="dopri5", rtol=RTOL, atol=ATOL,
                           options={"on_max_steps": "return"})[1].n_steps
    rows = []
    for name, solve in solvers.items():
        with testing.LiveTensorBytes() as live:
            _fwd_bwd(solve, y0, params)
        rows.append({"span": span, "steps": steps, "mode": name, "seconds": best[name],
                     "peak_states": live.peak_bytes / (y0.numel() * y0.element_size())})
    return rows


@pytest.mark.parametrize("span", SPANS)
def test_gradient_modes(run_bench, span):
    rows = measure(span, rounds=2)
    func, y0, t = _problem(span)
    solve = _solvers(func, y0, t)["odekern checkpoint"]
    run_bench(lambda: _fwd_bwd(solve, y0, tuple(func.parameters())), provider="odekern",
              span=span, rows=rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="gradient modes of an adaptive solve: time and peak memory")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, torch {torch.__version__}, min of {args.rounds} rounds, "
          f"dopri5 rtol {RTOL:g} atol {ATOL:g}\n")
    print("| t1 | accepted steps | mode | fwd+bwd | vs odekern backprop | peak memory, states |")
    print("|---|---|---|---|---|---|")
    for span in SPANS:
        rows = measure(span, args.rounds)
        base = next(r["seconds"] for r in rows if r["mode"] == "odekern backprop")
        for r in rows:
            print(f"| {span:g} | {r['steps']} | {r['mode']} | {r['seconds'] * 1e3:.1f} ms | "
                  f"{r['seconds'] / base:.2f}x | {r['peak_states']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
