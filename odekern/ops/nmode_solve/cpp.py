"""The ``cpu`` and ``cuda`` backends of nmode_solve: thin calls into the C++/CUDA extension
(``torch.ops.odekern_C.nmode_solve_{fwd,bwd}``; the dispatcher picks the device's kernel).
Implements the backend contract of ``config.py``."""

from __future__ import annotations

import torch

from odekern.ops.nmode_solve.config import NmodeConfig


def forward(y0: torch.Tensor, g: torch.Tensor, t0: float, t1: float, cfg: NmodeConfig, need_f: bool):
    method, step_size, rtol, atol, control, _gradient, max_steps = cfg.to_args()
    return torch.ops.odekern_C.nmode_solve_fwd(y0, g, t0, t1, method, step_size, rtol, atol, control,
                                              max_steps, need_f)


def backward(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0: float, t1: float, cfg: NmodeConfig):
    method, step_size, rtol, atol, control, gradient, max_steps = cfg.to_args()
    return torch.ops.odekern_C.nmode_solve_bwd(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0, t1, method,
                                              step_size, rtol, atol, control, gradient, max_steps)


def checks_output_finite(y0: torch.Tensor) -> bool:
    """The C++ CPU kernels raise on a non-finite y1 themselves (a probe added in their last
    pass), so the caller need not read y1 again to find one."""
    return y0.device.type == "cpu"


def supports(y0=None, g=None, cfg=None, **_) -> list[str]:
    reasons = []
    if y0 is not None and y0.dtype not in (torch.float32, torch.float64):
        reasons.append(f"the C++ kernels support float32/float64, got {y0.dtype}")
    if not hasattr(torch.ops.odekern_C, "nmode_solve_fwd"):
        reasons.append("odekern._C was built without nmode_solve (rebuild the extension)")
    return reasons


# Fake (meta) kernels of the C++ ops, so torch.compile, meta tensors and opcheck can trace them.
if hasattr(torch.ops.odekern_C, "nmode_solve_fwd"):
    @torch.library.register_fake("odekern_C::nmode_solve_fwd")
    def _(y0, g, t0, t1, method, step_size, rtol, atol, control, max_num_steps, need_f):
        n_f = y0.numel() if need_f else 0
        stats_len = torch.library.get_ctx().new_dynamic_size()
        return (torch.empty_like(y0), y0.new_empty(n_f), y0.new_empty(n_f),
                torch.empty(stats_len, dtype=torch.float64, device="cpu"))

    @torch.library.register_fake("odekern_C::nmode_solve_bwd")
    def _(grad_y1, grad_f0, grad_f1, y0, g, y1, stats, t0, t1, method, step_size, rtol, atol, control,
          gradient, max_num_steps):
        return torch.empty_like(y0), torch.empty_like(g)
