"""The solvers' own time on the drop-in bench's conv state: a solve's time minus the time spent
inside the right-hand side, for odekern and torchdiffeq, with three right-hand sides on the same
state (2 x 16 x 32 x 32, float32, fixed grid of 8 steps, no graph):

- ``conv``: the drop-in bench's conv module (the continuous U-Net's ODE function);
- ``cheap``: ``-0.1 y``, so the state stays in the caches between stages;
- ``cache-thrashing``: ``-0.1 y`` after touching 16 MB, so, as behind a real network, every stage
  combination reads its operands from memory.
- ``nmode-large`` (only with ``--kinds``): the nmODE RHS module on bench_dropin's 2M-element
  state (4 x 32 x 128 x 128), where each pass over the state moves megabytes.

It shows what bounds the solver time behind a large RHS: the cheap RHS shows the operations
the solver does, the cache-thrashing one the memory traffic both libraries must pay. Rounds
interleave the libraries; each reports its minimum.

On the nmode-large state, whose stages do not fit in the caches, the table also gives the memory
floor of an explicit RK method: the passes over the state that its step makes when each stage
input and the step's solution are formed from y and the stages their tableau row names (as
torchdiffeq forms them, and so odekern, which matches its results): one read of y and of each
such stage and one write per combination, plus the copy of y0 into the solution's first row,
each pass timed at this machine's memory speed (``torch.add`` over operands that do not fit in
the caches). No solver that forms the combinations so can take less time than that, and
"torchdiffeq / floor" bounds the ratio any such solver could show.

    python bench/bench_solver_time.py [--rounds 7] [--methods euler,heun3,rk4] [--kinds nmode-large]
    python -m pytest bench/bench_solver_time.py --benchmark-only
"""

from __future__ import annotations

import argparse
import math
import time

import pytest
import torch
import torchdiffeq
from torch import nn

import odekern
from bench_dropin import FIXED_STEPS, family
from odekern.solvers.registry import METHODS as SOLVERS

RHS_KINDS = ("conv", "cheap", "cache-thrashing")
# Only when asked for with --kinds: the nmODE RHS module on bench_dropin's 2M-element state.
EXTRA_KINDS = ("nmode-large",)
METHODS = ("euler", "heun3", "rk4")
THRASH_BYTES = 16 << 20
# Operands of the memory-speed measurement rotate through this many bytes, several times the
# last-level cache, so each pass reads from and writes to memory.
MEMORY_POOL_BYTES = 256 << 20


class TimedRHS(nn.Module):
    """The RHS with the seconds spent inside it summed (what is left of a solve is the solver's)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.inner = family(_state_of(kind))[0].inner if kind in ("conv", "nmode-large") else None
        self.junk = torch.zeros(THRASH_BYTES // 4) if kind == "cache-thrashing" else None
        self.seconds = 0.0

    def forward(self, t, y):
        start = time.perf_counter()
        if self.inner is not None:
            out = self.inner(t, y)
        else:
            if self.junk is not None:
                self.junk.add_(1.0)
            out = -0.1 * y
        self.seconds += time.perf_counter() - start
        return out


def _state_of(kind: str) -> str:
    """The bench_dropin family whose state (and, for conv and nmode-large, RHS) a kind uses."""
    return "nmode-large" if kind == "nmode-large" else "conv"


def solver_seconds(kind: str, method: str, rounds: int) -> dict:
    """Minimum over interleaved rounds of (solve time - time inside the RHS), per library."""
    func = TimedRHS(kind)
    y0, t = family(_state_of(kind))[1:]
    options = {"step_size": float(t[-1] - t[0]) / FIXED_STEPS}
    best = {}
    libs = (odekern, torchdiffeq)
    for r in range(rounds + 1):  # the first round warms up
        for lib in libs[r % 2:] + libs[:r % 2]:
            func.seconds = 0.0
            start = time.perf_counter()
            with torch.no_grad():
                lib.odeint(func, y0, t, method=method, options=options)
            own = time.perf_counter() - start - func.seconds
            if r:
                best[lib.__name__] = min(best.get(lib.__name__, float("inf")), own)
    return {"rhs": kind, "method": method, "odekern_s": best["odekern"], "torchdiffeq_s": best["torchdiffeq"],
            "ratio": best["torchdiffeq"] / best["odekern"]}


def combination_passes(method: str) -> int | None:
    """Passes over the state per step of a fixed-grid explicit RK method (None for others): each
    stage input ``y + dt sum_j a_ij k_j`` and the solution ``y + dt sum_j b_j k_j`` read y and
    every k_j with a nonzero coefficient and write once."""
    tableau = getattr(SOLVERS.get(method), "tableau", None)
    if tableau is None or tableau.adaptive:
        return None
    tab = tableau.floats()
    rows = [*tab.a[1:], tab.b]
    return sum(2 + sum(1 for c in row if c != 0.0) for row in rows)


def memory_pass_seconds(like: torch.Tensor, rounds: int) -> float:
    """Seconds for one pass (a read or a write) over a tensor like ``like`` in memory: the
    fastest of ``rounds`` sweeps of ``torch.add(a, b, out=c)`` (three passes each) over operands
    rotating through MEMORY_POOL_BYTES."""
    count = 3 * max(1, math.ceil(MEMORY_POOL_BYTES / (3 * like.numel() * like.element_size())))
    pool = [torch.rand_like(like) for _ in range(count)]
    best = float("inf")
    for _ in range(rounds + 1):  # the first sweep warms up
        start = time.perf_counter()
        for i in range(0, count, 3):
            torch.add(pool[i], pool[i + 1], out=pool[i + 2])
        best = min(best, (time.perf_counter() - start) / count)
    return best


def memory_floor_seconds(method: str, pass_seconds: float | None) -> float | None:
    """The memory floor of a fixed-grid solve whose passes over the state take ``pass_seconds``
    each (None where it does not apply: adaptive and Adams methods, and states that fit in the
    caches, given as ``pass_seconds=None``)."""
    passes = combination_passes(method)
    if passes is None or pass_seconds is None:
        return None
    return (passes * FIXED_STEPS + 2) * pass_seconds


@pytest.mark.parametrize("kind", RHS_KINDS)
@pytest.mark.parametrize("method", METHODS)
def test_solver_time(run_bench, kind, method):
    row = solver_seconds(kind, method, rounds=5)
    func = TimedRHS(kind)
    y0, t = family("conv")[1:]
    options = {"step_size": float(t[-1] - t[0]) / FIXED_STEPS}

    def solve():
        with torch.no_grad():
            odekern.odeint(func, y0, t, method=method, options=options)

    run_bench(solve, provider="odekern", **row)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="the solvers' own time behind three right-hand sides")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(RHS_KINDS), help=f"also: {', '.join(EXTRA_KINDS)}")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, torch {torch.__version__}, min of {args.rounds} rounds\n")
    print("| RHS | method | odekern solver time | torchdiffeq solver time | torchdiffeq / odekern "
          "| memory floor | odekern / floor | torchdiffeq / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        # One memory speed per state, so that the floors of one table compare.
        pass_seconds = (memory_pass_seconds(family(_state_of(kind))[1], args.rounds)
                        if kind in EXTRA_KINDS else None)
        for method in args.methods.split(","):
            r = solver_seconds(kind, method, args.rounds)
            floor = memory_floor_seconds(method, pass_seconds)
            floor_cells = ("| | |" if floor is None else
                           f"{floor * 1e3:.2f} ms | {r['odekern_s'] / floor:.2f}x | {r['torchdiffeq_s'] / floor:.2f}x |")
            print(f"| {kind} | {method} | {r['odekern_s'] * 1e3:.2f} ms | {r['torchdiffeq_s'] * 1e3:.2f} ms | "
                  f"{r['ratio']:.2f}x | {floor_cells}", flush=True)


if __name__ == "__main__":
    main()
