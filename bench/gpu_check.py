"""GPU benchmarks of the one-shot check (scripts/gpu-check.sh): timings and peak memory on the
GPU, each kernel result also compared with the reference backend, written as one JSON file and
one markdown table to ``--out``.

Measured (per available odekern backend on the device, plus torchdiffeq / torchode when they
are installed; a missing library is reported, never an error):

- nmODE solve, forward and forward+backward: the CNM setting (dopri5, rtol 1e-7, atol 1e-9,
  t in [0, 0.05], [8, 3, 256, 256]) and rk4 with dt = 0.05 over [0, 1];
- fused Runge-Kutta stages: ``odekern.odeint`` with a conv RHS vs ``torchdiffeq.odeint``;
- one CNM-UNet training step (B = 8, 256 x 256, the paper's setting) vs the same network whose
  nmODE block is integrated by torchdiffeq (odeint_adjoint, the authors' call);
- peak GPU memory (``torch.cuda.max_memory_allocated``) of a conv ODE block's backward under
  the adjoint / checkpoint / backprop gradient modes as the number of steps grows.

``--dry-run`` runs every benchmark once at tiny sizes on CPU (the CI check of this file).
A global time budget (``--budget-s``) skips what no longer fits, saying so in the results.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

import odekern
from networks import atomic_files
from odekern import dispatch
from odekern.ops.nmode_solve import reference as nmode_reference
from odekern.testing import PeakMemory

SIZES = {
    "full": dict(nmode=(8, 3, 256, 256), conv=(8, 16, 64, 64), stage_rtol=1e-5, unet_batch=8,
                 unet_size=256, unet_kw={}, mem_steps=(8, 32, 128), mem_shape=(4, 16, 64, 64),
                 reps=5, warmup=True),
    # The dry run checks the code paths, not speed: loose tolerances, narrow networks, no warm-up.
    "dry": dict(nmode=(2, 3, 8, 8), conv=(2, 4, 8, 8), stage_rtol=1e-2, unet_batch=2, unet_size=16,
                unet_kw={"encoder_widths": (4, 8, 8, 8, 8), "rtol": 1e-4, "atol": 1e-6},
                mem_steps=(2, 4), mem_shape=(2, 4, 8, 8), reps=1, warmup=False),
}
NMODE_SETTINGS = {
    "cnm-dopri5": (dict(method="dopri5", rtol=1e-7, atol=1e-9), 0.05),
    "rk4-dt0.05": (dict(method="rk4", step_size=0.05), 1.0),
}


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Bench:
    def __init__(self, device: torch.device, reps: int, budget_s: float, warmup: bool = True):
        self.device, self.reps, self.warmup = device, reps, warmup
        self.deadline = time.monotonic() + budget_s
        self.rows: list[dict] = []
        self.memory: list[dict] = []
        self.notes: list[str] = []

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time_ms(self, fn) -> float:
        if self.warmup:
            fn()  # compilation, autotuning, caches
            self.sync()
        times = []
        for _ in range(self.reps):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def record(self, group: str, case: str, provider: str, run, check=None) -> None:
        """Time ``run`` (returns an output tensor); ``check(out)`` gives the max abs difference
        from the reference. Failures are recorded, the next row still runs."""
        row = {"group": group, "case": case, "provider": provider}
        if time.monotonic() > self.deadline:
            row["skipped"] = "time budget exhausted"
        else:
            try:
                out = run()
                row["ms"] = round(self.time_ms(run), 3)
                if check is not None:
                    row["max_abs_diff_vs_reference"] = float(check(out))
            except Exception as exc:  # noqa: BLE001 - the report lists every failure
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        self.rows.append(row)


def odekern_backends(device: torch.device) -> list[str]:
    return [b for b in ("cuda", "triton", "cpu", "reference") if dispatch.unavailable_reason(b, device) is None]


# ------------------------------------------------------------------------------------ nmODE

def bench_nmode(b: Bench, shape) -> None:
    y0 = torch.randn(shape, device=b.device)
    g = 0.5 * torch.randn((1, *shape[1:]), device=b.device)
    for case, (kw, t1) in NMODE_SETTINGS.items():
        want = odekern.nmode_solve(y0, g, 0.0, t1, backend="reference", **kw)

        def close(out, want=want):
            return (out - want).abs().max().item()

        for mode in ("fwd", "fwd+bwd"):
            for backend in odekern_backends(b.device):
                def run(backend=backend, mode=mode, kw=kw, t1=t1):
                    if mode == "fwd":
                        with torch.no_grad():
                            return odekern.nmode_solve(y0, g, 0.0, t1, backend=backend, **kw)
                    a, c = y0.clone().requires_grad_(True), g.clone().requires_grad_(True)
                    y1 = odekern.nmode_solve(a, c, 0.0, t1, backend=backend, gradient="adjoint", **kw)
                    y1.sum().backward()
                    return y1.detach()

                b.record("nmODE solve", f"{case} {mode}", f"odekern/{backend}", run, close)
            for name, runner in comparison_nmode_runners(y0, g, kw, t1, mode).items():
                b.record("nmODE solve", f"{case} {mode}", name, runner, close)


def comparison_nmode_runners(y0, g, kw, t1, mode) -> dict:
    runners = {}
    t = torch.tensor([0.0, t1], device=y0.device)

    def field_of(gg):
        return lambda _t, y: nmode_reference.rhs(y, gg)

    if has("torchdiffeq"):
        import torchdiffeq

        opts = dict(rtol=kw.get("rtol", 1e-7), atol=kw.get("atol", 1e-9), method=kw["method"])
        if "step_size" in kw:
            opts["options"] = {"step_size": kw["step_size"]}

        def run_td():
            if mode == "fwd":
                with torch.no_grad():
                    return torchdiffeq.odeint(field_of(g), y0, t, **opts)[-1]
            gg = g.clone().requires_grad_(True)
            holder = _Field(gg)
            y1 = torchdiffeq.odeint_adjoint(holder, y0.clone().requires_grad_(True), t, **opts,
                                            adjoint_params=(gg,))[-1]
            y1.sum().backward()
            return y1.detach()

        runners["torchdiffeq"] = run_td
    if has("torchode") and kw["method"] == "dopri5":
        import torchode as to

        def run_to():
            gg = g if mode == "fwd" else g.clone().requires_grad_(True)
            shape = y0.shape
            term = to.ODETerm(lambda _t, y: nmode_reference.rhs(y.view(shape), gg).reshape(shape[0], -1))
            solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                        to.IntegralController(rtol=kw["rtol"], atol=kw["atol"], term=term))
            ctx = torch.no_grad() if mode == "fwd" else contextlib.nullcontext()
            with ctx:
                t_eval = t.expand(shape[0], 2).contiguous()
                sol = solver.solve(to.InitialValueProblem(y0=y0.reshape(shape[0], -1), t_eval=t_eval))
                y1 = sol.ys[:, -1].view(shape)
                if mode != "fwd":
                    y1.sum().backward()
            return y1.detach()

        runners["torchode"] = run_to
    return runners


class _Field(nn.Module):
    def __init__(self, g):
        super().__init__()
        self.g = g

    def forward(self, _t, y):
        return nmode_reference.rhs(y, self.g)


# ------------------------------------------------------------------------- fused stages

class ConvRHS(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, _t, y):
        return torch.tanh(self.conv(y))


def bench_stages(b: Bench, shape, rtol: float) -> None:
    torch.manual_seed(0)
    func = ConvRHS(shape[1]).to(b.device)
    y0 = torch.randn(shape, device=b.device)
    t = torch.tensor([0.0, 1.0], device=b.device)
    opts = dict(method="dopri5", rtol=rtol, atol=rtol * 1e-2)
    with torch.no_grad():
        want = odekern.odeint(func, y0, t, **opts)[-1]
    providers = {f"odekern/{n}": n for n in odekern_backends(b.device)}
    if has("torchdiffeq"):
        providers["torchdiffeq"] = None
    for mode in ("fwd", "fwd+bwd"):
        for name, backend in providers.items():
            def run(backend=backend, mode=mode, name=name):
                import torchdiffeq

                solve = torchdiffeq.odeint if name == "torchdiffeq" else odekern.odeint
                ctx = odekern.use_backend(backend) if backend else contextlib.nullcontext()
                with ctx:
                    if mode == "fwd":
                        with torch.no_grad():
                            return solve(func, y0, t, **opts)[-1]
                    y1 = solve(func, y0.clone().requires_grad_(True), t, **opts)[-1]
                    y1.square().sum().backward()
                    return y1.detach()

            b.record("RK stages, conv RHS (dopri5)", mode, name, run, lambda out: (out - want).abs().max().item())


# --------------------------------------------------------------------------- CNM-UNet step

class _TorchdiffeqNmODE(nn.Module):
    """Stands in for the CNM block's fused nmODE: dy/dt = -y + sin^2(y + C(gamma)) on [0, t1]
    by torchdiffeq.odeint_adjoint, with the same parameters."""

    def __init__(self, nmode: odekern.NmODE):
        super().__init__()
        self.inner = nmode

    def forward(self, y0, return_f: bool = False):
        import torchdiffeq

        kw = self.inner.solve_kwargs
        field = _Field(self.inner.conv(self.inner.gamma))
        t = torch.tensor([0.0, self.inner.t1], device=y0.device, dtype=y0.dtype)
        y1 = torchdiffeq.odeint_adjoint(field, y0, t, rtol=kw["rtol"], atol=kw["atol"], method="dopri5",
                                        adjoint_params=tuple(self.inner.parameters()))[-1]
        if not return_f:
            return y1
        return y1, field(t[0], y0), field(t[-1], y1)


def bench_cnm_unet(b: Bench, batch: int, size: int, extra: dict) -> None:
    from networks import build_model

    x = torch.rand(batch, 3, size, size, device=b.device)
    target = (torch.rand(batch, 1, size, size, device=b.device) > 0.5).float()
    torch.manual_seed(0)
    model = build_model("cnm-unet", image_size=size, **extra).to(b.device)
    variants = {"odekern (auto backend)": model}
    if has("torchdiffeq"):
        import copy

        twin = copy.deepcopy(model)
        block = twin.cnm_block
        block.nmode = _TorchdiffeqNmODE(block.nmode)
        variants["torchdiffeq odeint_adjoint"] = twin
    else:
        b.notes.append("torchdiffeq not installed: the CNM-UNet step is measured for odekern only")
    for name, net in variants.items():
        opt = torch.optim.SGD(net.parameters(), lr=0.0)  # lr 0: every repetition is the same step

        def step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(net(x), target)
            loss.backward()
            opt.step()
            return loss.detach()

        b.record("CNM-UNet training step", f"B={batch} {size}x{size}", name, step)


# ----------------------------------------------------------------------------- peak memory

def bench_memory(b: Bench, shape, steps_list) -> None:
    torch.manual_seed(0)
    for mode in ("adjoint", "checkpoint", "backprop"):
        for steps in steps_list:
            row = {"gradient": mode, "steps": steps}
            if time.monotonic() > b.deadline:
                row["skipped"] = "time budget exhausted"
                b.memory.append(row)
                continue
            try:
                block = odekern.ODEBlock(ConvRHS(shape[1]), method="rk4", step_size=1.0 / steps,
                                         gradient=mode).to(b.device)
                y0 = torch.randn(shape, device=b.device, requires_grad=True)
                if b.device.type == "cuda":
                    torch.cuda.synchronize(b.device)
                    torch.cuda.reset_peak_memory_stats(b.device)
                    base = torch.cuda.memory_allocated(b.device)
                    block(y0).square().sum().backward()
                    torch.cuda.synchronize(b.device)
                    row["peak_bytes"] = torch.cuda.max_memory_allocated(b.device) - base
                    row["measured_by"] = "torch.cuda.max_memory_allocated"
                else:
                    with PeakMemory() as mem:
                        mem.watch(block)
                        block(y0).square().sum().backward()
                    row["peak_bytes"] = mem.peak_bytes if PeakMemory.available() else None
                    row["measured_by"] = "malloc (CPU dry run)"
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {exc}"
            b.memory.append(row)


# ---------------------------------------------------------------------------------- report

def environment(device: torch.device) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "odekern_backends": {k: (v if v is True else str(v)) for k, v in dispatch.availability().items()},
        "build": odekern.build_info(),
    }
    for lib in ("triton", "torchdiffeq", "torchode", "diffrax", "jax"):
        if has(lib):
            mod = __import__(lib)
            env[lib] = getattr(mod, "__version__", "installed")
        else:
            env[lib] = None
    return env


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [f"# odekern GPU check: {env['device']}, {env['date']}", "",
             f"torch {env['torch']} (CUDA {env['torch_cuda']}), mode `{results['mode']}`", ""]
    lines += ["| group | case | provider | ms (median) | max abs diff vs reference | note |", "|---|---|---|---|---|---|"]
    for r in results["benchmarks"]:
        diff = r.get("max_abs_diff_vs_reference")
        lines.append(f"| {r['group']} | {r['case']} | {r['provider']} | {r.get('ms', '')} | "
                     f"{'' if diff is None else f'{diff:.2e}'} | {r.get('error', r.get('skipped', ''))} |")
    lines += ["", "| gradient | steps | peak bytes | measured by | note |", "|---|---|---|---|---|"]
    for r in results["memory"]:
        lines.append(f"| {r['gradient']} | {r['steps']} | {r.get('peak_bytes', '')} | {r.get('measured_by', '')} | "
                     f"{r.get('error', r.get('skipped', ''))} |")
    if results["notes"]:
        lines += [""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-results"), help="output directory")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, one repetition")
    p.add_argument("--budget-s", type=float, default=240.0, help="stop starting benchmarks after this")
    args = p.parse_args(argv)
    if args.dry_run:
        device, mode = torch.device("cpu"), "dry"
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --dry-run on a CPU machine)", file=sys.stderr)
        return 2
    else:
        device, mode = torch.device("cuda"), "full"
    size = SIZES[mode]
    b = Bench(device, size["reps"], args.budget_s, size["warmup"])
    for lib in ("torchdiffeq", "torchode"):
        if not has(lib):
            b.notes.append(f"{lib} not installed: no {lib} rows; odekern is compared with its reference backend")
    bench_nmode(b, size["nmode"])
    bench_stages(b, size["conv"], size["stage_rtol"])
    bench_cnm_unet(b, size["unet_batch"], size["unet_size"], size["unet_kw"])
    bench_memory(b, size["mem_shape"], size["mem_steps"])
    results = {"mode": mode, "env": environment(device), "benchmarks": b.rows, "memory": b.memory, "notes": b.notes}
    atomic_files.atomic_write_bytes(os.path.join(args.out, "benchmarks.json"),
                                    json.dumps(results, indent=1, default=str).encode("utf-8"))
    atomic_files.atomic_write_bytes(os.path.join(args.out, "benchmarks.md"), markdown(results).encode("utf-8"))
    failed = [r for r in b.rows + b.memory if "error" in r]
    print(markdown(results))
    for r in failed:
        print(f"gpu_check: FAILED {r}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
