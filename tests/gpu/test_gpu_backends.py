"""The GPU test subset run by scripts/gpu-check.sh on a machine with a CUDA device: the cuda
and triton backends on CUDA tensors against the reference backend (also on the GPU) for every
op, dtype, method and gradient mode, the solvers' fused paths, and both networks forward +
backward on cuda against the same weights on CPU. Skipped (with the reason) without a GPU;
on CPU the CUDA kernels are covered by tests/cuda_emulation and Triton by its interpreter.
Tolerances: odekern.testing, as the CPU tests of the same ops."""

from __future__ import annotations

import copy

import pytest
import torch

import odekern
from odekern import dispatch
from odekern.checkpoint import checkpointable_methods
from odekern.ops.nmode_solve import fast_sine
from odekern.ops.rk_stage import reference as rk_ref
from odekern.ops.rk_stage import rk_combine, rk_error_ratio
from odekern.testing import assert_close, backend_peak_atol, randn

# A mark, not a module-level skip: without a GPU the module is still imported and every test
# collected (the dry run of scripts/gpu-check.sh checks that much on CPU).
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: the GPU subset runs on a GPU machine (scripts/gpu-check.sh)")

DEV = torch.device("cuda")
GPU_BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float64]
NMODE_CASES = {
    "dopri5-global": (dict(method="dopri5", rtol=1e-7, atol=1e-9, control="global"), 0.05),
    "dopri5-per_element": (dict(method="dopri5", rtol=1e-7, atol=1e-9, control="per_element"), 0.05),
    "rk4": (dict(method="rk4", step_size=0.05), 1.0),
    "rk4_classic": (dict(method="rk4_classic", step_size=0.1), 0.35),
    "midpoint": (dict(method="midpoint", step_size=0.1), 0.3),
    "euler": (dict(method="euler", step_size=0.1), 0.35),
}


def test_cuda_and_triton_backends_are_available():
    avail = dispatch.availability()
    assert avail["cuda"] is True, f"cuda backend unavailable on a GPU machine: {avail['cuda']}"
    assert avail["triton"] is True, f"triton backend unavailable on a GPU machine: {avail['triton']}"
    assert odekern.build_info().get("with_cuda", True), odekern.build_info()


def _nmode_run(backend, y0, g, t1, gradient, kw):
    a = y0.detach().clone().requires_grad_(True)
    b = g.detach().clone().requires_grad_(True)
    y1, f0, f1 = odekern.nmode_solve(a, b, 0.0, t1, return_f=True, backend=backend, gradient=gradient, **kw)
    w = torch.linspace(-1.0, 1.0, y1.numel(), dtype=y1.dtype, device=y1.device).view_as(y1)
    ((w * y1).sum() + (f1 ** 2).sum() + (w * f0).sum()).backward()
    return y1.detach(), f0.detach(), f1.detach(), a.grad, b.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("gradient", ["checkpoint", "adjoint"])
@pytest.mark.parametrize("case", list(NMODE_CASES))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_nmode_solve_matches_reference_on_gpu(backend, case, gradient, dtype):
    kw, t1 = NMODE_CASES[case]
    y0 = randn(2, 3, 17, 19, dtype=dtype, seed=0).to(DEV)  # odd: partial blocks
    g = randn(1, 3, 17, 19, dtype=dtype, seed=1, scale=0.7).to(DEV)
    got = _nmode_run(backend, y0, g, t1, gradient, kw)
    want = _nmode_run("reference", y0, g, t1, gradient, kw)
    for name, x, r in zip(("y1", "f0", "f1", "grad_y0", "grad_g"), got, want):
        kind = "cross" if dtype == torch.float32 and case == "dopri5-per_element" else "rounding"
        assert_close(x, r, kind=kind, msg=f"{backend} {case} {gradient}: {name}", atol=backend_peak_atol(r))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(NMODE_CASES))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_nmode_solve_names_inputs_beyond_the_fused_sine_range_on_gpu(backend, case, dtype):
    """The fused sine's range holds on the GPU kernels too: the input is named, no wrong sine."""
    kw, t1 = NMODE_CASES[case]
    reach = 4 * fast_sine.REDUCTIONS[dtype].range
    y0 = torch.linspace(0.1, 0.9, 64, dtype=dtype, device=DEV)
    g = torch.linspace(reach, 2 * reach, 64, dtype=dtype, device=DEV)
    with pytest.raises(ValueError, match=r"\|y0 \+ g\| reaches"):
        odekern.nmode_solve(y0, g, 0.0, t1, backend=backend, **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("nk", [1, 2, 3, 4, 5, 6, 7, 9])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_rk_stage_matches_reference_on_gpu(backend, nk, dtype):
    n = 4096 * 256 + 333 if nk == 7 else 1031  # nk 7 also crosses the CUDA grid-stride split
    y = randn(n, dtype=dtype, seed=0).to(DEV)
    ks = [randn(n, dtype=dtype, seed=j + 1).to(DEV) for j in range(nk)]
    coeffs = [0.1 * (j + 1) - 0.27 for j in range(nk)]
    err = [0.02 * (j - 2) + 0.001 for j in range(nk)]
    assert_close(rk_combine(y, ks, coeffs, out=torch.empty_like(y), backend=backend), rk_ref.rk_combine(y, ks, coeffs))
    assert_close(rk_combine(None, ks, coeffs, out=torch.empty_like(y), backend=backend),
                 rk_ref.rk_combine(None, ks, coeffs))
    if nk <= 7:
        y1 = rk_ref.rk_combine(y, ks, coeffs)
        want_ratio = rk_ref.rk_error_ratio(y, y1, ks, err, 1e-3, 1e-6)
        assert_close(rk_error_ratio(y, y1, ks, err, rtol=1e-3, atol=1e-6, backend=backend), want_ratio,
                     rtol=1e-5 if dtype == torch.float32 else 1e-10)


class _ConvRHS(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, _t, y):
        return torch.tanh(self.conv(y))


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("method", ["dopri5", "rk4", "midpoint", "euler", "heun3", "fixed_adams"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_ode_block_fused_stages_match_reference_on_gpu(backend, method, gradient):
    if gradient == "checkpoint" and method not in checkpointable_methods():
        pytest.skip(f"checkpoint supports {checkpointable_methods()}")
    torch.manual_seed(0)
    func = _ConvRHS(4).to(DEV).double()
    kw = dict(method=method, gradient=gradient, rtol=1e-6, atol=1e-8)
    if method != "dopri5":
        kw["step_size"] = 0.125
    outs = []
    for be in (backend, "reference"):
        block = odekern.ODEBlock(copy.deepcopy(func), backend=be, **kw)
        x = randn(2, 4, 9, 11, dtype=torch.float64, seed=3).to(DEV).requires_grad_(True)
        y = block(x)
        y.square().sum().backward()
        outs.append([y.detach(), x.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*outs):
        assert_close(a, b, kind="cross")


@pytest.mark.parametrize("name, cfg, size", [
    ("cnm-unet", dict(image_size=32, encoder_widths=(4, 8, 8, 8, 8), rtol=1e-5, atol=1e-7), 32),
    ("continuous-unet", dict(base_filters=2), 32),
])
def test_networks_forward_backward_on_cuda_match_cpu(name, cfg, size):
    from networks import build_model

    torch.manual_seed(0)
    model = build_model(name, **cfg).double()
    results = []
    for device in (DEV, torch.device("cpu")):
        m = copy.deepcopy(model).to(device)
        x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
        x.requires_grad_(True)
        y = m(x)
        w = torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype, device=device).view_as(y)
        (w * y).sum().backward()
        results.append([t.detach().cpu() for t in [y, x.grad] + [p.grad for p in m.parameters()]])
    for a, b in zip(*results):
        assert_close(a, b, kind="cross")
