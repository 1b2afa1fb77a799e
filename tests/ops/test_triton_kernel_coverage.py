"""Coverage guard of the Triton backend: every Triton kernel (each ``*_kernel`` jit function of
Triton backend of odekern/ops/*/) executes in the interpreter, in float32 and float64, through the
public ops with ``backend="triton"``, on tiny inputs, and matches the reference. The
per-method / per-gradient-mode checks at larger sizes are the backend-parametrised tests
(tests/ops/test_rk_stage.py, test_nmode_solve_triton.py); this test makes sure a new kernel
cannot be added without being run."""

from __future__ import annotations

import importlib

import pytest
import torch

import odekern
from odekern import dispatch
from odekern.ops.rk_stage import reference as rk_ref
from odekern.ops.rk_stage import rk_combine, rk_error_ratio
from odekern.testing import BACKEND_SOLVE_ATOL, ERROR_RATIO_RTOL, assert_close, randn
from tools import gpucheck

if dispatch.availability().get("triton") is not True:
    pytest.skip(f"triton backend unavailable: {dispatch.availability().get('triton')}", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")

# (solve kwargs, t1): each launches a different set of nmode kernels; two steps each at most.
NMODE_RUNS = [
    (dict(method="rk4", step_size=0.1), 0.15),
    (dict(method="dopri5", control="global", rtol=1e-4, atol=1e-6), 0.02),
    (dict(method="dopri5", control="per_element", rtol=1e-4, atol=1e-6), 0.02),
]


def triton_kernels() -> set[str]:
    from triton.runtime.interpreter import InterpretedFunction

    names = set()
    for modname in gpucheck.triton_modules():
        mod = importlib.import_module(modname)
        names |= {n for n, obj in vars(mod).items()
                  if isinstance(obj, InterpretedFunction) and n.endswith("_kernel")}
    return names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_triton_kernel_runs_and_matches_reference(dtype, triton_launches):
    for kw, t1 in NMODE_RUNS:
        for gradient in ("exact", "adjoint"):
            outs = []
            for backend in ("triton", "reference"):
                y0 = randn(2, 5, dtype=dtype, seed=1).requires_grad_(True)
                g = randn(5, dtype=dtype, seed=2, scale=0.7).requires_grad_(True)
                y1 = odekern.nmode_solve(y0, g, 0.0, t1, backend=backend, gradient=gradient, **kw)
                y1.pow(2).sum().backward()
                outs.append((y1.detach(), y0.grad, g.grad))
            for got, want in zip(*outs):
                assert_close(got, want, atol=BACKEND_SOLVE_ATOL[dtype])
    y, k1, k2 = (randn(37, dtype=dtype, seed=s) for s in (3, 4, 5))
    out = torch.empty_like(y)
    assert_close(rk_combine(y, [k1, k2], [0.1, -0.2], out=out, backend="triton"),
                 rk_ref.rk_combine(y, [k1, k2], [0.1, -0.2]))
    y1 = rk_ref.rk_combine(y, [k1, k2], [0.1, -0.2])
    want_ratio = rk_ref.rk_error_ratio(y, y1, [k1, k2], [0.01, 0.02], 1e-3, 1e-6)
    assert_close(rk_error_ratio(y, y1, [k1, k2], [0.01, 0.02], rtol=1e-3, atol=1e-6, backend="triton"), want_ratio, rtol=ERROR_RATIO_RTOL)

    name = str(dtype).removeprefix("torch.")
    ran = {kernel for kernel, dtypes in triton_launches if name in dtypes}
    kernels = triton_kernels()
    assert len(kernels) >= 10, sorted(kernels)
    assert not kernels - ran, f"Triton kernels never run in {name}: {sorted(kernels - ran)}"
