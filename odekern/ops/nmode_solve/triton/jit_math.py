"""The nmODE math of the Triton kernels as jit device functions: sincos, the RHS, Runge-Kutta
stages and steps (forward and reverse mode), torchdiffeq's step-size controller, the
per-element dopri5 loop and the step-list solves. kernels.py builds the kernels from these.

Every coefficient and controller constant is derived from the solver core's tableaus and
controllers: the stage coupling a(i, j) is read at compile time from coefficients.py
(stage_coupling), the rest from constants_generated.py, so this file restates no number of a
method. The math follows csrc/ops/nmode_solve/nmode_solve.h (same tableaus, accumulation order and controller
with time in float64 and stages in the state's dtype), with three differences that move
rounding only, each covered by the tolerances the backend tests use
(odekern.testing.ROUNDING_TOL): the RHS takes sin^2(x) as (1 - cos 2x) / 2 from the shared
polynomial sincos (one range reduction serves f and its derivative sin 2x; the header's
fast_sin_sq squares a sine), pow(r, 1/5) is exp2(log2(r) / 5), and the global error norm's float64
partial sums are added in another order.
"""

import triton
import triton.language as tl

from odekern.ops.nmode_solve.coefficients import COEFFICIENTS
from odekern.ops.nmode_solve.config import MethodId
from odekern.ops.nmode_solve.triton.constants_generated import (  # noqa: F401 - read by the jit code
    DENSE_F0_1, DENSE_F0_2, DENSE_F0_3, DENSE_F0_4, DENSE_F1_2, DENSE_F1_3, DENSE_F1_4, DENSE_MID_2,
    DENSE_MID_3, DENSE_MID_4, DENSE_Y1_2, DENSE_Y1_3, DENSE_Y1_4, DFACTOR, DOPRI5, DP5_B0, DP5_B1,
    DP5_B2, DP5_B3, DP5_B4, DP5_B5, DP5_B6, DP5_E0, DP5_E2, DP5_E3, DP5_E4, DP5_E5, DP5_E6, DP5_MID0,
    DP5_MID1, DP5_MID2, DP5_MID3, DP5_MID4, DP5_MID5, DP5_MID6, EULER, EULER_B0, F32_MAGIC, F32_PIO2_HI,
    F32_PIO2_LO, F32_PIO2_MID, F32_RANGE, F32_TWO_OVER_PI, F64_MAGIC, F64_PIO2_HI, F64_PIO2_LO,
    F64_PIO2_MID, F64_RANGE, F64_TWO_OVER_PI, IFACTOR, INITIAL_FLAT_FLOOR, INITIAL_FLAT_SHRINK,
    INITIAL_MAX_GROWTH, INITIAL_NORM_FLOOR, INITIAL_STEP_FRACTION, INITIAL_TINY_STEP, MIDPOINT,
    MIDPOINT_B0, MIDPOINT_B1, RK38_B0, RK38_B1, RK38_B2, RK38_B3, RK4, RK4C_B0, RK4C_B1, RK4C_B2,
    RK4C_B3, RK4_CLASSIC, SAFETY, STATUS_NON_FINITE, STATUS_OK, STATUS_STEP_UNDERFLOW,
    STATUS_TOO_MANY_STEPS, STEP_EXPONENT,
)


# ============================================================================ math: the RHS

@triton.jit
def sincos(x):
    """sin(x), cos(x) with the header's fast_sincos: x = k pi/2 + r by Cody-Waite (three-part
    pi/2, k rounded with the 1.5*2^p trick), Taylor kernels on |r| <= pi/4, quadrant selects.
    Mirrored rather than tl.sin/tl.cos so that backends agree to the last bits and libdevice's
    large-argument path (a local array on the stack) stays out of the kernels."""
    if x.dtype == tl.float64:
        kf = (x * F64_TWO_OVER_PI + F64_MAGIC) - F64_MAGIC
        r = x - kf * F64_PIO2_HI
        r = r - kf * F64_PIO2_MID
        r = r - kf * F64_PIO2_LO
        r2 = r * r
        s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 + r2 * (
            -1.0 / 39916800 + r2 * (1.0 / 6227020800.0 + r2 * (-1.0 / 1307674368000.0
                                                              + r2 * (1.0 / 355687428096000.0))))))))
        c = 1.0 - 0.5 * r2 + r2 * r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (
            -1.0 / 3628800 + r2 * (1.0 / 479001600.0 + r2 * (-1.0 / 87178291200.0 + r2 * (
                1.0 / 20922789888000.0 + r2 * (-1.0 / 6402373705728000.0))))))))
    else:
        kf = (x * F32_TWO_OVER_PI + F32_MAGIC) - F32_MAGIC
        r = x - kf * F32_PIO2_HI
        r = r - kf * F32_PIO2_MID
        r = r - kf * F32_PIO2_LO
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
def sin2_cos2(x):
    """sin(2x) and cos(2x) for x = y + g, inf where |x| is beyond the fused sine's range
    (F32_RANGE / F64_RANGE), as in the header's kernels; the solve then names the input. The
    range is on x although this reduces 2x (the header reduces x) so that every fused backend
    accepts the same inputs; within it the result is as accurate as the header's
    (tests/ops/test_fast_sine.py)."""
    s, c = sincos(2.0 * x)
    if x.dtype == tl.float64:
        beyond = tl.abs(x) > F64_RANGE
    else:
        beyond = tl.abs(x) > F32_RANGE
    return tl.where(beyond, float("inf"), s), tl.where(beyond, float("inf"), c)


@triton.jit
def rhs(y, g):
    # sin^2(x) = (1 - cos 2x) / 2: one transcendental per evaluation.
    _, c = sin2_cos2(y + g)
    return -y + (0.5 - 0.5 * c)


@triton.jit
def rhs_sin2(y, g):
    """f and sin(2(y+g)) = df/dg (df/dy = that - 1), from one range reduction."""
    s, c = sin2_cos2(y + g)
    return -y + (0.5 - 0.5 * c), s


@triton.jit
def sys_f(y, a, g, ADJ: tl.constexpr):
    """RHS of the state [y] (ADJ=False) or of the reversed-time adjoint [y, a_y, a_g]."""
    if ADJ:
        f, s2 = rhs_sin2(y, g)
        fy = -f
        fa = a * (s2 - 1.0)
        fb = a * s2
    else:
        fy = rhs(y, g)
        fa = fy
        fb = fy
    return fy, fa, fb


# ================================================================ math: Butcher tableau rows

@triton.constexpr_function
def stage_coupling(method, i, j):
    """a(i, j) of the tableau of nmode_solve's method id ``method`` (0 where j >= i), read at
    compile time from coefficients.py: the jit code below names no coupling coefficient."""
    row = COEFFICIENTS[MethodId(method)].a[i]
    return row[j] if j < len(row) else 0.0


@triton.jit
def coupled(acc, k, dt, sb, METHOD: tl.constexpr, I: tl.constexpr, J: tl.constexpr,
            REVERSE: tl.constexpr):
    """One term of stage I's input through stage J (nothing where a(I, J) = 0). Forward (k
    read, dt and sb not): acc + a(I, J) k, the sum's next term. Reverse (k not read): k's
    cotangent acc + dt a(I, J) sb, with sb the stage input's cotangent (the transpose of the
    same term)."""
    if stage_coupling(METHOD, I, J) != 0.0:
        if REVERSE:
            acc += dt * stage_coupling(METHOD, I, J) * sb
        else:
            acc = acc + stage_coupling(METHOD, I, J) * k
    return acc


@triton.jit
def stage_input(x, dt, ks, METHOD: tl.constexpr, I: tl.constexpr):
    """Input of stage I (1-based stage I+1): x + dt * sum_j a(I, j) k_j over the nonzero
    a(I, j) in order, as the header sums them (-0.0 + v is v exactly and folds away). ks: the
    earlier stages k_0 .. k_{I-1} (a tuple; entries past them are never read)."""
    acc = -0.0
    for j in tl.static_range(I):
        acc = coupled(acc, ks[j], dt, dt, METHOD, I, j, False)
    return x + dt * acc


@triton.jit
def stage_vjp(kbs, q, dt, yb, gb, METHOD: tl.constexpr, I: tl.constexpr):
    """Reverse of stage I (0-based) of a step, k = f(s) with s = stage_input(y, ..., I): with
    q = sin(2(s+g)), s's cotangent sb = kb f_y(s) = kb (q - 1), kb = kbs[I], goes to y (yb)
    and, through the stage coupling, to the earlier stages' cotangents kbs[j]; g receives
    kb f_g = kb q. Returns (kbs, yb, gb) with kbs updated."""
    kb = kbs[I]
    sb = kb * (q - 1.0)
    out = ()
    for j in tl.static_range(len(kbs)):
        out = out + (coupled(kbs[j], kbs[j], dt, sb, METHOD, I, j, True),)
    return out, yb + sb, gb + kb * q


@triton.jit
def combine(x, dt, w1, w2, w3, w4, w5, w6, w7, k1, k2, k3, k4, k5, k6, k7, METHOD: tl.constexpr):
    """x + dt * sum_j w_j k_j over the method's stages."""
    if METHOD == EULER:
        r = x + dt * (w1 * k1)
    elif METHOD == MIDPOINT:
        r = x + dt * (w1 * k1 + w2 * k2)
    elif METHOD == DOPRI5:
        r = x + dt * (w1 * k1 + w2 * k2 + w3 * k3 + w4 * k4 + w5 * k5 + w6 * k6 + w7 * k7)
    else:
        r = x + dt * (w1 * k1 + w2 * k2 + w3 * k3 + w4 * k4)
    return r


@triton.jit
def dopri5_error(dt, k1, k3, k4, k5, k6, k7):
    """5th minus 4th order solution: dt * sum_j e_j k_j."""
    return dt * (DP5_E0 * k1 + DP5_E2 * k3 + DP5_E3 * k4 + DP5_E4 * k5 + DP5_E5 * k6 + DP5_E6 * k7)


@triton.jit
def dense_weights(theta):
    """torchdiffeq's dopri5 dense output at theta as step weights (float64, per lane)."""
    x = theta
    x2 = x * x
    x3 = x2 * x
    x4 = x3 * x
    w_y1 = DENSE_Y1_2 * x2 + DENSE_Y1_3 * x3 + DENSE_Y1_4 * x4
    w_mid = DENSE_MID_2 * x2 + DENSE_MID_3 * x3 + DENSE_MID_4 * x4
    w_f0 = DENSE_F0_1 * x + DENSE_F0_2 * x2 + DENSE_F0_3 * x3 + DENSE_F0_4 * x4
    w_f1 = DENSE_F1_2 * x2 + DENSE_F1_3 * x3 + DENSE_F1_4 * x4
    w1 = w_y1 * DP5_B0 + w_mid * DP5_MID0 + w_f0
    w2 = w_y1 * DP5_B1 + w_mid * DP5_MID1
    w3 = w_y1 * DP5_B2 + w_mid * DP5_MID2
    w4 = w_y1 * DP5_B3 + w_mid * DP5_MID3
    w5 = w_y1 * DP5_B4 + w_mid * DP5_MID4
    w6 = w_y1 * DP5_B5 + w_mid * DP5_MID5
    w7 = w_y1 * DP5_B6 + w_mid * DP5_MID6 + w_f1
    return w1, w2, w3, w4, w5, w6, w7


# ============================================================ math: one step, forward / VJP

@triton.jit
def sys_stages(y, a, g, dt, fy, fa, fb, METHOD: tl.constexpr, ADJ: tl.constexpr):
    """Stages 2..7 of one step of the state (y[, a_y, a_g]) from the FSAL value f(y): three
    tuples (of y, a_y, a_g), each indexed by stage - 2; unused stages repeat f."""
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
    if METHOD >= MIDPOINT:
        y2, a2, b2 = sys_f(stage_input(y, dt, (fy,), METHOD, 1),
                            stage_input(a, dt, (fa,), METHOD, 1), g, ADJ)
    if METHOD >= RK4:
        y3, a3, b3 = sys_f(stage_input(y, dt, (fy, y2), METHOD, 2),
                            stage_input(a, dt, (fa, a2), METHOD, 2), g, ADJ)
        y4, a4, b4 = sys_f(stage_input(y, dt, (fy, y2, y3), METHOD, 3),
                            stage_input(a, dt, (fa, a2, a3), METHOD, 3), g, ADJ)
    if METHOD == DOPRI5:
        y5, a5, b5 = sys_f(stage_input(y, dt, (fy, y2, y3, y4), METHOD, 4),
                            stage_input(a, dt, (fa, a2, a3, a4), METHOD, 4), g, ADJ)
        y6, a6, b6 = sys_f(stage_input(y, dt, (fy, y2, y3, y4, y5), METHOD, 5),
                            stage_input(a, dt, (fa, a2, a3, a4, a5), METHOD, 5), g, ADJ)
        y7, a7, b7 = sys_f(stage_input(y, dt, (fy, y2, y3, y4, y5, y6), METHOD, 6),
                            stage_input(a, dt, (fa, a2, a3, a4, a5, a6), METHOD, 6), g, ADJ)
    return (y2, y3, y4, y5, y6, y7), (a2, a3, a4, a5, a6, a7), (b2, b3, b4, b5, b6, b7)


@triton.jit
def step(y, g, dt, w1, w2, w3, w4, w5, w6, w7, METHOD: tl.constexpr):
    """One step of the nmODE with weights w (b, or dopri5's dense weights on a last step)."""
    f = rhs(y, g)
    ky, _ka, _kb = sys_stages(y, y, g, dt, f, f, f, METHOD, False)
    return combine(y, dt, w1, w2, w3, w4, w5, w6, w7, f, ky[0], ky[1], ky[2], ky[3], ky[4], ky[5],
                    METHOD)


@triton.constexpr_function
def stage_count(method):
    """Stages of nmode_solve's method id ``method`` (dopri5: 7, its FSAL stage included)."""
    return COEFFICIENTS[MethodId(method)].stages


@triton.jit
def step_vjp(y, g, dt, w1, w2, w3, w4, w5, w6, w7, yb1, METHOD: tl.constexpr):
    """Reverse mode of y1 = step(y): returns (d y1/d y)^T yb1 and (d y1/d g)^T yb1.

    Stages are recomputed with their sin(2(s+g)); then kbar_j = dt w_j yb1 + sum_{i>j} dt
    a(i,j) sbar_i with sbar_i = kbar_i f_y(s_i), walked from the last stage down (header order).
    dopri5 includes its 7th (FSAL) stage: its weight is 0 except on an interpolated last step,
    where the header includes it; with weight 0 it adds exact zeros.
    """
    S: tl.constexpr = stage_count(METHOD)
    k, q = rhs_sin2(y, g)
    ks = (k,)
    qs = (q,)
    for i in tl.static_range(1, S):
        k, q = rhs_sin2(stage_input(y, dt, ks, METHOD, i), g)
        ks = ks + (k,)
        qs = qs + (q,)
    ws = (w1, w2, w3, w4, w5, w6, w7)
    kbs = ()
    for j in tl.static_range(S):
        kbs = kbs + (dt * ws[j] * yb1,)
    yb = yb1
    gb = yb1 * 0.0
    for i in tl.static_range(S - 1, -1, -1):
        kbs, yb, gb = stage_vjp(kbs, qs[i], dt, yb, gb, METHOD, i)
    return yb, gb


@triton.jit
def rhs_vjp(y, g, fbar):
    """Contribution of an f output's cotangent to (ybar, gbar)."""
    _, s2 = rhs_sin2(y, g)
    return fbar * (s2 - 1.0), fbar * s2


# ====================================================== math: torchdiffeq's step controller

@triton.jit
def optimal_step(dt, ratio):
    """torchdiffeq's _optimal_step_size (order 5), with pow(r, 1/5) as exp2(log2(r) / 5)."""
    one = tl.full(dt.shape, 1.0, tl.float64)
    dfactor = tl.where(ratio < 1.0, one, one * DFACTOR)
    # A constexpr divided by a tensor is not a tensor op in the interpreter: one * c is c exactly.
    factor = one * SAFETY / tl.exp2(tl.log2(ratio) * STEP_EXPONENT)
    factor = tl.minimum(tl.maximum(factor, dfactor), one * IFACTOR)
    return tl.where(ratio == 0.0, dt * IFACTOR, dt * factor)


@triton.jit
def initial_step(y, a, g, rtol, atol, ADJ: tl.constexpr):
    """torchdiffeq's initial step per lane; the norm over components is max(|.|) (float64)."""
    T = y.dtype
    fy, fa, fb = sys_f(y, a, g, ADJ)
    sy = atol + tl.abs(y.to(tl.float64)) * rtol
    d0 = tl.abs(y.to(tl.float64)) / sy
    d1 = tl.abs(fy.to(tl.float64)) / sy
    if ADJ:
        sa = atol + tl.abs(a.to(tl.float64)) * rtol
        d0 = tl.maximum(d0, tl.abs(a.to(tl.float64)) / sa)
        d1 = tl.maximum(tl.maximum(d1, tl.abs(fa.to(tl.float64)) / sa), tl.abs(fb.to(tl.float64)) / atol)
    one = tl.full(d0.shape, 1.0, tl.float64)
    h0 = tl.where((d0 < INITIAL_NORM_FLOOR) | (d1 < INITIAL_NORM_FLOOR), one * INITIAL_TINY_STEP,
                  INITIAL_STEP_FRACTION * d0 / d1)
    gy, ga, gbb = sys_f(y + h0.to(T) * fy, a + h0.to(T) * fa, g, ADJ)
    d2 = tl.abs((gy - fy).to(tl.float64)) / sy / h0
    if ADJ:
        d2 = tl.maximum(d2, tl.abs((ga - fa).to(tl.float64)) / sa / h0)
        d2 = tl.maximum(d2, tl.abs((gbb - fb).to(tl.float64)) / atol / h0)
    small = (d1 <= INITIAL_FLAT_FLOOR) & (d2 <= INITIAL_FLAT_FLOOR)
    h1 = tl.where(small, tl.maximum(one * INITIAL_TINY_STEP, h0 * INITIAL_FLAT_SHRINK),
                  tl.exp2(tl.log2(one * INITIAL_STEP_FRACTION / tl.maximum(d1, d2)) * STEP_EXPONENT))
    return tl.minimum(INITIAL_MAX_GROWTH * h0, h1)


@triton.jit
def error_ratio(err, x0, x1, rtol, atol):
    """|err| / (atol + rtol max(|x0|, |x1|)) in the state's dtype, returned as float64."""
    T = x0.dtype
    r = err / (atol.to(T) + rtol.to(T) * tl.maximum(tl.abs(x0), tl.abs(x1)))
    return tl.abs(r.to(tl.float64))


@triton.jit
def pe_dopri5(y, a, b, g, h, lane, t_end, rtol, atol, max_steps, lo, hi,
               ADJ: tl.constexpr, RECORD: tl.constexpr, C: tl.constexpr, BLOCK: tl.constexpr):
    """Per-lane adaptive dopri5 over [0, t_end], the header's sys_solve_dopri5 vectorised.

    Each lane keeps its own (t, h, state) and stops when it passes t_end (then interpolates at
    t_end with the dense output) or fails (its status then names why: failures.Status).
    With RECORD, the accepted steps with index in [lo, hi) are written to (buf_y, buf_dt) and a
    lane stops right after recording step hi - 1.
    Returns (y, a, b, n_accepted, theta_of_last_step, status, buf_y, buf_dt).
    """
    T = y.dtype
    fy, fa, fb = sys_f(y, a, g, ADJ)
    t = tl.zeros([BLOCK], tl.float64)
    theta = t + 1.0
    done = lane == 0
    status = tl.full([BLOCK], STATUS_OK, tl.int32)
    attempts = tl.zeros([BLOCK], tl.int32)
    index = tl.zeros([BLOCK], tl.int32)
    buf_y = tl.zeros([C, BLOCK], T)
    buf_dt = tl.zeros([C, BLOCK], T)
    rows = tl.arange(0, C)[:, None]
    while tl.max((done == 0).to(tl.int32), axis=0) > 0:
        act = done == 0
        over = act & (attempts >= max_steps)
        status = tl.where(over, STATUS_TOO_MANY_STEPS, status)
        act = act & (over == 0)
        attempts += act.to(tl.int32)
        dt = h
        t_next = t + dt
        under = act & ((t_next > t) == 0)
        status = tl.where(under, STATUS_STEP_UNDERFLOW, status)
        act = act & (under == 0)
        dtT = dt.to(T)
        ky, ka, kb = sys_stages(y, a, g, dtT, fy, fa, fb, DOPRI5, ADJ)
        y1 = stage_input(y, dtT, (fy, ky[0], ky[1], ky[2], ky[3], ky[4]), DOPRI5, 6)
        ratio = error_ratio(dopri5_error(dtT, fy, ky[1], ky[2], ky[3], ky[4], ky[5]), y, y1, rtol, atol)
        if ADJ:
            a1 = stage_input(a, dtT, (fa, ka[0], ka[1], ka[2], ka[3], ka[4]), DOPRI5, 6)
            bb1 = stage_input(b, dtT, (fb, kb[0], kb[1], kb[2], kb[3], kb[4]), DOPRI5, 6)
            ratio = tl.maximum(ratio, error_ratio(dopri5_error(dtT, fa, ka[1], ka[2], ka[3], ka[4], ka[5]),
                                             a, a1, rtol, atol))
            ratio = tl.maximum(ratio, error_ratio(dopri5_error(dtT, fb, kb[1], kb[2], kb[3], kb[4], kb[5]),
                                             b, bb1, rtol, atol))
        nonfinite = act & (ratio != ratio)  # noqa: PLR0124 - the NaN test
        status = tl.where(nonfinite, STATUS_NON_FINITE, status)
        act = act & (nonfinite == 0)
        accept = act & (ratio <= 1.0)
        finish = accept & (t_next >= t_end)
        if RECORD:
            sel = (rows == (index - lo)[None, :]) & (accept & (index >= lo) & (index < hi))[None, :]
            buf_y = tl.where(sel, y[None, :], buf_y)
            buf_dt = tl.where(sel, dtT[None, :], buf_dt)
        th = tl.where(finish, (t_end - t) / (t_next - t), theta)
        w1, w2, w3, w4, w5, w6, w7 = dense_weights(th)
        w1 = w1.to(T)
        w2 = w2.to(T)
        w3 = w3.to(T)
        w4 = w4.to(T)
        w5 = w5.to(T)
        w6 = w6.to(T)
        w7 = w7.to(T)
        step_on = accept & (finish == 0)
        yd = combine(y, dtT, w1, w2, w3, w4, w5, w6, w7, fy, ky[0], ky[1], ky[2], ky[3], ky[4], ky[5], 4)
        y = tl.where(finish, yd, tl.where(step_on, y1, y))
        fy = tl.where(step_on, ky[5], fy)
        if ADJ:
            ad = combine(a, dtT, w1, w2, w3, w4, w5, w6, w7, fa, ka[0], ka[1], ka[2], ka[3], ka[4], ka[5], 4)
            bd = combine(b, dtT, w1, w2, w3, w4, w5, w6, w7, fb, kb[0], kb[1], kb[2], kb[3], kb[4], kb[5], 4)
            a = tl.where(finish, ad, tl.where(step_on, a1, a))
            b = tl.where(finish, bd, tl.where(step_on, bb1, b))
            fa = tl.where(step_on, ka[5], fa)
            fb = tl.where(step_on, kb[5], fb)
        t = tl.where(step_on, t_next, t)
        theta = th
        index += accept.to(tl.int32)
        stop = finish | (over | under | nonfinite)
        if RECORD:
            stop = stop | (accept & (index >= hi))
        done = done | stop
        h = tl.where(act, optimal_step(dt, ratio), h)
    return y, a, b, index, theta, status, buf_y, buf_dt


@triton.jit
def pick(buf, rows, i):
    """buf[i, :] of a [C, BLOCK] register array (i is a scalar or one index per lane)."""
    return tl.sum(tl.where(rows == i, buf, 0.0), axis=0)


@triton.jit
def load_weights(w_ptr, T: tl.constexpr):
    return (tl.load(w_ptr + 0).to(T), tl.load(w_ptr + 1).to(T), tl.load(w_ptr + 2).to(T),
            tl.load(w_ptr + 3).to(T), tl.load(w_ptr + 4).to(T), tl.load(w_ptr + 5).to(T),
            tl.load(w_ptr + 6).to(T))


@triton.jit
def list_step(y, g, dt, w, wl, last, METHOD: tl.constexpr):
    """One step of a step list: weights w (7-tuple), or wl on the last step (dopri5's dense
    output at theta)."""
    return step(y, g, dt, tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]), tl.where(last, wl[4], w[4]),
                tl.where(last, wl[5], w[5]), tl.where(last, wl[6], w[6]), METHOD)


@triton.jit
def list_step_vjp(y, g, dt, w, wl, last, yb1, METHOD: tl.constexpr):
    """Reverse mode of list_step (step_vjp with the same weights)."""
    return step_vjp(y, g, dt, tl.where(last, wl[0], w[0]), tl.where(last, wl[1], w[1]),
                    tl.where(last, wl[2], w[2]), tl.where(last, wl[3], w[3]), tl.where(last, wl[4], w[4]),
                    tl.where(last, wl[5], w[5]), tl.where(last, wl[6], w[6]), yb1, METHOD)


@triton.jit
def list_solve(y, g, dts_ptr, n, w_ptr, wl_ptr, METHOD: tl.constexpr):
    """y after the shared step list (last step with the weights wl)."""
    T = y.dtype
    w = load_weights(w_ptr, T)
    wl = load_weights(wl_ptr, T)
    for i in range(n):
        dt = tl.load(dts_ptr + i).to(T)
        y = list_step(y, g, dt, w, wl, i == n - 1, METHOD)
    return y


@triton.jit
def list_solve_adjoint(y, a, b, g, dts_ptr, n, METHOD: tl.constexpr):
    """The adjoint system [y, a_y, a_g] along a step list (fixed grid, weights b)."""
    T = y.dtype
    for i in range(n):
        dt = tl.load(dts_ptr + i).to(T)
        fy, fa, fb = sys_f(y, a, g, True)
        ky, ka, kb = sys_stages(y, a, g, dt, fy, fa, fb, METHOD, True)
        if METHOD == EULER:
            y = y + dt * (EULER_B0 * fy)
            a = a + dt * (EULER_B0 * fa)
            b = b + dt * (EULER_B0 * fb)
        elif METHOD == MIDPOINT:
            y = y + dt * (MIDPOINT_B0 * fy + MIDPOINT_B1 * ky[0])
            a = a + dt * (MIDPOINT_B0 * fa + MIDPOINT_B1 * ka[0])
            b = b + dt * (MIDPOINT_B0 * fb + MIDPOINT_B1 * kb[0])
        elif METHOD == RK4:
            y = y + dt * (RK38_B0 * fy + RK38_B1 * ky[0] + RK38_B2 * ky[1] + RK38_B3 * ky[2])
            a = a + dt * (RK38_B0 * fa + RK38_B1 * ka[0] + RK38_B2 * ka[1] + RK38_B3 * ka[2])
            b = b + dt * (RK38_B0 * fb + RK38_B1 * kb[0] + RK38_B2 * kb[1] + RK38_B3 * kb[2])
        else:
            y = y + dt * (RK4C_B0 * fy + RK4C_B1 * ky[0] + RK4C_B2 * ky[1] + RK4C_B3 * ky[2])
            a = a + dt * (RK4C_B0 * fa + RK4C_B1 * ka[0] + RK4C_B2 * ka[1] + RK4C_B3 * ka[2])
            b = b + dt * (RK4C_B0 * fb + RK4C_B1 * kb[0] + RK4C_B2 * kb[1] + RK4C_B3 * kb[2])
    return y, a, b
