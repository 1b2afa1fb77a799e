"""Drop-in speed: the same user code solved by odekern, torchdiffeq and torchode.

Every case is a user's RHS module (not a fused op), solved through the public API exactly as the
import swap leaves it: ``odekern.odeint`` vs ``torchdiffeq.odeint`` (and the ``_adjoint``
variants), for every method both libraries have, on three RHS families:

- ``mlp``: a tiny MLP (64 samples x 16 features, one hidden layer of 64, tanh);
- ``conv``: the continuous U-Net's ODE function (GroupNorm, conv3x3, softplus, conv1x1, tanh,
  a cos(t) input channel; 2 x 16 channels x 32 x 32);
- ``nmode``: the nmODE right-hand side -y + sin^2(y + g) as a plain module (g a parameter;
  8 x 3 x 64 x 64), i.e. without odekern's fused nmode_solve.
- ``nmode-large`` (only when asked for with ``--families``): the same on 4 x 32 x 128 x 128, the
  size of a U-Net's feature map, where passes over the state, not calls, make the solver's time.

Modes: ``fwd`` (no graph), ``backprop`` (fwd + bwd through the solver's operations) and
``adjoint`` (fwd + bwd, odeint_adjoint); only when asked for with ``--modes``, ``fwd-grad``: the
forward solve outside ``torch.no_grad`` on an RHS with nothing to train (its parameters frozen),
as a script solving a plain function runs it, where autograd is on but records nothing.
torchode: dopri5 forward (it has no drop-in for the rest). ``ceiling`` is torchdiffeq's time
over ``rhs_only``'s: the same RHS calls (and, for the gradient modes, the same vector-Jacobian
products) with no solver around them, the most any solver could gain on that case. Timings:
providers interleaved, minimum of rounds; a round of a fast case times a batch of calls (about
20 ms) and reports the time per call.
``paired``: the median over rounds of torchdiffeq's time over odekern's in the same round
(``bench_stages.paired_ratio``), robust to the host's speed drifting between rounds.

    python bench/bench_dropin.py [--rounds 5] [--families mlp,conv,nmode] [--methods rk4,dopri5]
    python -m pytest bench/bench_dropin.py --benchmark-only    # one row per case, extra_info
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import pytest
import torch
import torchdiffeq
from torch import nn

import odekern
from bench_stages import interleaved_rounds, paired_ratio
from odekern.testing import NmodeRHS, tol

FIXED_STEPS = 8
ADAPTIVE_TOL = {"rtol": 1e-4, "atol": 1e-6}
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
MODES = ("fwd", "backprop", "adjoint")
EXTRA_MODES = ("fwd-grad",)
TORCHODE_METHODS = {"dopri5": "Dopri5"}
# Per case: at most this many seconds of rounds per provider, but never fewer than MIN_ROUNDS.
ROUND_BUDGET_S = 2.0
MIN_ROUNDS = 2
# One sample of a fast case is a batch of calls lasting about this long: the minimum of a few
# single sub-millisecond calls moves by +-10% between runs, that of batches by a few percent.
BATCH_S = 0.02


class Counted(nn.Module):
    """The user's RHS, with a count of its calls (equal counts mean equal steps)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.inner(t, y)


class MLP(nn.Module):
    def __init__(self, dim=16, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


class ConvODEFunc(nn.Module):
    """The continuous U-Net's ODE function: norm, conv3x3 on [x, cos t], softplus, conv1x1, tanh."""

    def __init__(self, channels=16):
        super().__init__()
        self.norm = nn.GroupNorm(4, channels)
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, t, x):
        h = self.norm(x)
        tt = torch.cos(t).to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        h = nn.functional.softplus(self.conv1(torch.cat([h, tt], 1)))
        return torch.tanh(self.conv2(h))


def family(name: str):
    """(RHS module, y0, t) of a family, seeded."""
    torch.manual_seed(0)
    if name == "mlp":
        return Counted(MLP()), torch.randn(64, 16), torch.tensor([0.0, 1.0])
    if name == "conv":
        return Counted(ConvODEFunc()), torch.randn(2, 16, 32, 32), torch.tensor([0.0, 1.0])
    if name in ("nmode", "nmode-large"):
        shape = (8, 3, 64, 64) if name == "nmode" else (4, 32, 128, 128)
        g = 0.5 * torch.randn(1, *shape[1:])
        return Counted(NmodeRHS(g)), torch.randn(shape), torch.tensor([0.0, 1.0])
    raise ValueError(f"family must be one of {', '.join(FAMILIES + EXTRA_FAMILIES)}, got {name!r}")


def solve_kwargs(method: str, t: torch.Tensor) -> dict:
    if method in FIXED_METHODS:
        return {"method": method, "options": {"step_size": float(t[-1] - t[0]) / FIXED_STEPS}}
    return {"method": method, **ADAPTIVE_TOL}


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """``module``'s parameters not requiring grad inside the block."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _forward_context(func: nn.Module, mode: str):
    return torch.no_grad() if mode == "fwd" else _frozen(func)


def _run(lib, func, y0, t, method, mode):
    kw = solve_kwargs(method, t)
    if mode in ("fwd", "fwd-grad"):
        with _forward_context(func, mode):
            return lib.odeint(func, y0, t, **kw)
    x = y0.clone().requires_grad_()
    if mode == "backprop":
        out = lib.odeint(func, x, t, **kw)
    else:
        out = lib.odeint_adjoint(func, x, t, adjoint_params=tuple(func.parameters()), **kw)
    out[-1].square().sum().backward()
    func.zero_grad(set_to_none=True)
    return out.detach()


def _rhs_only(func, y0, t, mode, n_forward, n_backward):
    """The RHS calls a solve makes, and nothing else: n_forward evaluations (recorded for
    backprop, which then runs their backward), plus, for the adjoint, n_backward evaluations
    each with one vector-Jacobian product."""
    t0 = t[0]

    def run():
        if mode in ("fwd", "fwd-grad"):
            with _forward_context(func, mode):
                for _ in range(n_forward):
                    func.inner(t0, y0)
            return
        if mode == "backprop":
            x = y0.clone().requires_grad_()
            sum(func.inner(t0, x).sum() for _ in range(n_forward)).backward()
            func.zero_grad(set_to_none=True)
            return
        with torch.no_grad():
            for _ in range(n_forward):
                func.inner(t0, y0)
        params = tuple(func.parameters())
        for _ in range(n_backward):
            with torch.enable_grad():
                x = y0.clone().requires_grad_()
                f = func.inner(t0, x)
                torch.autograd.grad(f, (x,) + params, torch.ones_like(f), allow_unused=True)

    return run


def _torchode(func, y0, t, method):
    import torchode as to

    shape = y0.shape
    term = to.ODETerm(lambda tt, y: func(tt[0], y.reshape(shape)).reshape(shape[0], -1))
    step = getattr(to, TORCHODE_METHODS[method])(term=term)
    solver = to.AutoDiffAdjoint(step, to.IntegralController(term=term, **ADAPTIVE_TOL))
    problem = to.InitialValueProblem(y0=y0.reshape(shape[0], -1), t_eval=t.expand(shape[0], -1))

    def run():
        with torch.no_grad():
            return solver.solve(problem)

    return run


def _batched(fn, n: int):
    def run():
        for _ in range(n):
            fn()
    return run


def measure(family_name: str, method: str, mode: str, rounds: int) -> dict:
    """Interleaved minima of every provider for one case, with RHS-call counts and ratios."""
    func, y0, t = family(family_name)
    counts, slowest = {}, 0.0
    for lib in (odekern, torchdiffeq):
        func.calls = 0
        start = time.perf_counter()
        out = _run(lib, func, y0, t, method, mode)
        slowest = max(slowest, time.perf_counter() - start)
        counts[lib.__name__] = func.calls
        counts[lib.__name__ + ":result"] = out
    # Slow cases (the adjoint of a many-step solve) get fewer rounds: the whole bench stays minutes.
    batch = max(1, math.ceil(BATCH_S / slowest))
    rounds = max(MIN_ROUNDS, min(rounds, int(ROUND_BUDGET_S / (slowest * batch))))
    func.calls = 0
    with torch.no_grad():
        odekern.odeint(func, y0, t, **solve_kwargs(method, t))
    n_forward = func.calls
    providers = {
        "odekern": lambda: _run(odekern, func, y0, t, method, mode),
        "torchdiffeq": lambda: _run(torchdiffeq, func, y0, t, method, mode),
        "rhs_only": _rhs_only(func, y0, t, mode, n_forward, counts["odekern"] - n_forward),
    }
    if mode == "fwd" and method in TORCHODE_METHODS:
        providers["torchode"] = _torchode(func, y0, t, method)
    times = interleaved_rounds({name: _batched(fn, batch) for name, fn in providers.items()}, rounds)
    best = {name: min(seconds) / batch for name, seconds in times.items()}
    same = torch.allclose(counts["odekern:result"], counts["torchdiffeq:result"], **_agreement(method))
    return {
        "family": family_name, "method": method, "mode": mode, **{k + "_s": v for k, v in best.items()},
        "speedup_vs_torchdiffeq": best["torchdiffeq"] / best["odekern"],
        "paired_speedup": paired_ratio(times, "torchdiffeq", "odekern"),
        "ceiling": best["torchdiffeq"] / best["rhs_only"],
        "nfe_odekern": counts["odekern"], "nfe_torchdiffeq": counts["torchdiffeq"], "results_agree": same,
    }


# Adaptive methods whose outputs between steps come from a dense output of lower order than the
# method (docs/methods.md): those outputs are off by more than the tolerance (the nmODE module's
# dopri8 at rtol 1e-4: 2e-3 in both libraries), so two solves whose float32 step sequences part
# on rounding noise differ by up to that much.
LOW_ORDER_DENSE_OUTPUT = ("dopri8", "bosh3", "fehlberg2", "adaptive_heun")


def _agreement(method: str) -> dict:
    """How closely the two libraries' solutions must agree for the row to count as the same
    solve (the parity tests check this properly; here it guards the timing's meaning)."""
    if method in FIXED_METHODS:
        return tol(torch.float32, "cross")
    return {"rtol": 1e-2, "atol": 1e-3} if method in LOW_ORDER_DENSE_OUTPUT else {"rtol": 1e-3, "atol": 1e-4}


FAMILIES = ("mlp", "conv", "nmode")
# Not in the default run (seconds per solve): the nmODE RHS on a feature map of a U-Net's size.
EXTRA_FAMILIES = ("nmode-large",)
CASES = [(f, m, mode) for f in FAMILIES for m in METHODS for mode in MODES]


@pytest.mark.parametrize("family_name,method,mode", CASES)
def test_dropin(benchmark, run_bench, family_name, method, mode):
    row = measure(family_name, method, mode, rounds=3)
    func, y0, t = family(family_name)
    run_bench(lambda: _run(odekern, func, y0, t, method, mode), provider="odekern", rounds=1,
              **{k: v for k, v in row.items() if not isinstance(v, torch.Tensor)})


def _table(rows: list[dict]) -> str:
    head = ("| RHS | method | mode | odekern | torchdiffeq | ratio | paired | torchode | ceiling | RHS calls |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ode = f"{r['torchode_s'] * 1e3:.2f} ms" if "torchode_s" in r else ""
        calls = (str(r["nfe_odekern"]) if r["nfe_odekern"] == r["nfe_torchdiffeq"]
                 else f"{r['nfe_odekern']} vs {r['nfe_torchdiffeq']}")
        mark = "" if r["results_agree"] else " (results differ)"
        lines.append(f"| {r['family']} | {r['method']} | {r['mode']} | {r['odekern_s'] * 1e3:.2f} ms | "
                     f"{r['torchdiffeq_s'] * 1e3:.2f} ms | {r['speedup_vs_torchdiffeq']:.2f}x{mark} | "
                     f"{r['paired_speedup']:.2f}x | {ode} | {r['ceiling']:.2f}x | {calls} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="odekern vs torchdiffeq (and torchode) on user RHS modules")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"also: {', '.join(EXTRA_FAMILIES)}")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--modes", default=",".join(MODES), help=f"also: {', '.join(EXTRA_MODES)}")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for fam in args.families.split(","):
        for method in args.methods.split(","):
            for mode in args.modes.split(","):
                if fam in EXTRA_FAMILIES or mode in EXTRA_MODES or (fam, method, mode) in CASES:
                    rows.append(measure(fam, method, mode, args.rounds))
                    print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}, {args.rounds} rounds\n")
    print(_table(rows))
    for key, what in (("speedup_vs_torchdiffeq", "ratio of minima"), ("paired_speedup", "paired ratio")):
        ratios = [r[key] for r in rows]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"\n{what}: {len(rows)} cases, geometric mean {geo:.2f}x, {sum(x < 1.0 for x in ratios)} below "
              f"1.0x, lowest {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
