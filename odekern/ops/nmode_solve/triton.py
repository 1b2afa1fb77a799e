"""Triton backend of nmode_solve: ``_nmode_*_kernel`` (math) and ``forward``/``backward``
(allocation, grid, block sizes). Implements the contract of ``config.py``.

The math mirrors csrc/ops/nmode_solve/nmode_solve.h step for step (same tableaus, same
accumulation order, same controller with time in float64 and stages in the state's dtype,
and the header's polynomial sincos), so the backends agree to rounding. Differences that
only move rounding: ``exp2(log2(r)/5)`` for ``pow(r, 1/5)`` in the controller, the order of
the float64 partial sums of the global error norm, and fused multiply-adds where the GPU
compiler forms them.

Launch shapes:

- every kernel is element-parallel: one program owns ``BLOCK`` consecutive elements (one per
  thread at 4 warps); element ``e`` reads ``g[e % G]`` (the op layer's leading broadcast);
- fixed grids and dopri5 with ``control="global"`` share one step sequence. Fixed grids run
  all steps in one launch (``_nmode_list_fwd_kernel``). Global control is host-driven, like
  torchdiffeq: one launch per attempted step (``_nmode_global_attempt_kernel``) that also
  reduces the squared error ratios into per-program float64 partials, so the accept/reject
  decision needs only a sum of ``cdiv(N, BLOCK)`` numbers;
- per-element control runs each lane's own controller inside one launch (lanes that finish
  early idle until the slowest lane of their block is done).

Backward: saved tensors are y0 and g only (plus the O(steps) ``stats``). Per-lane scratch is
register arrays of ``CHECKPOINTS`` states, indexed through one-hot selects (registers cannot
be indexed dynamically): the exact backward of a shared step sequence uses the header's
two-level checkpointing; per-element control replays the lane's controller from the start and
records ``CHECKPOINTS`` accepted steps per replay, newest segment first.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from odekern.ops.nmode_solve.config import METHODS, NmodeConfig, fixed_grid_steps

BLOCK = 128
NUM_WARPS = 4
# maxnreg = the hardware cap, stated explicitly: left to its own heuristic, ptxas caps some
# kernels below what they need and spills a few bytes (seen: the fp32 per-element adjoint on
# sm_90, 80 registers + 4 B spilled; with the cap stated it uses 88 and spills nothing).
MAXNREG = 255
LAUNCH = {"num_warps": NUM_WARPS, "maxnreg": MAXNREG}
# States per lane held by the backward kernels. Two-level checkpointing replays a shared step
# sequence of up to CHECKPOINTS**2 steps once; 16 keeps the scratch in registers (no spills).
CHECKPOINTS = 16
KERNEL_DTYPES = (torch.float32, torch.float64)
METHOD_ID = {"euler": 0, "midpoint": 1, "rk4": 2, "rk4_classic": 3, "dopri5": 4}
DOPRI5 = 4
_B = {  # solution weights b_j per method (torchdiffeq's tableaus, as in the header)
    0: (1.0,),
    1: (0.0, 1.0),
    2: (0.125, 0.375, 0.375, 0.125),
    3: (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6),
    4: (35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84, 0.0),
}
_DOPRI5_MID = (6025192743.0 / 30085553152.0 / 2, 0.0, 51252292925.0 / 65400821598.0 / 2,
               -2691868925.0 / 45128329728.0 / 2, 187940372067.0 / 1594534317056.0 / 2,
               -1776094331.0 / 19743644256.0 / 2, 11237099.0 / 235043384.0 / 2)
_STATUS = {
    1: "max_num_steps ({max_steps}) exceeded by the per-element step size controller",
    2: "step size underflow in the per-element controller",
    3: "non-finite values in the state",
}


# ============================================================================ math: the RHS

@triton.jit
def _sincos(x):
    """sin(x), cos(x) with the header's fast_sincos: x = k pi/2 + r by Cody-Waite (three-part
    pi/2, k rounded with the 1.5*2^p trick), Taylor kernels on |r| <= pi/4, quadrant selects.
    Mirrored rather than tl.sin/tl.cos so that backends agree to the last bits and libdevice's
    large-argument path (a local array on the stack) stays out of the kernels."""
    if x.dtype == tl.float64:
        kf = (x * 0.63661977236758134308 + 6755399441055744.0) - 6755399441055744.0
        r = x - kf * 1.5707963267341256
        r = r - kf * 6.077100506303966e-11
        r = r - kf * 2.0222662487959506e-21
        r2 = r * r
        s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (
            -1.0 / 39916800 + r2 * (1.0 / 6227020800.0 + r2 * (-1.0 / 1307674368000.0
                                                              + r2 * (1.0 / 355687428096000.0))))))))
        c = 1.0 - 0.5 * r2 + r2 * r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (
            -1.0 / 3628800 + r2 * (1.0 / 479001600.0 + r2 * (-1.0 / 87178291200.0 + r2 * (
                1.0 / 20922789888000.0 + r2 * (-1.0 / 6402373705728000.0))))))))
    else:
        kf = (x * 0.636619772367581343 + 12582912.0) - 12582912.0
        r = x - kf * 1.5703125
        r = r - kf * 4.837512969970703125e-4
        r = r - kf * 7.549790126404332e-08
        r2 = r * r
        s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880))))
        c = 1.0 - 0.5 * r2 + r2 * r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320
                                                                            + r2 * (-1.0 / 3628800))))
    q = kf.to(tl.int32)
    odd = (q & 1) != 0
    sin_v = tl.where(odd, c, s)
    cos_v = tl.where(odd, s, c)
    return tl.where((q & 2) != 0, -sin_v, sin_v), tl.where(((q + 1) & 2) != 0, -cos_v, cos_v)


@triton.jit
def _rhs(y, g):
    # sin^2(x) = (1 - cos 2x) / 2: one transcendental per evaluation.
    _, c = _sincos(2.0 * (y + g))
    return -y + (0.5 - 0.5 * c)


@triton.jit
def _rhs_sin2(y, g):
    """f and sin(2(y+g)) = df/dg (df/dy = that - 1), from one range reduction."""
    s, c = _sincos(2.0 * (y + g))
    return -y + (0.5 - 0.5 * c), s


@triton.jit
def _sys_f(y, a, g, ADJ: tl.constexpr):
    """RHS of the state [y] (ADJ=False) or of the reversed-time adjoint [y, a_y, a_g]."""
    if ADJ:
        f, s2 = _rhs_sin2(y, g)
        fy = -f
        fa = a * (s2 - 1.0)
        fb = a * s2
    else:
        fy = _rhs(y, g)
        fa = fy
        fb = fy
    return fy, fa, fb


# ================================================================ math: Butcher tableau rows

@triton.jit
def _row(x, dt, k1, k2, k3, k4, k5, k6, METHOD: tl.constexpr, I: tl.constexpr):
    """Input of stage I (1-based stage I+1): x + dt * sum_j a(I, j) k_j, header order."""
    if METHOD == 1:
        r = x + dt * (0.5 * k1)
    elif METHOD == 2:  # 3/8 rule
        if I == 1:
            r = x + dt * ((1.0 / 3) * k1)
        elif I == 2:
            r = x + dt * ((-1.0 / 3) * k1 + k2)
        else:
            r = x + dt * (k1 - k2 + k3)
    elif METHOD == 3:
        if I == 1:
            r = x + dt * (0.5 * k1)
        elif I == 2:
            r = x + dt * (0.5 * k2)
        else:
            r = x + dt * k3
    else:  # dopri5
        if I == 1:
            r = x + dt * ((1.0 / 5) * k1)
        elif I == 2:
            r = x + dt * ((3.0 / 40) * k1 + (9.0 / 40) * k2)
        elif I == 3:
            r = x + dt * ((44.0 / 45) * k1 + (-56.0 / 15) * k2 + (32.0 / 9) * k3)
        elif I == 4:
            r = x + dt * ((19372.0 / 6561) * k1 + (-25360.0 / 2187) * k2 + (64448.0 / 6561) * k3
                          + (-212.0 / 729) * k4)
        elif I == 5:
            r = x + dt * ((9017.0 / 3168) * k1 + (-355.0 / 33) * k2 + (46732.0 / 5247) * k3
                          + (49.0 / 176) * k4 + (-5103.0 / 18656) * k5)
        else:
            r = x + dt * ((35.0 / 384) * k1 + (500.0 / 1113) * k3 + (125.0 / 192) * k4
                          + (-2187.0 / 6784) * k5 + (11.0 / 84) * k6)
    return r


@triton.jit
def _combine(x, dt, w1, w2, w3, w4, w5, w6, w7, k1, k2, k3, k4, k5, k6, k7, METHOD: tl.constexpr):
    """x + dt * sum_j w_j k_j over the method's stages."""
    if METHOD == 0:
        r = x + dt * (w1 * k1)
    elif METHOD == 1:
        r = x + dt * (w1 * k1 + w2 * k2)
    elif METHOD == 4:
        r = x + dt * (w1 * k1 + w2 * k2 + w3 * k3 + w4 * k4 + w5 * k5 + w6 * k6 + w7 * k7)
    else:
        r = x + dt * (w1 * k1 + w2 * k2 + w3 * k3 + w4 * k4)
    return r


@triton.jit
def _dopri5_error(dt, k1, k3, k4, k5, k6, k7):
    """5th minus 4th order solution: dt * sum_j e_j k_j."""
    return dt * ((35.0 / 384 - 1951.0 / 21600) * k1 + (500.0 / 1113 - 22642.0 / 50085) * k3
                 + (125.0 / 192 - 451.0 / 720) * k4 + (-2187.0 / 6784 - -12231.0 / 42400) * k5
                 + (11.0 / 84 - 649.0 / 6300) * k6 + (-1.0 / 60) * k7)


@triton.jit
def _dense_weights(theta):
    """torchdiffeq's dopri5 dense output at theta as step weights (float64, per lane)."""
    x = theta
    x2 = x * x
    x3 = x2 * x
    x4 = x3 * x
    w_y1 = -5.0 * x2 + 14.0 * x3 - 8.0 * x4
    w_mid = 16.0 * x2 - 32.0 * x3 + 16.0 * x4
    w_f0 = x - 4.0 * x2 + 5.0 * x3 - 2.0 * x4
    w_f1 = x2 - 3.0 * x3 + 2.0 * x4
    w1 = w_y1 * (35.0 / 384) + w_mid * (6025192743.0 / 30085553152.0 / 2) + w_f0
    w2 = w_y1 * 0.0 + w_mid * 0.0
    w3 = w_y1 * (500.0 / 1113) + w_mid * (51252292925.0 / 65400821598.0 / 2)
    w4 = w_y1 * (125.0 / 192) + w_mid * (-2691868925.0 / 45128329728.0 / 2)
    w5 = w_y1 * (-2187.0 / 6784) + w_mid * (187940372067.0 / 1594534317056.0 / 2)
    w6 = w_y1 * (11.0 / 84) + w_mid * (-1776094331.0 / 19743644256.0 / 2)
    w7 = w_y1 * 0.0 + w_mid * (11237099.0 / 235043384.0 / 2) + w_f1
    return w1, w2, w3, w4, w5, w6, w7


# ============================================================ math: one step, forward / VJP

@triton.jit
def _sys_stages(y, a, g, dt, fy, fa, fb, METHOD: tl.constexpr, ADJ: tl.constexpr):
    """All stages of one step of the state (y[, a_y, a_g]) from the FSAL value f(y)."""
    y2 = fy
    a2 = fa
    b2 = fb
    y3 = fy
    a3 = fa
    b3 = fb
    y4 = fy
    a4 = fa
    b4 = fb
    y5 = fy
    a5 = fa
    b5 = fb
    y6 = fy
    a6 = fa
    b6 = fb
    y7 = fy
    a7 = fa
    b7 = fb
    if METHOD >= 1:
        y2, a2, b2 = _sys_f(_row(y, dt, fy, fy, fy, fy, fy, fy, METHOD, 1),
                            _row(a, dt, fa, fa, fa, fa, fa, fa, METHOD, 1), g, ADJ)
    if METHOD >= 2:
        y3, a3, b3 = _sys_f(_row(y, dt, fy, y2, y2, y2, y2, y2, METHOD, 2),
                            _row(a, dt, fa, a2, a2, a2, a2, a2, METHOD, 2), g, ADJ)
        y4, a4, b4 = _sys_f(_row(y, dt, fy, y2, y3, y3, y3, y3, METHOD, 3),
                            _row(a, dt, fa, a2, a3, a3, a3, a3, METHOD, 3), g, ADJ)
    if METHOD == 4:
        y5, a5, b5 = _sys_f(_row(y, dt, fy, y2, y3, y4, y4, y4, METHOD, 4),
                            _row(a, dt, fa, a2, a3, a4, a4, a4, METHOD, 4), g, ADJ)
        y6, a6, b6 = _sys_f(_row(y, dt, fy, y2, y3, y4, y5, y5, METHOD, 5),
                            _row(a, dt, fa, a2, a3, a4, a5, a5, METHOD, 5), g, ADJ)
        y7, a7, b7 = _sys_f(_row(y, dt, fy, y2, y3, y4, y5, y6, METHOD, 6),
                            _row(a, dt, fa, a2, a3, a4, a5, a6, METHOD, 6), g, ADJ)
    return (y2, y3, y4, y5, y6, y7, a2, a3, a4, a5, a6, a7, b2, b3, b4, b5, b6, b7)


@triton.jit
def _step(y, g, dt, w1, w2, w3, w4, w5, w6, w7, METHOD: tl.constexpr):
    """One step of the nmODE with weights w (b, or dopri5's dense weights on a last step)."""
    f = _rhs(y, g)
    k = _sys_stages(y, y, g, dt, f, f, f, METHOD, False)
    return _combine(y, dt, w1, w2, w3, w4, w5, w6, w7, f, k[0], k[1], k[2], k[3], k[4], k[5],
                    METHOD)


@triton.jit
def _step_vjp(y, g, dt, w1, w2, w3, w4, w5, w6, w7, yb1, METHOD: tl.constexpr):
    """Reverse mode of y1 = step(y): returns (d y1/d y)^T yb1 and (d y1/d g)^T yb1.

    Stages are recomputed with their sin(2(s+g)); then kbar_j = dt w_j yb1 + sum_{i>j} dt
    a(i,j) sbar_i with sbar_i = kbar_i f_y(s_i), walked from the last stage down (header order).
    """
    k1, q1 = _rhs_sin2(y, g)
    gb = yb1 * 0.0
    if METHOD == 0:
        kb1 = dt * w1 * yb1
        yb = yb1
    elif METHOD == 1:
        k2, q2 = _rhs_sin2(y + dt * (0.5 * k1), g)
        kb1 = dt * w1 * yb1
        kb2 = dt * w2 * yb1
        yb = yb1
        sb = kb2 * (q2 - 1.0)
        gb += kb2 * q2
        yb += sb
        kb1 += dt * 0.5 * sb
    elif METHOD == 2:
        k2, q2 = _rhs_sin2(y + dt * ((1.0 / 3) * k1), g)
        k3, q3 = _rhs_sin2(y + dt * ((-1.0 / 3) * k1 + k2), g)
        k4, q4 = _rhs_sin2(y + dt * (k1 - k2 + k3), g)
        kb1 = dt * w1 * yb1
        kb2 = dt * w2 * yb1
        kb3 = dt * w3 * yb1
        kb4 = dt * w4 * yb1
        yb = yb1
        sb = kb4 * (q4 - 1.0)
        gb += kb4 * q4
        yb += sb
        kb1 += dt * 1.0 * sb
        kb2 += dt * -1.0 * sb
        kb3 += dt * 1.0 * sb
        sb = kb3 * (q3 - 1.0)
        gb += kb3 * q3
        yb += sb
        kb1 += dt * (-1.0 / 3) * sb
        kb2 += dt * 1.0 * sb
        sb = kb2 * (q2 - 1.0)
        gb += kb2 * q2
        yb += sb
        kb1 += dt * (1.0 / 3) * sb
    elif METHOD == 3:
        k2, q2 = _rhs_sin2(y + dt * (0.5 * k1), g)
        k3, q3 = _rhs_sin2(y + dt * (0.5 * k2), g)
        k4, q4 = _rhs_sin2(y + dt * k3, g)
        kb1 = dt * w1 * yb1
        kb2 = dt * w2 * yb1
        kb3 = dt * w3 * yb1
        kb4 = dt * w4 * yb1
        yb = yb1
        sb = kb4 * (q4 - 1.0)
        gb += kb4 * q4
        yb += sb
        kb3 += dt * 1.0 * sb
        sb = kb3 * (q3 - 1.0)
        gb += kb3 * q3
        yb += sb
        kb2 += dt * 0.5 * sb
        sb = kb2 * (q2 - 1.0)
        gb += kb2 * q2
        yb += sb
        kb1 += dt * 0.5 * sb
    else:
        # dopri5 with its 7th (FSAL) stage: its weight is 0 except on an interpolated last
        # step, where the header includes it; with weight 0 it adds exact zeros.
        s = _row(y, dt, k1, k1, k1, k1, k1, k1, 4, 1)
        k2, q2 = _rhs_sin2(s, g)
        k3, q3 = _rhs_sin2(_row(y, dt, k1, k2, k2, k2, k2, k2, 4, 2), g)
        k4, q4 = _rhs_sin2(_row(y, dt, k1, k2, k3, k3, k3, k3, 4, 3), g)
        k5, q5 = _rhs_sin2(_row(y, dt, k1, k2, k3, k4, k4, k4, 4, 4), g)
        k6, q6 = _rhs_sin2(_row(y, dt, k1, k2, k3, k4, k5, k5, 4, 5), g)
        _k7, q7 = _rhs_sin2(_row(y, dt, k1, k2, k3, k4, k5, k6, 4, 6), g)
        kb1 = dt * w1 * yb1
        kb2 = dt * w2 * yb1
        kb3 = dt * w3 * yb1
        kb4 = dt * w4 * yb1
        kb5 = dt * w5 * yb1
        kb6 = dt * w6 * yb1
        kb7 = dt * w7 * yb1
        yb = yb1
        sb = kb7 * (q7 - 1.0)
        gb += kb7 * q7
        yb += sb
        kb1 += dt * (35.0 / 384) * sb
        kb3 += dt * (500.0 / 1113) * sb
        kb4 += dt * (125.0 / 192) * sb
        kb5 += dt * (-2187.0 / 6784) * sb
        kb6 += dt * (11.0 / 84) * sb
        sb = kb6 * (q6 - 1.0)
        gb += kb6 * q6
        yb += sb
        kb1 += dt * (9017.0 / 3168) * sb
        kb2 += dt * (-355.0 / 33) * sb
        kb3 += dt * (46732.0 / 5247) * sb
        kb4 += dt * (49.0 / 176) * sb
        kb5 += dt * (-5103.0 / 18656) * sb
        sb = kb5 * (q5 - 1.0)
        gb += kb5 * q5
        yb += sb
        kb1 += dt * (19372.0 / 6561) * sb
        kb2 += dt * (-25360.0 / 2187) * sb
        kb3 += dt * (64448.0 / 6561) * sb
        kb4 += dt * (-212.0 / 729) * sb
        sb = kb4 * (q4 - 1.0)
        gb += kb4 * q4
        yb += sb
        kb1 += dt * (44.0 / 45) * sb
        kb2 += dt * (-56.0 / 15) * sb
        kb3 += dt * (32.0 / 9) * sb
        sb = kb3 * (q3 - 1.0)
        gb += kb3 * q3
        yb += sb
        kb1 += dt * (3.0 / 40) * sb
        kb2 += dt * (9.0 / 40) * sb
        sb = kb2 * (q2 - 1.0)
        gb += kb2 * q2
        yb += sb
        kb1 += dt * (1.0 / 5) * sb
    sb = kb1 * (q1 - 1.0)
    gb += kb1 * q1
    yb += sb
    return yb, gb


@triton.jit
def _rhs_vjp(y, g, fbar):
    """Contribution of an f output's cotangent to (ybar, gbar)."""
    _, s2 = _rhs_sin2(y, g)
    return fbar * (s2 - 1.0), fbar * s2


# ====================================================== math: torchdiffeq's step controller

@triton.jit
def _optimal_step(dt, ratio):
    """torchdiffeq's _optimal_step_size (safety 0.9, ifactor 10, dfactor 0.2, order 5)."""
    one = tl.full(dt.shape, 1.0, tl.float64)
    dfactor = tl.where(ratio < 1.0, one, one * 0.2)
    factor = 0.9 / tl.exp2(tl.log2(ratio) * 0.2)
    factor = tl.minimum(tl.maximum(factor, dfactor), one * 10.0)
    return tl.where(ratio == 0.0, dt * 10.0, dt * factor)


@triton.jit
def _initial_step(y, a, g, rtol, atol, ADJ: tl.constexpr):
    """torchdiffeq's initial step per lane; the norm over components is max(|.|) (float64)."""
    T = y.dtype
    fy, fa, fb = _sys_f(y, a, g, ADJ)
    sy = atol + tl.abs(y.to(tl.float64)) * rtol
    d0 = tl.abs(y.to(tl.float64)) / sy
    d1 = tl.abs(fy.to(tl.float64)) / sy
    if ADJ:
        sa = atol + tl.abs(a.to(tl.float64)) * rtol
        d0 = tl.maximum(d0, tl.abs(a.to(tl.float64)) / sa)
        d1 = tl.maximum(tl.maximum(d1, tl.abs(fa.to(tl.float64)) / sa), tl.abs(fb.to(tl.float64)) / atol)
    one = tl.full(d0.shape, 1.0, tl.float64)
    h0 = tl.where((d0 < 1e-5) | (d1 < 1e-5), one * 1e-6, 0.01 * d0 / d1)
    gy, ga, gbb = _sys_f(y + h0.to(T) * fy, a + h0.to(T) * fa, g, ADJ)
    d2 = tl.abs((gy - fy).to(tl.float64)) / sy / h0
    if ADJ:
        d2 = tl.maximum(d2, tl.abs((ga - fa).to(tl.float64)) / sa / h0)
        d2 = tl.maximum(d2, tl.abs((gbb - fb).to(tl.float64)) / atol / h0)
    small = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = tl.where(small, tl.maximum(one * 1e-6, h0 * 1e-3),
                  tl.exp2(tl.log2(0.01 / tl.maximum(d1, d2)) * 0.2))
    return tl.minimum(100.0 * h0, h1)


@triton.jit
def _ratio(err, x0, x1, rtol, atol):
    """|err| / (atol + rtol max(|x0|, |x1|)) in the state's dtype, returned as float64."""
    T = x0.dtype
    r = err / (atol.to(T) + rtol.to(T) * tl.maximum(tl.abs(x0), tl.abs(x1)))
    return tl.abs(r.to(tl.float64))


@triton.jit
def _pe_dopri5(y, a, b, g, h, lane, t_end, rtol, atol, max_steps, lo, hi,
               ADJ: tl.constexpr, RECORD: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Per-lane adaptive dopri5 over [0, t_end], the header's sys_solve_dopri5 vectorised.

    Each lane keeps its own (t, h, state) and stops when it passes t_end (then interpolates at
    t_end with the dense output) or fails (status 1 too many steps, 2 underflow, 3 non-finite).
    With RECORD, the accepted steps with index in [lo, hi) are written to (buf_y, buf_dt) and a
    lane stops right after recording step hi - 1.
    Returns (y, a, b, n_accepted, theta_of_last_step, status, buf_y, buf_dt).
    """
    T = y.dtype
    fy, fa, fb = _sys_f(y, a, g, ADJ)
    t = tl.zeros([BLOCK], tl.float64)
    theta = t + 1.0
    done = lane == 0
    status = tl.zeros([BLOCK], tl.int32)
    attempts = tl.zeros([BLOCK], tl.int32)
    index = tl.zeros([BLOCK], tl.int32)
    buf_y = tl.zeros([C, BLOCK], T)
    buf_dt = tl.zeros([C, BLOCK], T)
    rows = tl.arange(0, C)[:, None]
    while tl.max((done == 0).to(tl.int32), axis=0) > 0:
        act = done == 0
        over = act & (attempts >= max_steps)
        status = tl.where(over, 1, status)
        act = act & (over == 0)
        attempts += act.to(tl.int32)
        dt = h
        t_next = t + dt
        under = act & ((t_next > t) == 0)
        status = tl.where(under, 2, status)
        act = act & (under == 0)
        dtT = dt.to(T)
        k = _sys_stages(y, a, g, dtT, fy, fa, fb, 4, ADJ)
        y1 = _row(y, dtT, fy, k[0], k[1], k[2], k[3], k[4], 4, 6)
        ratio = _ratio(_dopri5_error(dtT, fy, k[1], k[2], k[3], k[4], k[5]), y, y1, rtol, atol)
        if ADJ:
            a1 = _row(a, dtT, fa, k[6], k[7], k[8], k[9], k[10], 4, 6)
            bb1 = _row(b, dtT, fb, k[12], k[13], k[14], k[15], k[16], 4, 6)
            ratio = tl.maximum(ratio, _ratio(_dopri5_error(dtT, fa, k[7], k[8], k[9], k[10], k[11]),
                                             a, a1, rtol, atol))
            ratio = tl.maximum(ratio, _ratio(_dopri5_error(dtT, fb, k[13], k[14], k[15], k[16], k[17]),
                                             b, bb1, rtol, atol))
        nonfinite = act & (ratio != ratio)  # noqa: PLR0124 - the NaN test
        status = tl.where(nonfinite, 3, status)
        act = act & (nonfinite == 0)
        accept = act & (ratio <= 1.0)
        finish = accept & (t_next >= t_end)
        if RECORD:
            sel = (rows == (index - lo)[None, :]) & (accept & (index >= lo) & (index < hi))[None, :]
            buf_y = tl.where(sel, y[None, :], buf_y)
            buf_dt = tl.where(sel, dtT[None, :], buf_dt)
        th = tl.where(finish, (t_end - t) / (t_next - t), theta)
        w1, w2, w3, w4, w5, w6, w7 = _dense_weights(th)
        w1 = w1.to(T)
        w2 = w2.to(T)
        w3 = w3.to(T)
        w4 = w4.to(T)
        w5 = w5.to(T)
        w6 = w6.to(T)
        w7 = w7.to(T)
        step_on = accept & (finish == 0)
        yd = _combine(y, dtT, w1, w2, w3, w4, w5, w6, w7, fy, k[0], k[1], k[2], k[3], k[4], k[5], 4)
        y = tl.where(finish, yd, tl.where(step_on, y1, y))
        fy = tl.where(step_on, k[5], fy)
        if ADJ:
            ad = _combine(a, dtT, w1, w2, w3, w4, w5, w6, w7, fa, k[6], k[7], k[8], k[9], k[10], k[11], 4)
            bd = _combine(b, dtT, w1, w2, w3, w4, w5, w6, w7, fb, k[12], k[13], k[14], k[15], k[16], k[17], 4)
            a = tl.where(finish, ad, tl.where(step_on, a1, a))
            b = tl.where(finish, bd, tl.where(step_on, bb1, b))
            fa = tl.where(step_on, k[11], fa)
            fb = tl.where(step_on, k[17], fb)
        t = tl.where(step_on, t_next, t)
        theta = th
        index += accept.to(tl.int32)
        stop = finish | (over | under | nonfinite)
        if RECORD:
            stop = stop | (accept & (index >= hi))
        done = done | stop
        h = tl.where(act, _optimal_step(dt, ratio), h)
    return y, a, b, index, theta, status, buf_y, buf_dt


@triton.jit
def _pick(buf, rows, i):
    """buf[i, :] of a [C, BLOCK] register array (i is a scalar or one index per lane)."""
    return tl.sum(tl.where(rows == i, buf, 0.0), axis=0)


@triton.jit
def _load_w(w_ptr, T: tl.constexpr):
    return (tl.load(w_ptr + 0).to(T), tl.load(w_ptr + 1).to(T), tl.load(w_ptr + 2).to(T),
            tl.load(w_ptr + 3).to(T), tl.load(w_ptr + 4).to(T), tl.load(w_ptr + 5).to(T),
            tl.load(w_ptr + 6).to(T))


@triton.jit
def _list_solve(y, g, dts_ptr, n, w_ptr, wl_ptr, METHOD: tl.constexpr):
    """y after the shared step list (last step with the weights wl)."""
    T = y.dtype
    w = _load_w(w_ptr, T)
    wl = _load_w(wl_ptr, T)
    for i in range(n):
        dt = tl.load(dts_ptr + i).to(T)
        last = i == n - 1
        y = _step(y, g, dt, tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                  tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]),
                  tl.where(last, wl[4], w[4]), tl.where(last, wl[5], w[5]),
                  tl.where(last, wl[6], w[6]), METHOD)
    return y


@triton.jit
def _list_solve_adjoint(y, a, b, g, dts_ptr, n, METHOD: tl.constexpr):
    """The adjoint system [y, a_y, a_g] along a step list (fixed grid, weights b)."""
    T = y.dtype
    for i in range(n):
        dt = tl.load(dts_ptr + i).to(T)
        fy, fa, fb = _sys_f(y, a, g, True)
        k = _sys_stages(y, a, g, dt, fy, fa, fb, METHOD, True)
        if METHOD == 0:
            y = y + dt * (1.0 * fy)
            a = a + dt * (1.0 * fa)
            b = b + dt * (1.0 * fb)
        elif METHOD == 1:
            y = y + dt * (0.0 * fy + 1.0 * k[0])
            a = a + dt * (0.0 * fa + 1.0 * k[6])
            b = b + dt * (0.0 * fb + 1.0 * k[12])
        elif METHOD == 2:
            y = y + dt * (0.125 * fy + 0.375 * k[0] + 0.375 * k[1] + 0.125 * k[2])
            a = a + dt * (0.125 * fa + 0.375 * k[6] + 0.375 * k[7] + 0.125 * k[8])
            b = b + dt * (0.125 * fb + 0.375 * k[12] + 0.375 * k[13] + 0.125 * k[14])
        else:
            y = y + dt * ((1.0 / 6) * fy + (1.0 / 3) * k[0] + (1.0 / 3) * k[1] + (1.0 / 6) * k[2])
            a = a + dt * ((1.0 / 6) * fa + (1.0 / 3) * k[6] + (1.0 / 3) * k[7] + (1.0 / 6) * k[8])
            b = b + dt * ((1.0 / 6) * fb + (1.0 / 3) * k[12] + (1.0 / 3) * k[13] + (1.0 / 6) * k[14])
    return y, a, b


# ================================================================================== kernels

@triton.jit(do_not_specialize=["n", "N", "G"])
def _nmode_list_fwd_kernel(y0_ptr, g_ptr, y1_ptr, f0_ptr, f1_ptr, dts_ptr, w_ptr, wl_ptr, n, N, G,
                           METHOD: tl.constexpr, NEED_F: tl.constexpr, BLOCK: tl.constexpr):
    """Forward along a shared step list (fixed grids), all steps in registers."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    if NEED_F:
        tl.store(f0_ptr + offs, _rhs(y, g), mask=lane)
    y = _list_solve(y, g, dts_ptr, n, w_ptr, wl_ptr, METHOD)
    tl.store(y1_ptr + offs, y, mask=lane)
    if NEED_F:
        tl.store(f1_ptr + offs, _rhs(y, g), mask=lane)


@triton.jit(do_not_specialize=["N", "G"])
def _nmode_global_init_kernel(y0_ptr, g_ptr, f_ptr, part_ptr, par_ptr, N, G, BLOCK: tl.constexpr):
    """f0 = f(y0), and per-program sums of (y0/scale)^2, (f0/scale)^2 (initial-step norms)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y.dtype
    f = _rhs(y, g)
    tl.store(f_ptr + offs, f, mask=lane)
    scale = tl.load(par_ptr + 1).to(T) + tl.abs(y) * tl.load(par_ptr + 0).to(T)
    u = (y / scale).to(tl.float64)
    v = (f / scale).to(tl.float64)
    tl.store(part_ptr + 2 * pid, tl.sum(tl.where(lane, u * u, 0.0), axis=0))
    tl.store(part_ptr + 2 * pid + 1, tl.sum(tl.where(lane, v * v, 0.0), axis=0))


@triton.jit(do_not_specialize=["N", "G"])
def _nmode_global_d2_kernel(y0_ptr, f_ptr, g_ptr, part_ptr, par_ptr, N, G, BLOCK: tl.constexpr):
    """Per-program sums of ((f(y0 + h0 f0) - f0) / scale)^2; par = [rtol, atol, h0]."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    f = tl.load(f_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y.dtype
    f1 = _rhs(y + tl.load(par_ptr + 2).to(T) * f, g)
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
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y = tl.load(y_ptr + offs, mask=lane, other=0.0)
    f = tl.load(f_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y.dtype
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    dt = tl.load(par_ptr + 2).to(T)
    k = _sys_stages(y, y, g, dt, f, f, f, 4, False)
    y1 = _row(y, dt, f, k[0], k[1], k[2], k[3], k[4], 4, 6)
    err = _dopri5_error(dt, f, k[1], k[2], k[3], k[4], k[5])
    r = err / (atol.to(T) + rtol.to(T) * tl.maximum(tl.abs(y), tl.abs(y1)))
    r = r.to(tl.float64)
    tl.store(part_ptr + pid, tl.sum(tl.where(lane, r * r, 0.0), axis=0))
    tl.store(ynew_ptr + offs, y1, mask=lane)
    tl.store(fnew_ptr + offs, k[5], mask=lane)
    if FINISHING:
        wl = _load_w(wl_ptr, T)
        out = _combine(y, dt, wl[0], wl[1], wl[2], wl[3], wl[4], wl[5], wl[6],
                       f, k[0], k[1], k[2], k[3], k[4], k[5], 4)
        tl.store(out_ptr + offs, out, mask=lane)
        if NEED_F:
            tl.store(fout_ptr + offs, _rhs(out, g), mask=lane)


@triton.jit(do_not_specialize=["max_steps", "N", "G"])
def _nmode_pe_fwd_kernel(y0_ptr, g_ptr, y1_ptr, f0_ptr, f1_ptr, status_ptr, par_ptr, max_steps, N, G,
                         NEED_F: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Forward with per-element step control (par = [rtol, atol, t1 - t0])."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_end = tl.load(par_ptr + 2)
    if NEED_F:
        tl.store(f0_ptr + offs, _rhs(y, g), mask=lane)
    h = _initial_step(y, y, g, rtol, atol, False)
    y, _a, _b, _n, _th, status, _by, _bd = _pe_dopri5(
        y, y, y, g, h, lane.to(tl.int32), t_end, rtol, atol, max_steps, 0, 0, False, False, C, BLOCK)
    tl.store(y1_ptr + offs, y, mask=lane)
    if NEED_F:
        tl.store(f1_ptr + offs, _rhs(y, g), mask=lane)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


@triton.jit(do_not_specialize=["n", "N", "G"])
def _nmode_list_bwd_kernel(y0_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, dts_ptr, w_ptr,
                           wl_ptr, n, N, G, METHOD: tl.constexpr, HAS_GF0: tl.constexpr,
                           HAS_GF1: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Exact backward along a shared step list, two-level checkpointing in registers: C
    checkpoints along the solve, then each segment (<= C steps) replayed into a C-state
    buffer and walked back; longer segments recompute each state from their checkpoint."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    y0 = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y0.dtype
    w = _load_w(w_ptr, T)
    wl = _load_w(wl_ptr, T)
    rows = tl.arange(0, C)[:, None]
    seg = tl.maximum((n + C - 1) // C, 1)
    ck = tl.zeros([C, BLOCK], T)
    y = y0
    for i in range(n):
        ck = tl.where((rows == i // seg) & (i % seg == 0), y[None, :], ck)
        dt = tl.load(dts_ptr + i).to(T)
        last = i == n - 1
        y = _step(y, g, dt, tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                  tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]),
                  tl.where(last, wl[4], w[4]), tl.where(last, wl[5], w[5]),
                  tl.where(last, wl[6], w[6]), METHOD)
    yb = tl.load(gy1_ptr + offs, mask=lane, other=0.0)
    gb = tl.zeros([BLOCK], T)
    if HAS_GF1:
        dy, dg = _rhs_vjp(y, g, tl.load(gf1_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    n_seg = (n + seg - 1) // seg
    buf = tl.zeros([C, BLOCK], T)
    for j in range(n_seg):
        s = n_seg - 1 - j
        start = s * seg
        end = tl.minimum(start + seg, n)
        yy = _pick(ck, rows, s)
        if end - start <= C:
            for i in range(start, end):
                buf = tl.where(rows == i - start, yy[None, :], buf)
                if i + 1 < end:
                    yy = _step(yy, g, tl.load(dts_ptr + i).to(T), w[0], w[1], w[2], w[3], w[4],
                               w[5], w[6], METHOD)
            for jj in range(end - start):
                i = end - 1 - jj
                last = i == n - 1
                yb, dg = _step_vjp(_pick(buf, rows, i - start), g, tl.load(dts_ptr + i).to(T),
                                   tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                                   tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]),
                                   tl.where(last, wl[4], w[4]), tl.where(last, wl[5], w[5]),
                                   tl.where(last, wl[6], w[6]), yb, METHOD)
                gb += dg
        else:
            for jj in range(end - start):
                i = end - 1 - jj
                yi = yy
                for m in range(start, i):
                    yi = _step(yi, g, tl.load(dts_ptr + m).to(T), w[0], w[1], w[2], w[3], w[4],
                               w[5], w[6], METHOD)
                last = i == n - 1
                yb, dg = _step_vjp(yi, g, tl.load(dts_ptr + i).to(T),
                                   tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                                   tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]),
                                   tl.where(last, wl[4], w[4]), tl.where(last, wl[5], w[5]),
                                   tl.where(last, wl[6], w[6]), yb, METHOD)
                gb += dg
    if HAS_GF0:
        dy, dg = _rhs_vjp(y0, g, tl.load(gf0_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    tl.store(gy0_ptr + offs, yb, mask=lane)
    tl.store(gg_ptr + offs, gb, mask=lane)


@triton.jit(do_not_specialize=["max_steps", "N", "G"])
def _nmode_pe_bwd_kernel(y0_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, status_ptr, par_ptr,
                         max_steps, N, G, HAS_GF0: tl.constexpr, HAS_GF1: tl.constexpr,
                         C: tl.constexpr, BLOCK: tl.constexpr):
    """Exact backward with per-element control: each lane's controller is replayed from the
    start, recording C accepted steps per replay (newest segment first), and reverse mode
    walks back through them. Same steps as the forward: same arithmetic, same order."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    lane_i = lane.to(tl.int32)
    y0 = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y0.dtype
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_end = tl.load(par_ptr + 2)
    rows = tl.arange(0, C)[:, None]
    h0 = _initial_step(y0, y0, g, rtol, atol, False)
    y1, _a, _b, n, theta, status, _by, _bd = _pe_dopri5(
        y0, y0, y0, g, h0, lane_i, t_end, rtol, atol, max_steps, 0, 0, False, False, C, BLOCK)
    n = tl.where(status == 0, n, 0)
    yb = tl.load(gy1_ptr + offs, mask=lane, other=0.0)
    gb = tl.zeros([BLOCK], T)
    if HAS_GF1:
        dy, dg = _rhs_vjp(y1, g, tl.load(gf1_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    n_max = tl.max(n, axis=0)
    n_seg = (n_max + C - 1) // C
    for j in range(n_seg):
        lo = (n_seg - 1 - j) * C
        _y, _a2, _b2, _n2, _t2, _s2, buf_y, buf_dt = _pe_dopri5(
            y0, y0, y0, g, h0, lane_i & (n > lo).to(tl.int32), t_end, rtol, atol, max_steps,
            lo, lo + C, False, True, C, BLOCK)
        for jj in range(C):
            i = lo + C - 1 - jj
            valid = i < n
            th = tl.where(i == n - 1, theta, 1.0)
            w1, w2, w3, w4, w5, w6, w7 = _dense_weights(th)
            yb_i, dg = _step_vjp(_pick(buf_y, rows, i - lo), g, _pick(buf_dt, rows, i - lo),
                                 w1.to(T), w2.to(T), w3.to(T), w4.to(T), w5.to(T), w6.to(T),
                                 w7.to(T), yb, 4)
            yb = tl.where(valid, yb_i, yb)
            gb += tl.where(valid, dg, 0.0)
    if HAS_GF0:
        dy, dg = _rhs_vjp(y0, g, tl.load(gf0_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    tl.store(gy0_ptr + offs, yb, mask=lane)
    tl.store(gg_ptr + offs, gb, mask=lane)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


@triton.jit(do_not_specialize=["n", "n_adj", "max_steps", "N", "G"])
def _nmode_adjoint_bwd_kernel(y0_ptr, g_ptr, gy1_ptr, gf0_ptr, gf1_ptr, gy0_ptr, gg_ptr, status_ptr,
                              par_ptr, dts_ptr, w_ptr, wl_ptr, n, adj_dts_ptr, n_adj, max_steps, N, G,
                              METHOD: tl.constexpr, LIST: tl.constexpr, HAS_GF0: tl.constexpr,
                              HAS_GF1: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Continuous adjoint per element: y(t1) is recomputed (step list if LIST, else the
    per-element controller), then [y, a_y, a_g] runs from t1 back to t0 (reversed time), with
    the fixed grid ``adj_dts`` or (dopri5) per-element adaptive control on all three."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lane = offs < N
    lane_i = lane.to(tl.int32)
    y0 = tl.load(y0_ptr + offs, mask=lane, other=0.0)
    g = tl.load(g_ptr + offs % G, mask=lane, other=0.0)
    T = y0.dtype
    rtol = tl.load(par_ptr + 0)
    atol = tl.load(par_ptr + 1)
    t_span = tl.load(par_ptr + 2)
    status = tl.zeros([BLOCK], tl.int32)
    if LIST:
        y1 = _list_solve(y0, g, dts_ptr, n, w_ptr, wl_ptr, METHOD)
    else:
        h0 = _initial_step(y0, y0, g, rtol, atol, False)
        y1, _a, _b, _n, _th, status, _by, _bd = _pe_dopri5(
            y0, y0, y0, g, h0, lane_i, t_span, rtol, atol, max_steps, 0, 0, False, False, C, BLOCK)
    yb = tl.load(gy1_ptr + offs, mask=lane, other=0.0)
    gb = tl.zeros([BLOCK], T)
    if HAS_GF1:
        dy, dg = _rhs_vjp(y1, g, tl.load(gf1_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    if METHOD == 4:
        h = _initial_step(y1, yb, g, rtol, atol, True)
        _y, yb, ag, _n2, _t2, st2, _by2, _bd2 = _pe_dopri5(
            y1, yb, gb * 0.0, g, h, lane_i, t_span, rtol, atol, max_steps, 0, 0, True, False, C, BLOCK)
        status = tl.maximum(status, st2)
    else:
        _y, yb, ag = _list_solve_adjoint(y1, yb, gb * 0.0, g, adj_dts_ptr, n_adj, METHOD)
    gb += ag
    if HAS_GF0:
        dy, dg = _rhs_vjp(y0, g, tl.load(gf0_ptr + offs, mask=lane, other=0.0))
        yb += dy
        gb += dg
    tl.store(gy0_ptr + offs, yb, mask=lane)
    tl.store(gg_ptr + offs, gb, mask=lane)
    tl.store(status_ptr + pid, tl.max(status, axis=0))


# ================================================================= launch: host-side glue

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
    if cfg is not None and cfg.method not in METHOD_ID:
        reasons.append(f"method {cfg.method!r} is not implemented in Triton")
    return reasons


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _weights(method: str, theta: float, dtype, device) -> torch.Tensor:
    """Step weights as a 7-vector in the state's dtype: b, or dopri5's dense output at theta
    (computed in float64, then rounded, like the header's step_weights)."""
    mid = METHOD_ID[method]
    if mid == DOPRI5 and theta != 1.0:
        x = theta
        x2, x3, x4 = x * x, x * x * x, x * x * x * x
        w_y1 = -5 * x2 + 14 * x3 - 8 * x4
        w_mid = 16 * x2 - 32 * x3 + 16 * x4
        w_f0 = x - 4 * x2 + 5 * x3 - 2 * x4
        w_f1 = x2 - 3 * x3 + 2 * x4
        w = [w_y1 * b + w_mid * m for b, m in zip(_B[DOPRI5], _DOPRI5_MID)]
        w[0] += w_f0
        w[6] += w_f1
    else:
        w = list(_B[mid]) + [0.0] * (7 - len(_B[mid]))
    return torch.tensor(w, dtype=torch.float64).to(dtype=dtype, device=device)


def _params(device, *values: float) -> torch.Tensor:
    # Scalars travel as a float64 tensor: Triton would narrow Python floats to float32.
    return torch.tensor(values, dtype=torch.float64, device=device)


def _check_status(status: torch.Tensor, cfg: NmodeConfig) -> None:
    worst = int(status.max().item()) if status.numel() else 0
    if worst:
        raise RuntimeError("nmode_solve: " + _STATUS[worst].format(max_steps=cfg.max_num_steps))


def _stats(n_acc: int, n_rej: int, theta: float, dts: list[float]) -> torch.Tensor:
    return torch.tensor([float(n_acc), float(n_rej), float(theta), *dts], dtype=torch.float64)


def _global_forward(y0, g, t0, t1, cfg, need_f, y1, f0, f1):
    """torchdiffeq's controller on the host, one attempt kernel per step (as the CPU backend)."""
    N, G, dev, dt_ = y0.numel(), g.numel(), y0.device, y0.dtype
    grid = _grid(N)
    ycur, fcur = y0.clone(), torch.empty_like(y0)
    ynew, fnew = torch.empty_like(y0), torch.empty_like(y0)
    part2 = torch.empty(2 * grid[0], dtype=torch.float64, device=dev)
    _nmode_global_init_kernel[grid](y0, g, fcur, part2, _params(dev, cfg.rtol, cfg.atol), N, G,
                                    BLOCK=BLOCK, **LAUNCH)
    sums = part2.view(-1, 2).sum(0).tolist()
    if need_f:
        f0.copy_(fcur)
    d0, d1 = math.sqrt(sums[0] / N), math.sqrt(sums[1] / N)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    part = torch.empty(grid[0], dtype=torch.float64, device=dev)
    _nmode_global_d2_kernel[grid](y0, fcur, g, part, _params(dev, cfg.rtol, cfg.atol, h0), N, G,
                                  BLOCK=BLOCK, **LAUNCH)
    d2 = math.sqrt(part.sum().item() / N) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h = max(1e-6, h0 * 1e-3)
    else:
        h = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
    h = min(100 * h0, h)
    w_one = _weights("dopri5", 1.0, dt_, dev)
    t, attempts, n_rej, dts = t0, 0, 0, []
    while True:
        if attempts >= cfg.max_num_steps:
            raise RuntimeError(f"nmode_solve: max_num_steps ({cfg.max_num_steps}) exceeded at "
                               f"t = {t} with last dt = {h}")
        attempts += 1
        if not math.isfinite(h):
            raise RuntimeError(f"nmode_solve: non-finite step size at t = {t} "
                               "(non-finite values in the state?)")
        dt, t_next = h, t + h
        if not t_next > t:
            raise RuntimeError(f"nmode_solve: step size underflow (dt = {dt}) at t = {t}")
        finishing = t_next >= t1
        theta = (t1 - t) / (t_next - t) if finishing else 1.0
        wl = _weights("dopri5", theta, dt_, dev) if finishing else w_one
        _nmode_global_attempt_kernel[grid](
            ycur, fcur, g, ynew, fnew, part, y1, f1 if need_f else y1, _params(dev, cfg.rtol, cfg.atol, dt),
            wl, N, G, FINISHING=finishing, NEED_F=need_f, BLOCK=BLOCK, **LAUNCH)
        ratio = math.sqrt(part.sum().item() / N)
        if math.isnan(ratio):
            raise RuntimeError(f"nmode_solve: non-finite values in the state at t = {t}")
        if ratio <= 1.0:
            dts.append(dt)
            if finishing:
                return _stats(len(dts), n_rej, theta, dts)
            ycur, ynew = ynew, ycur
            fcur, fnew = fnew, fcur
            t = t_next
        else:
            n_rej += 1
        # torchdiffeq's _optimal_step_size (order 5), in float64 like the header.
        if ratio == 0.0:
            h = dt * 10.0
        else:
            factor = 0.9 / ratio ** (1.0 / 5.0)
            h = dt * min(max(factor, 1.0 if ratio < 1.0 else 0.2), 10.0)


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
        if len(dts) > cfg.max_num_steps:
            raise RuntimeError(f"nmode_solve: the fixed grid needs {len(dts)} steps, more than "
                               f"max_num_steps={cfg.max_num_steps}")
        stats = _stats(len(dts), 0, 1.0, dts)
        if N:
            w = _weights(cfg.method, 1.0, y0.dtype, y0.device)
            dts_t = torch.tensor(dts, dtype=torch.float64, device=y0.device)
            _nmode_list_fwd_kernel[_grid(N)](y0, g, y1, f0 if need_f else y1, f1 if need_f else y1,
                                             dts_t, w, w, len(dts), N, G, METHOD=METHOD_ID[cfg.method],
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
                               N, G, NEED_F=need_f, C=CHECKPOINTS, BLOCK=BLOCK, **LAUNCH)
    _check_status(status, cfg)
    return y1, f0, f1, _stats(0, 0, 1.0, [])


def _present(t: torch.Tensor | None) -> bool:
    return t is not None and t.numel() > 0


def backward(grad_y1: torch.Tensor, grad_f0: torch.Tensor | None, grad_f1: torch.Tensor | None,
             y0: torch.Tensor, g: torch.Tensor, stats: torch.Tensor, t0: float, t1: float,
             cfg: NmodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
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
    common = dict(HAS_GF0=has_gf0, HAS_GF1=has_gf1, C=CHECKPOINTS, BLOCK=BLOCK, **LAUNCH)
    if cfg.gradient == "checkpoint" and list_mode:
        _nmode_list_bwd_kernel[grid](y0, g, gy1, gf0, gf1, grad_y0, g_full, dts_t, w, wl, n_list, N, G,
                                     METHOD=METHOD_ID[cfg.method], **common)
    elif cfg.gradient == "checkpoint":
        _nmode_pe_bwd_kernel[grid](y0, g, gy1, gf0, gf1, grad_y0, g_full, status, par,
                                   cfg.max_num_steps, N, G, **common)
    else:
        adj = [] if cfg.adaptive else fixed_grid_steps(0.0, t1 - t0, float(cfg.step_size), cfg.max_num_steps)
        adj_t = torch.tensor(adj or [0.0], dtype=torch.float64, device=dev)
        _nmode_adjoint_bwd_kernel[grid](y0, g, gy1, gf0, gf1, grad_y0, g_full, status, par, dts_t if n_list else adj_t,
                                        w, wl, n_list, adj_t, len(adj), cfg.max_num_steps, N, G,
                                        METHOD=METHOD_ID[cfg.method], LIST=list_mode, **common)
    _check_status(status, cfg)
    grad_g = g_full.view(N // G, G).sum(0)
    return grad_y0, grad_g


# ================================================================ ahead-of-time compilation

def aot_variants() -> list[dict]:
    """What ``python -m tools.gpucheck`` compiles for sm_80/sm_90: every kernel, in float32
    and float64, with the constexprs production launches use (the heaviest method per kernel;
    per-method variants of the list kernels for rk4 and dopri5)."""
    out = []
    for dt in ("fp32", "fp64"):
        p = f"*{dt}"
        common = {"BLOCK": BLOCK}
        for method in ("rk4", "dopri5"):
            out.append({"kernel": _nmode_list_fwd_kernel,
                        "signature": {"y0_ptr": p, "g_ptr": p, "y1_ptr": p, "f0_ptr": p, "f1_ptr": p,
                                      "dts_ptr": "*fp64", "w_ptr": p, "wl_ptr": p, "n": "i32",
                                      "N": "i32", "G": "i32"},
                        "constexprs": {"METHOD": METHOD_ID[method], "NEED_F": True, **common},
                        "label": f"{dt} {method} need_f"})
            out.append({"kernel": _nmode_list_bwd_kernel,
                        "signature": {"y0_ptr": p, "g_ptr": p, "gy1_ptr": p, "gf0_ptr": p, "gf1_ptr": p,
                                      "gy0_ptr": p, "gg_ptr": p, "dts_ptr": "*fp64", "w_ptr": p,
                                      "wl_ptr": p, "n": "i32", "N": "i32", "G": "i32"},
                        "constexprs": {"METHOD": METHOD_ID[method], "HAS_GF0": True, "HAS_GF1": True,
                                       "C": CHECKPOINTS, **common},
                        "label": f"{dt} {method} grad_f"})
            out.append({"kernel": _nmode_adjoint_bwd_kernel,
                        "signature": {"y0_ptr": p, "g_ptr": p, "gy1_ptr": p, "gf0_ptr": p, "gf1_ptr": p,
                                      "gy0_ptr": p, "gg_ptr": p, "status_ptr": "*i32", "par_ptr": "*fp64",
                                      "dts_ptr": "*fp64", "w_ptr": p, "wl_ptr": p, "n": "i32",
                                      "adj_dts_ptr": "*fp64", "n_adj": "i32", "max_steps": "i32",
                                      "N": "i32", "G": "i32"},
                        "constexprs": {"METHOD": METHOD_ID[method], "LIST": method != "dopri5",
                                       "HAS_GF0": True, "HAS_GF1": True, "C": CHECKPOINTS, **common},
                        "label": f"{dt} {method} {'list' if method != 'dopri5' else 'per_element'}"})
        out.append({"kernel": _nmode_global_init_kernel,
                    "signature": {"y0_ptr": p, "g_ptr": p, "f_ptr": p, "part_ptr": "*fp64",
                                  "par_ptr": "*fp64", "N": "i32", "G": "i32"},
                    "constexprs": common, "label": dt})
        out.append({"kernel": _nmode_global_d2_kernel,
                    "signature": {"y0_ptr": p, "f_ptr": p, "g_ptr": p, "part_ptr": "*fp64",
                                  "par_ptr": "*fp64", "N": "i32", "G": "i32"},
                    "constexprs": common, "label": dt})
        out.append({"kernel": _nmode_global_attempt_kernel,
                    "signature": {"y_ptr": p, "f_ptr": p, "g_ptr": p, "ynew_ptr": p, "fnew_ptr": p,
                                  "part_ptr": "*fp64", "out_ptr": p, "fout_ptr": p, "par_ptr": "*fp64",
                                  "wl_ptr": p, "N": "i32", "G": "i32"},
                    "constexprs": {"FINISHING": True, "NEED_F": True, **common},
                    "label": f"{dt} finishing need_f"})
        out.append({"kernel": _nmode_pe_fwd_kernel,
                    "signature": {"y0_ptr": p, "g_ptr": p, "y1_ptr": p, "f0_ptr": p, "f1_ptr": p,
                                  "status_ptr": "*i32", "par_ptr": "*fp64", "max_steps": "i32",
                                  "N": "i32", "G": "i32"},
                    "constexprs": {"NEED_F": True, "C": CHECKPOINTS, **common},
                    "label": f"{dt} need_f"})
        out.append({"kernel": _nmode_pe_bwd_kernel,
                    "signature": {"y0_ptr": p, "g_ptr": p, "gy1_ptr": p, "gf0_ptr": p, "gf1_ptr": p,
                                  "gy0_ptr": p, "gg_ptr": p, "status_ptr": "*i32", "par_ptr": "*fp64",
                                  "max_steps": "i32", "N": "i32", "G": "i32"},
                    "constexprs": {"HAS_GF0": True, "HAS_GF1": True, "C": CHECKPOINTS, **common},
                    "label": f"{dt} grad_f"})
    for v in out:
        v["options"] = dict(LAUNCH)
    return out


assert set(METHOD_ID) == set(METHODS), "METHOD_ID must cover config.METHODS"
