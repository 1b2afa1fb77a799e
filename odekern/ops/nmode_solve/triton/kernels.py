"""The nmODE Triton kernels: element-parallel programs of BLOCK consecutive elements (element e
reads g[e % G]) built from the device functions of jit_math.py. launch.py runs them.

- ``_nmode_list_fwd_kernel`` / ``_nmode_list_bwd_kernel``: a shared step list (fixed grids, and
  dopri5's globally controlled steps once known), all steps in registers; the backward uses
  two-level checkpointing with C states per lane;
- ``_nmode_global_{init,d2,attempt}_kernel``: the pieces of torchdiffeq's host-driven global
  control (initial-step norms, then one launch per attempted step that also reduces the
  squared error ratios into per-program float64 partials);
- ``_nmode_pe_{fwd,bwd}_kernel``: per-element control, each lane its own controller;
- ``_nmode_adjoint_bwd_kernel``: the continuous adjoint.
"""

import triton
import triton.language as tl

from odekern.ops.nmode_solve.triton.constants_generated import (  # noqa: F401 - read by the jit code
    DOPRI5, STATUS_OK,
)
from odekern.ops.nmode_solve.triton.jit_math import (
    combine, dense_weights, dopri5_error, initial_step, list_solve, list_solve_adjoint, list_step,
    list_step_vjp, load_weights, pe_dopri5, pick, rhs, rhs_vjp, stage_input, step, step_vjp,
    sys_stages,
)


# ======================================================= a program's elements and cotangents

@triton.jit
def program_lanes(N, BLOCK: tl.constexpr):
    """This program's id, its BLOCK element offsets (int64: N may pass 2^31) and which are < N."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return pid, offs, offs < N


@triton.jit
def load_lanes(y_ptr, g_ptr, offs, lane, G):
    """The lanes' state and their g (element e reads g[e % G]); masked-off lanes read 0."""
    return tl.load(y_ptr + offs, mask=lane, other=0.0), tl.load(g_ptr + offs % G, mask=lane, other=0.0)


@triton.jit
def seed_cotangents(y1, g, gy1_ptr, gf1_ptr, offs, lane, HAS_GF1: tl.constexpr):
    """(ybar, gbar) at t1: grad_y1, plus grad_f1 through f1 = f(y1, g) when it is given."""
    yb = tl.load(gy1_ptr + offs, mask=lane, other=0.0)
    gb = tl.zeros_like(yb)
    if HAS_GF1:
        dy, dg = rhs_vjp(y1, g, tl.load(gf1_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    return yb, gb


@triton.jit
def store_cotangents(y0, g, yb, gb, gf0_ptr, gy0_ptr, gg_ptr, offs, lane, HAS_GF0: tl.constexpr):
    """Adds grad_f0 through f0 = f(y0, g) when it is given, then stores grad_y0 and the lanes'
    grad_g terms (launch.py sums them over the repeats of g)."""
    if HAS_GF0:
        dy, dg = rhs_vjp(y0, g, tl.load(gf0_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    tl.store(gy0_ptr + offs, yb, mask=lane)
    tl.store(gg_ptr + offs, gb, mask=lane)


@triton.jit(do_not_specialize=["n", "N", "G"])
def _nmode_list_fwd_kernel(y0_ptr, g_ptr, y1_ptr, f0_ptr, f1_ptr, dts_ptr, w_ptr, wl_ptr, n, N, G,
                           METHOD: tl.constexpr, NEED_F: tl.constexpr, BLOCK: tl.constexpr):
    """Forward along a shared step list (fixed grids), all steps in registers."""
    _pid, offs, lane = program_lanes(N, BLOCK)
    y, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    if NEED_F:
        tl.store(f0_ptr + offs, rhs(y, g), mask=lane)
    y = list_solve(y, g, dts_ptr, n, w_ptr, wl_ptr, METHOD)
    tl.store(y1_ptr + offs, y, mask=lane)
    if NEED_F:
        tl.store(f1_ptr + offs, rhs(y, g), mask=lane)


@triton.jit(do_not_specialize=["N", "G"])
def _nmode_global_init_kernel(y0_ptr, g_ptr, f_ptr, part_ptr, par_ptr, N, G, BLOCK: tl.constexpr):
    """f0 = f(y0), and per-program sums of (y0/scale)^2, (f0/scale)^2 (initial-step norms)."""
    pid, offs, lane = program_lanes(N, BLOCK)
    y, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    T = y.dtype
    f = rhs(y, g)
    tl.store(f_ptr + offs, f, mask=lane)
    scale = tl.load(par_ptr + 1).to(T) + tl.abs(y) * tl.load(par_ptr + 0).to(T)
    u = (y / scale).to(tl.float64)
    v = (f / scale).to(tl.float64)
    tl.store(part_ptr + 2 * pid, tl.sum(tl.where(lane, u * u, 0.0), axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.where(lane, v * v, 0.0), axis=0))


@triton.jit(do_not_specialize=["N", "G"])
def _nmode_global_d2_kernel(y0_ptr, f_ptr, g_ptr, part_ptr, par_ptr, N, G, BLOCK: tl.constexpr):
    """Per-program sums of ((f(y0 + h0 f0) - f0) / scale)^2; par = [rtol, atol, h0]."""
    pid, offs, lane = program_lanes(N, BLOCK)
    y, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    f = tl.load(f_ptr + offs, mask=lane, other=0.0)
    T = y.dtype
    f1 = rhs(y + tl.load(par_ptr + 2).to(T) * f, g)
    v = ((f1 - f) / (tl.load(par_ptr + 1).to(T) + tl.abs(y) * tl.load(par_ptr + 0).to(T))).to(tl.float64)
    tl.store(part_ptr + pid, tl.sum(tl.where(lane, v * v, 0.0), axis=0))


@triton.jit(do_not_specialize=["N", "G"])
def _nmode_global_attempt_kernel(y_ptr, f_ptr, g_ptr, ynew_ptr, fnew_ptr, part_ptr, out_ptr, fout_ptr,
                                 par_ptr, wl_ptr, N, G, FINISHING: tl.constexpr, NEED_F: tl.constexpr,
                                 BLOCK: tl.constexpr):
    """One dopri5 attempt of the shared step dt (par = [rtol, atol, dt]) for every element:
    candidate state and FSAL stage, and the per-program sum of squared error ratios (fused
    reduction of torchdiffeq's RMS norm). On the attempt that passes t1 it also writes the
    dense output at theta (weights wl) and, with NEED_F, f there."""
    pid, offs, lane = program_lanes(N, BLOCK)
    y, g = load_lanes(y_ptr, g_ptr, offs, lane, G)
    f = tl.load(f_ptr + offs, mask=lane, other=0.0)
    T = y.dtype
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    dt = tl.load(par_ptr + 2).to(T)
    ky, _ka, _kb = sys_stages(y, y, g, dt, f, f, f, DOPRI5, False)
    y1 = stage_input(y, dt, (f, ky[0], ky[1], ky[2], ky[3], ky[4]), DOPRI5, 6)
    err = dopri5_error(dt, f, ky[1], ky[2], ky[3], ky[4], ky[5])
    r = err / (atol.to(T) + rtol.to(T) * tl.maximum(tl.abs(y), tl.abs(y1)))
    r = r.to(tl.float64)
    tl.store(part_ptr + pid, tl.sum(tl.where(lane, r * r, 0.0), axis=0))
    tl.store(ynew_ptr + offs, y1, mask=lane)
    tl.store(fnew_ptr + offs, ky[5], mask=lane)
    if FINISHING:
        wl = load_weights(wl_ptr, T)
        out = combine(y, dt, wl[0], wl[1], wl[2], wl[3], wl[4], wl[5], wl[6],
                       f, ky[0], ky[1], ky[2], ky[3], ky[4], ky[5], DOPRI5)
        tl.store(out_ptr + offs, out, mask=lane)
        if NEED_F:
            tl.store(fout_ptr + offs, rhs(out, g), mask=lane)


@triton.jit(do_not_specialize=["max_steps", "N", "G"])
def _nmode_pe_fwd_kernel(y0_ptr, g_ptr, y1_ptr, f0_ptr, f1_ptr, status_ptr, par_ptr, max_steps, N, G,
                         NEED_F: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Forward with per-element step control (par = [rtol, atol, t1 - t0])."""
    pid, offs, lane = program_lanes(N, BLOCK)
    y, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_end = tl.load(par_ptr + 2)
    if NEED_F:
        tl.store(f0_ptr + offs, rhs(y, g), mask=lane)
    h = initial_step(y, y, g, rtol, atol, False)
    y, _a, _b, _n, _th, status, _by, _bd = pe_dopri5(
        y, y, y, g, h, lane.to(tl.int32), t_end, rtol, atol, max_steps, 0, 0, False, False, C, BLOCK)
    tl.store(y1_ptr + offs, y, mask=lane)
    if NEED_F:
        tl.store(f1_ptr + offs, rhs(y, g), mask=lane)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


@triton.jit(do_not_specialize=["n", "N", "G"])
def _nmode_list_bwd_kernel(y0_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, dts_ptr, w_ptr,
                           wl_ptr, n, N, G, METHOD: tl.constexpr, HAS_GF0: tl.constexpr,
                           HAS_GF1: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Exact backward along a shared step list, two-level checkpointing in registers: C
    checkpoints along the solve, then each segment (<= C steps) replayed into a C-state
    buffer and walked back; longer segments recompute each state from their checkpoint."""
    _pid, offs, lane = program_lanes(N, BLOCK)
    y0, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    T = y0.dtype
    w = load_weights(w_ptr, T)
    wl = load_weights(wl_ptr, T)
    rows = tl.arange(0, C)[:, None]
    seg = tl.maximum((n + C - 1) // C, 1)
    ck = tl.zeros([C, BLOCK], T)
    y = y0
    for i in range(n):
        ck = tl.where((rows == i // seg) & (i % seg == 0), y[None, :], ck)
        dt = tl.load(dts_ptr + i).to(T)
        y = list_step(y, g, dt, w, wl, i == n - 1, METHOD)
    yb, gb = seed_cotangents(y, g, gy1_ptr, gf1_ptr, offs, lane, HAS_GF1)
    n_seg = (n + seg - 1) // seg
    buf = tl.zeros([C, BLOCK], T)
    for j in range(n_seg):
        s = n_seg - 1 - j
        start = s * seg
        end = tl.minimum(start + seg, n)
        yy = pick(ck, rows, s)
        if end - start <= C:
            for i in range(start, end):
                buf = tl.where(rows == i - start, yy[None, :], buf)
                if i + 1 < end:
                    yy = step(yy, g, tl.load(dts_ptr + i).to(T), w[0], w[1], w[2], w[3], w[4],
                               w[5], w[6], METHOD)
            for jj in range(end - start):
                i = end - 1 - jj
                yb, dg = list_step_vjp(pick(buf, rows, i - start), g, tl.load(dts_ptr + i).to(T), w, wl,
                                       i == n - 1, yb, METHOD)
                gb += dg
        else:
            for jj in range(end - start):
                i = end - 1 - jj
                yi = yy
                for m in range(start, i):
                    yi = step(yi, g, tl.load(dts_ptr + m).to(T), w[0], w[1], w[2], w[3], w[4],
                               w[5], w[6], METHOD)
                yb, dg = list_step_vjp(yi, g, tl.load(dts_ptr + i).to(T), w, wl, i == n - 1, yb, METHOD)
                gb += dg
    store_cotangents(y0, g, yb, gb, gf0_ptr, gy0_ptr, gg_ptr, offs, lane, HAS_GF0)


@triton.jit(do_not_specialize=["max_steps", "N", "G"])
def _nmode_pe_bwd_kernel(y0_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, status_ptr, par_ptr,
                         max_steps, N, G, HAS_GF0: tl.constexpr, HAS_GF1: tl.constexpr,
                         C: tl.constexpr, BLOCK: tl.constexpr):
    """Exact backward with per-element control: each lane's controller is replayed from the
    start, recording C accepted steps per replay (newest segment first), and reverse mode
    walks back through them. Same steps as the forward: same arithmetic, same order."""
    pid, offs, lane = program_lanes(N, BLOCK)
    lane_i = lane.to(tl.int32)
    y0, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    T = y0.dtype
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_end = tl.load(par_ptr + 2)
    rows = tl.arange(0, C)[:, None]
    h0 = initial_step(y0, y0, g, rtol, atol, False)
    y1, _a, _b, n, theta, status, _by, _bd = pe_dopri5(
        y0, y0, y0, g, h0, lane_i, t_end, rtol, atol, max_steps, 0, 0, False, False, C, BLOCK)
    n = tl.where(status == STATUS_OK, n, 0)
    yb, gb = seed_cotangents(y1, g, gy1_ptr, gf1_ptr, offs, lane, HAS_GF1)
    n_max = tl.max(n, axis=0)
    n_seg = (n_max + C - 1) // C
    for j in range(n_seg):
        lo = (n_seg - 1 - j) * C
        _y, _a2, _b2, _n2, _t2, _s2, buf_y, buf_dt = pe_dopri5(
            y0, y0, y0, g, h0, lane_i & (n > lo).to(tl.int32), t_end, rtol, atol, max_steps,
            lo, lo + C, False, True, C, BLOCK)
        for jj in range(C):
            i = lo + C - 1 - jj
            valid = i < n
            th = tl.where(i == n - 1, theta, 1.0)
            w1, w2, w3, w4, w5, w6, w7 = dense_weights(th)
            yb_i, dg = step_vjp(pick(buf_y, rows, i - lo), g, pick(buf_dt, rows, i - lo),
                                 w1.to(T), w2.to(T), w3.to(T), w4.to(T), w5.to(T), w6.to(T),
                                 w7.to(T), yb, DOPRI5)
            yb = tl.where(valid, yb_i, yb)
            gb += tl.where(valid, dg, 0.0)
    store_cotangents(y0, g, yb, gb, gf0_ptr, gy0_ptr, gg_ptr, offs, lane, HAS_GF0)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


@triton.jit(do_not_specialize=["n", "n_adj", "max_steps", "N", "G"])
def _nmode_adjoint_bwd_kernel(y0_ptr, y1_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, status_ptr,
                              par_ptr, adj_dts_ptr, n_adj, max_steps, N, G,
                              METHOD: tl.constexpr, HAS_GF0: tl.constexpr,
                              HAS_GF1: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Continuous adjoint per element from the forward's y(t1): [y, a_y, a_g] runs from t1 back
    to t0 (reversed time), with the fixed grid ``adj_dts`` or (dopri5) per-element adaptive
    control on all three."""
    pid, offs, lane = program_lanes(N, BLOCK)
    lane_i = lane.to(tl.int32)
    y0, g = load_lanes(y0_ptr, g_ptr, offs, lane, G)
    y1 = tl.load(y1_ptr + offs, mask=lane, other=0.0)
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_span = tl.load(par_ptr + 2)
    status = tl.full([BLOCK], STATUS_OK, tl.int32)
    yb, gb = seed_cotangents(y1, g, gy1_ptr, gf1_ptr, offs, lane, HAS_GF1)
    if METHOD == DOPRI5:
        h = initial_step(y1, yb, g, rtol, atol, True)
        _y, yb, ag, _n2, _t2, st2, _by2, _bd2 = pe_dopri5(
            y1, yb, gb * 0.0, g, h, lane_i, t_span, rtol, atol, max_steps, 0, 0, True, False, C, BLOCK)
        status = tl.maximum(status, st2)
    else:
        _y, yb, ag = list_solve_adjoint(y1, yb, gb * 0.0, g, adj_dts_ptr, n_adj, METHOD)
    gb += ag
    store_cotangents(y0, g, yb, gb, gf0_ptr, gy0_ptr, gg_ptr, offs, lane, HAS_GF0)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


# ================================================================= launch: host-side glue
