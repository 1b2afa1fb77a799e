"""Host side of the Triton backend of nmode_solve: the contract of config.py (``supports``,
``forward``, ``backward``), allocation, grids and launch options, and torchdiffeq's global step
control driven from the host (global_control's loop, one attempt kernel per step, the accept
decision from a sum of per-program float64 partials, as the CPU backend). The step weights are
the reference's (coefficients.py).

Backward: saved tensors are y0 and g (plus the O(steps) ``stats``, and y(t1), where the
continuous adjoint starts). Per-lane scratch is
register arrays of REGISTER_CHECKPOINTS states, indexed through one-hot selects (registers
cannot be indexed dynamically): the exact backward of a shared step sequence uses two-level
checkpointing; per-element control replays the lane's controller from the start and records
REGISTER_CHECKPOINTS accepted steps per replay, newest segment first.
"""

from __future__ import annotations

import math

import torch
import triton

from odekern.ops.nmode_solve import coefficients, failures, global_control, reference
from odekern.ops.nmode_solve.config import METHODS, MethodId, NmodeConfig, fixed_grid_steps
from odekern.ops.nmode_solve.triton.kernels import (_nmode_adjoint_bwd_kernel, _nmode_global_attempt_kernel,
                                                    _nmode_global_d2_kernel, _nmode_global_init_kernel,
                                                    _nmode_list_bwd_kernel, _nmode_list_fwd_kernel,
                                                    _nmode_pe_bwd_kernel, _nmode_pe_fwd_kernel)

BLOCK = 128
NUM_WARPS = 4
# maxnreg = the hardware cap, stated explicitly: left to its own heuristic, ptxas caps some
# kernels below what they need and spills a few bytes (seen: the fp32 per-element adjoint on
# sm_90, 80 registers + 4 B spilled; with the cap stated it uses 88 and spills nothing).
MAXNREG = 255
LAUNCH = {"num_warps": NUM_WARPS, "maxnreg": MAXNREG}
# States per lane held in registers by the backward kernels (the C++ kernels keep
# config.CHECKPOINTS on the stack instead). Two-level checkpointing replays a shared step
# sequence of up to REGISTER_CHECKPOINTS**2 steps once; 16 keeps the scratch in registers (no
# spills at the launch options above).
REGISTER_CHECKPOINTS = 16
KERNEL_DTYPES = (torch.float32, torch.float64)
DOPRI5 = coefficients.of("dopri5")
# Stage slots of the weight vectors the kernels read (dopri5's seven stages).
STAGE_SLOTS = DOPRI5.stages


def supports(*, y0: torch.Tensor | None = None, g: torch.Tensor | None = None,
             cfg: NmodeConfig | None = None, **_) -> list[str]:
    """Reasons this backend refuses the inputs (empty list: it runs them)."""
    reasons = []
    if y0 is not None:
        if y0.dtype not in KERNEL_DTYPES:
            reasons.append(f"triton kernels take float32/float64, got y0 of dtype {y0.dtype}")
        if g is not None and g.device != y0.device:
            reasons.append(f"g is on {g.device} but y0 is on {y0.device}")
        if g is not None and g.dtype != y0.dtype:
            reasons.append(f"g has dtype {g.dtype}, y0 has {y0.dtype}")
    if cfg is not None and cfg.method not in METHODS:
        reasons.append(f"method {cfg.method!r} is not implemented in Triton")
    return reasons


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _weights(method: str, theta: float, dtype, device) -> torch.Tensor:
    """Step weights as a 7-vector in the state's dtype: b, or dopri5's dense output at theta
    (computed in float64, then rounded, like the header's step_weights)."""
    if method == "dopri5" and theta != 1.0:
        w = reference.dense_weights(theta)
    else:
        b = coefficients.of(method).b
        w = list(b) + [0.0] * (STAGE_SLOTS - len(b))
    return torch.tensor(w, dtype=torch.float64).to(dtype=dtype, device=device)


def _params(device, *values: float) -> torch.Tensor:
    # Scalars travel as a float64 tensor: Triton would narrow Python floats to float32.
    return torch.tensor(values, dtype=torch.float64, device=device)


def _check_status(status: torch.Tensor, cfg: NmodeConfig) -> None:
    worst = int(status.max().item()) if status.numel() else failures.Status.OK
    failure = failures.status_failure(worst, cfg.max_num_steps)
    if failure is not None:
        raise failure


def _stats(n_acc: int, n_rej: int, theta: float, dts: list[float]) -> torch.Tensor:
    return torch.tensor([float(n_acc), float(n_rej), float(theta), *dts], dtype=torch.float64)


class _TritonGlobalPasses:
    """The passes of global control (global_control.GlobalPasses): one kernel each, whose
    per-program float64 partials are summed for the host's decision (one synchronisation per
    attempt, as torchdiffeq's)."""

    def __init__(self, y0, g, cfg, need_f, y1, f0, f1):
        self.y0, self.g, self.cfg, self.need_f = y0, g, cfg, need_f
        self.y1, self.f0, self.f1 = y1, f0, f1
        self.N, self.G = y0.numel(), g.numel()
        self.grid = _grid(self.N)
        self.ycur, self.fcur = y0.clone(), torch.empty_like(y0)
        self.ynew, self.fnew = torch.empty_like(y0), torch.empty_like(y0)
        self.part = torch.empty(self.grid[0], dtype=torch.float64, device=y0.device)
        self.w_one = _weights("dopri5", 1.0, y0.dtype, y0.device)

    def initial_norms(self):
        part2 = torch.empty(2 * self.grid[0], dtype=torch.float64, device=self.y0.device)
        _nmode_global_init_kernel[self.grid](self.y0, self.g, self.fcur, part2,
                                             _params(self.y0.device, self.cfg.rtol, self.cfg.atol),
                                             self.N, self.G, BLOCK=BLOCK, **LAUNCH)
        sums = part2.view(-1, 2).sum(0).tolist()
        if self.need_f:
            self.f0.copy_(self.fcur)
        return math.sqrt(sums[0] / self.N), math.sqrt(sums[1] / self.N)

    def initial_change(self, h0):
        _nmode_global_d2_kernel[self.grid](self.y0, self.fcur, self.g, self.part,
                                           _params(self.y0.device, self.cfg.rtol, self.cfg.atol, h0),
                                           self.N, self.G, BLOCK=BLOCK, **LAUNCH)
        return math.sqrt(self.part.sum().item() / self.N)

    def attempt(self, dt, finishing, theta):
        wl = _weights("dopri5", theta, self.y0.dtype, self.y0.device) if finishing else self.w_one
        _nmode_global_attempt_kernel[self.grid](
            self.ycur, self.fcur, self.g, self.ynew, self.fnew, self.part, self.y1,
            self.f1 if self.need_f else self.y1, _params(self.y0.device, self.cfg.rtol, self.cfg.atol, dt),
            wl, self.N, self.G, FINISHING=finishing, NEED_F=self.need_f, BLOCK=BLOCK, **LAUNCH)
        return math.sqrt(self.part.sum().item() / self.N)

    def accept(self):
        self.ycur, self.ynew = self.ynew, self.ycur
        self.fcur, self.fnew = self.fnew, self.fcur


def _global_forward(y0, g, t0, t1, cfg, need_f, y1, f0, f1):
    """Global control: global_control's loop over the passes above."""
    passes = _TritonGlobalPasses(y0, g, cfg, need_f, y1, f0, f1)
    dts, n_rej, theta = global_control.global_dopri5(passes, t0, t1, cfg.max_num_steps)
    return _stats(len(dts), n_rej, theta, dts)


def forward(y0: torch.Tensor, g: torch.Tensor, t0: float, t1: float, cfg: NmodeConfig,
            need_f: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The contract's forward: (y1, f0, f1, stats)."""
    reasons = supports(y0=y0, g=g, cfg=cfg)
    if reasons:
        raise RuntimeError("nmode_solve (triton): " + "; ".join(reasons))
    t0, t1 = float(t0), float(t1)
    # The op layer hands over flat tensors; a strided view would be misread by the kernels.
    y0, g = y0.contiguous(), g.contiguous()
    N, G = y0.numel(), g.numel()
    y1 = torch.empty_like(y0)
    f0 = torch.empty_like(y0) if need_f else y0.new_empty(0)
    f1 = torch.empty_like(y0) if need_f else y0.new_empty(0)
    if not cfg.adaptive:
        dts = fixed_grid_steps(t0, t1, float(cfg.step_size), cfg.max_num_steps)
        stats = _stats(len(dts), 0, 1.0, dts)
        if N:
            w = _weights(cfg.method, 1.0, y0.dtype, y0.device)
            dts_t = torch.tensor(dts, dtype=torch.float64, device=y0.device)
            _nmode_list_fwd_kernel[_grid(N)](y0, g, y1, f0 if need_f else y1, f1 if need_f else y1,
                                             dts_t, w, w, len(dts), N, G, METHOD=int(MethodId.of(cfg.method)),
                                             NEED_F=need_f, BLOCK=BLOCK, **LAUNCH)
        return y1, f0, f1, stats
    if N == 0:
        return y1, f0, f1, _stats(0, 0, 1.0, [])
    if cfg.control == "global":
        stats = _global_forward(y0, g, t0, t1, cfg, need_f, y1, f0, f1)
        return y1, f0, f1, stats
    grid = _grid(N)
    status = torch.zeros(grid[0], dtype=torch.int32, device=y0.device)
    _nmode_pe_fwd_kernel[grid](y0, g, y1, f0 if need_f else y1, f1 if need_f else y1, status,
                               _params(y0.device, cfg.rtol, cfg.atol, t1 - t0), cfg.max_num_steps,
                               N, G, NEED_F=need_f, C=REGISTER_CHECKPOINTS, BLOCK=BLOCK, **LAUNCH)
    _check_status(status, cfg)
    return y1, f0, f1, _stats(0, 0, 1.0, [])


def _present(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def backward(grad_y1: torch.Tensor, grad_f0: torch.Tensor | None, grad_f1: torch.Tensor | None,
             y0: torch.Tensor, g: torch.Tensor, y1: torch.Tensor | None, stats: torch.Tensor, t0: float,
             t1: float, cfg: NmodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract's backward: (grad_y0 [N], grad_g [G])."""
    reasons = supports(y0=y0, g=g, cfg=cfg)
    if reasons:
        raise RuntimeError("nmode_solve (triton): " + "; ".join(reasons))
    t0, t1 = float(t0), float(t1)
    y0, g = y0.contiguous(), g.contiguous()
    N, G, dev = y0.numel(), g.numel(), y0.device
    grad_y0 = torch.empty_like(y0)
    if N == 0:
        return grad_y0, torch.zeros_like(g)
    gy1 = grad_y1.contiguous()
    has_gf0, has_gf1 = _present(grad_f0), _present(grad_f1)
    gf0 = grad_f0.contiguous() if has_gf0 else gy1
    gf1 = grad_f1.contiguous() if has_gf1 else gy1
    g_full = torch.empty_like(y0)  # per-element grad_g, summed over the N // G repeats below
    grid = _grid(N)
    status = torch.zeros(grid[0], dtype=torch.int32, device=dev)
    st = stats.detach().to("cpu", torch.float64)
    n_list, theta = int(st[0].item()), float(st[2].item())
    list_mode = not cfg.adaptive or cfg.control == "global"
    dts_t = st[3:3 + n_list].to(dev)
    w = _weights(cfg.method, 1.0, y0.dtype, dev)
    wl = _weights(cfg.method, theta, y0.dtype, dev)
    par = _params(dev, cfg.rtol, cfg.atol, t1 - t0)
    common = dict(HAS_GF0=has_gf0, HAS_GF1=has_gf1, C=REGISTER_CHECKPOINTS, BLOCK=BLOCK, **LAUNCH)
    if cfg.gradient == "checkpoint" and list_mode:
        _nmode_list_bwd_kernel[grid](y0, g, gy1, gf0, gf1, grad_y0, g_full, dts_t, w, wl, n_list, N, G,
                                     METHOD=int(MethodId.of(cfg.method)), **common)
    elif cfg.gradient == "checkpoint":
        _nmode_pe_bwd_kernel[grid](y0, g, gy1, gf0, gf1, grad_y0, g_full, status, par,
                                   cfg.max_num_steps, N, G, **common)
    else:
        adj = [] if cfg.adaptive else fixed_grid_steps(0.0, t1 - t0, float(cfg.step_size), cfg.max_num_steps)
        adj_t = torch.tensor(adj or [0.0], dtype=torch.float64, device=dev)
        _nmode_adjoint_bwd_kernel[grid](y0, y1.contiguous(), g, gy1, gf0, gf1, grad_y0, g_full, status, par, adj_t,
                                        len(adj), cfg.max_num_steps, N, G, METHOD=int(MethodId.of(cfg.method)),
                                        **common)
    _check_status(status, cfg)
    grad_g = g_full.view(N // G, G).sum(0)
    return grad_y0, grad_g
