// Vectorised CPU continuous adjoint of nmode_solve (torch-free, like nmode_solve_cpu_kernels.h,
// so the vectoriser report can be checked by compiling it alone).
//
// The adjoint integrates x = [y, a_y, a_g] from t1 back to t0 (AdjointSys of the header:
// dy/dtau = -f(y), da_y/dtau = a_y f_y, da_g/dtau = a_y f_g), per element. Fixed-step methods
// run the reversed grid on blocks of elements in lockstep. dopri5 runs torchdiffeq's adaptive
// algorithm on each element's own 3-vector (error norm = max over the three components), so
// elements need different numbers of attempts (2 to 4 on the CNM setting): kBlock lanes run
// one attempt together (stage-major `omp simd` loops, lane-local dt), and a lane whose
// element has finished is refilled with the next element of the task at once, so lanes are
// not left idle until the slowest element of a fixed block is done (that would waste ~45% on
// the CNM setting).
//
// Same semantics as the header's scalar adjoint_solve: the same stages, error estimate,
// acceptance test, dense output and controller, with one difference: the step-size factor
// ratio^(-1/5) and the initial step's (0.01 / d)^(1/5) come from a vectorisable Newton
// iteration instead of libm's pow (a scalar call per lane and attempt would cost as much as
// the attempt). It agrees with pow to ~1e-15 relative, so step sizes agree with the scalar
// path and torchdiffeq's to that precision.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_kernels.h"

namespace odekern {
namespace nmode {
namespace cpu {

// x^(-1/5) for x in [1e-12, 1e12]: a bit-level first guess (float exponent / 5, within 4%)
// and five Newton steps z <- z (6 - x z^5) / 5 in double (quadratic: 4e-2, 5e-3, 7e-5, 1.5e-8,
// ~1e-15, rounding). No division, no libm: vectorises.
NMODE_INLINE double inv_fifth_root(double x) {
  const float xf = float(x);
  int32_t i;
  std::memcpy(&i, &xf, sizeof(i));
  const int32_t j = int32_t(1278023859.0f - float(i) * 0.2f);
  float zf;
  std::memcpy(&zf, &j, sizeof(zf));
  double z = zf;
NMODE_UNROLL
  for (int it = 0; it < 5; ++it) {
    const double z2 = z * z, z5 = z2 * z2 * z;
    z = z * (1.2 - 0.2 * x * z5);
  }
  return z;
}

// x^(-1/5) for any x > 0 of practical size (2^-400 .. 2^400): exact power-of-two range
// reduction into [2^-40, 2^40] (x 2^-50k <-> z 2^10k), then inv_fifth_root.
NMODE_INLINE double inv_fifth_root_wide(double x) {
  double s = 1.0;
NMODE_UNROLL
  for (int it = 0; it < 8; ++it) {
    const bool big = x > 0x1p40, small = x < 0x1p-40;
    x = big ? x * 0x1p-50 : (small ? x * 0x1p50 : x);
    s = big ? s * 0x1p-10 : (small ? s * 0x1p10 : s);
  }
  return s * inv_fifth_root(x);
}

// optimal_step of the header (torchdiffeq's _optimal_step_size, order 5) with the root above.
// The ratio is clamped to [1e-12, 1e12] first: outside, the factor is clamped to ifactor (10)
// or dfactor (0.2) either way, so the result does not change.
NMODE_INLINE double optimal_step_lanes(double dt, double ratio) {
  const double safety = 0.9, ifactor = 10.0;
  const double dfactor = ratio < 1.0 ? 1.0 : 0.2;
  const double rc = ratio < 1e-12 ? 1e-12 : (ratio > 1e12 ? 1e12 : ratio);
  double factor = safety * inv_fifth_root(rc);
  factor = factor > dfactor ? factor : dfactor;
  factor = factor < ifactor ? factor : ifactor;
  return ratio == 0.0 ? dt * ifactor : dt * factor;
}

// ------------------------------------------------------------------------------------------
// Stages of the adjoint system over a block of lanes, each lane with its own step dt[e].
// k[d][j][e]: component d (y, a_y, a_g) of stage j. The a_g stage inputs are never formed:
// the RHS does not depend on a_g (its stages are still needed for the error and the update).
// ------------------------------------------------------------------------------------------
template <typename T>
using AdjStages = T[3][7][kBlock];

template <typename T, int M, int I>
NMODE_INLINE void adj_stage_block(const T (*__restrict x)[kBlock], const T* __restrict g,
                                  const T* __restrict dt, int64_t len, AdjStages<T>& k) {
  using Tab = Tableau<M>;
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    T yi = x[0][e], ai = x[1][e];
    if (I > 0) {
      yi = yi + dt[e] * weighted_sum<T, I>([](int j) { return Tab::a(I, j); }, k[0], e);
      ai = ai + dt[e] * weighted_sum<T, I>([](int j) { return Tab::a(I, j); }, k[1], e);
    }
    T s2;
    const T fy = rhs_and_sin2(yi, g[e], &s2);
    k[0][I][e] = -fy;
    k[1][I][e] = ai * (s2 - T(1));
    k[2][I][e] = ai * s2;
  }
}

template <typename T, int M, int I, int S>
struct AdjSweep {
  static NMODE_INLINE void run(const T (*x)[kBlock], const T* g, const T* dt, int64_t len, AdjStages<T>& k) {
    adj_stage_block<T, M, I>(x, g, dt, len, k);
    AdjSweep<T, M, I + 1, S>::run(x, g, dt, len, k);
  }
};
template <typename T, int M, int S>
struct AdjSweep<T, M, S, S> {
  static NMODE_INLINE void run(const T (*)[kBlock], const T*, const T*, int64_t, AdjStages<T>&) {}
};

// ------------------------------------------------------------------------------------------
// Fixed grid: every element of a block takes the same steps (dts of the reversed grid).
// x[0..2] in place.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
NMODE_INLINE void adj_list_block(T (*__restrict x)[kBlock], const T* __restrict g, int64_t len,
                                 const double* dts, int64_t n) {
  constexpr int S = Tableau<M>::S;
  alignas(64) AdjStages<T> k;
  alignas(64) T dt[kBlock];
  for (int64_t i = 0; i < n; ++i) {
    const T h = T(dts[i]);
    for (int64_t e = 0; e < len; ++e) dt[e] = h;
    AdjSweep<T, M, 0, S>::run(x, g, dt, len, k);
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) {
NMODE_UNROLL
      for (int d = 0; d < 3; ++d)
        x[d][e] = x[d][e] + h * weighted_sum<T, S>([](int j) { return Tableau<M>::b(j); }, k[d], e);
    }
  }
}

// ------------------------------------------------------------------------------------------
// dopri5 with per-element control, lanes refilled as elements finish.
// ------------------------------------------------------------------------------------------

// Initial state of the adjoint solve of up to kBlock elements (prepared together, vectorised):
// x = [y(t1), a_y(t1), 0], its RHS f (the first FSAL stage) and torchdiffeq's initial step.
template <typename T>
struct AdjStart {
  alignas(64) T x[3][kBlock];
  alignas(64) T f[3][kBlock];
  alignas(64) T g[kBlock];
  alignas(64) double h[kBlock];
};

// torchdiffeq's initial step selection for each lane (sys_solve_dopri5's, norm = max over the
// three components), f = AdjointSys rhs at x.
template <typename T>
NMODE_INLINE void adj_initial_step_block(AdjStart<T>& s, int64_t len, double rtol, double atol) {
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    T s2;
    const T fy = rhs_and_sin2(s.x[0][e], s.g[e], &s2);
    s.f[0][e] = -fy;
    s.f[1][e] = s.x[1][e] * (s2 - T(1));
    s.f[2][e] = s.x[1][e] * s2;
    double sc[3], d0 = 0, d1 = 0;
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      const double ax = s.x[d][e] < T(0) ? -double(s.x[d][e]) : double(s.x[d][e]);
      const double af = s.f[d][e] < T(0) ? -double(s.f[d][e]) : double(s.f[d][e]);
      sc[d] = atol + ax * rtol;
      const double q0 = ax / sc[d], q1 = af / sc[d];
      d0 = d0 > q0 ? d0 : q0;
      d1 = d1 > q1 ? d1 : q1;
    }
    const double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    const T h0t = T(h0);
    const T y1 = s.x[0][e] + h0t * s.f[0][e], a1 = s.x[1][e] + h0t * s.f[1][e];
    T s2b;
    const T fyb = rhs_and_sin2(y1, s.g[e], &s2b);
    const T f1[3] = {-fyb, a1 * (s2b - T(1)), a1 * s2b};
    double d2 = 0;
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      const T df = f1[d] - s.f[d][e];
      const double q = (df < T(0) ? -double(df) : double(df)) / sc[d] / h0;
      d2 = d2 > q ? d2 : q;
    }
    const double dm = d1 > d2 ? d1 : d2;
    const double hsmall = h0 * 1e-3 > 1e-6 ? h0 * 1e-3 : 1e-6;
    // (0.01 / dm)^(1/5) = (100 dm)^(-1/5); dm > 1e-15 on this branch.
    const double h1 = (d1 <= 1e-15 && d2 <= 1e-15) ? hsmall : inv_fifth_root_wide(100.0 * (dm > 1e-15 ? dm : 1e-15));
    s.h[e] = 100 * h0 < h1 ? 100 * h0 : h1;
  }
}

// Lane outcome after an attempt.
enum LaneOutcome : int32_t { kLaneRunning = 0, kLaneDone = 1, kLaneFailed = 2 };

// The lanes: state, FSAL stage (k[d][0]), time, next step, attempts, and the element each
// lane works on (-1: idle).
template <typename T>
struct AdjLanes {
  alignas(64) T x[3][kBlock];
  alignas(64) AdjStages<T> k;
  alignas(64) T g[kBlock];
  alignas(64) T dt[kBlock];
  alignas(64) T out[2][kBlock];  // a_y(t0), a_g(t0) of lanes that finished in this attempt
  alignas(64) double t[kBlock], h[kBlock], theta[kBlock];
  alignas(64) int32_t outcome[kBlock];
  alignas(64) int32_t status[kBlock];
  int64_t attempts[kBlock];
  int64_t elem[kBlock];
};

// One dopri5 attempt of every lane, then each lane's controller: accept / reject, move on,
// or finish (dense output at theta into out). Idle lanes compute on stale finite data and
// report kLaneRunning. Returns the number of lanes that finished or failed.
template <typename T>
NMODE_INLINE int64_t adj_attempt_lanes(AdjLanes<T>& L, double t_end, T rtol, T atol, int64_t max_steps) {
  using D = Tableau<kDopri5>;
  AdjSweep<T, kDopri5, 1, 7>::run(L.x, L.g, L.dt, kBlock, L.k);
  int64_t ended = 0;
#pragma omp simd reduction(+ : ended)
  for (int64_t e = 0; e < kBlock; ++e) {
    const T dt = L.dt[e];
    T x1[3], rmax = T(0);
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      x1[d] = combine_b<T, kDopri5>(L.x[d][e], dt, L.k[d], e);
      const T err = dt * weighted_sum<T, 7>([](int j) { return D::e(j); }, L.k[d], e);
      T r = error_ratio(err, L.x[d][e], x1[d], rtol, atol);
      r = r < T(0) ? -r : r;
      // max that lets a NaN through (the scalar path's fmax of doubles would drop it, but it
      // tests the ratio for NaN before; here a NaN component must fail the lane).
      rmax = (r > rmax || r != r) ? r : rmax;
    }
    const double ratio = double(rmax);
    const bool active = L.elem[e] >= 0;
    const bool nan = !(ratio == ratio);
    const bool accept = ratio <= 1.0;
    const double t_next = L.t[e] + L.h[e];
    const bool fin = accept && t_next >= t_end;
    const bool move = accept && !fin;
    L.theta[e] = fin ? (t_end - L.t[e]) / (t_next - L.t[e]) : 1.0;
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      L.x[d][e] = move ? x1[d] : L.x[d][e];
      L.k[d][0][e] = move ? L.k[d][6][e] : L.k[d][0][e];
    }
    L.t[e] = move ? t_next : L.t[e];
    const double h = optimal_step_lanes(L.h[e], ratio);
    L.h[e] = fin ? L.h[e] : h;
    L.dt[e] = T(L.h[e]);
    const int64_t att = L.attempts[e] + 1;
    L.attempts[e] = att;
    // Checks the scalar solver makes before its next attempt.
    const bool too_many = !fin && att >= max_steps;
    const bool underflow = !fin && !(L.t[e] + L.h[e] > L.t[e]);
    const int32_t st = nan ? int32_t(kNonFinite) : too_many ? int32_t(kTooManySteps)
                     : underflow ? int32_t(kStepUnderflow) : int32_t(kOk);
    L.status[e] = st;
    const int32_t oc = !active ? int32_t(kLaneRunning) : st != kOk ? int32_t(kLaneFailed)
                     : fin ? int32_t(kLaneDone) : int32_t(kLaneRunning);
    L.outcome[e] = oc;
    ended += oc != kLaneRunning ? 1 : 0;
  }
  return ended;
}

// Dense output (torchdiffeq's, dopri5_dense_weights) of a_y and a_g at each lane's theta.
// Computed for all lanes (one loop, vectorised); only finished lanes' values are used.
template <typename T>
NMODE_INLINE void adj_dense_out_lanes(AdjLanes<T>& L) {
  using D = Tableau<kDopri5>;
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) {
    const double x = L.theta[e], x2 = x * x, x3 = x2 * x, x4 = x3 * x;
    const double w_y1 = -5 * x2 + 14 * x3 - 8 * x4;
    const double w_mid = 16 * x2 - 32 * x3 + 16 * x4;
    const double w_f0 = x - 4 * x2 + 5 * x3 - 2 * x4;
    const double w_f1 = x2 - 3 * x3 + 2 * x4;
    T w[7];
NMODE_UNROLL
    for (int j = 0; j < 7; ++j)
      w[j] = T(w_y1 * D::b(j) + w_mid * D::mid(j) + (j == 0 ? w_f0 : 0.0) + (j == 6 ? w_f1 : 0.0));
    const T dt = T(L.h[e]);
NMODE_UNROLL
    for (int d = 1; d < 3; ++d) {
      T acc = T(0);
NMODE_UNROLL
      for (int j = 0; j < 7; ++j) acc += w[j] * L.k[d][j][e];
      L.out[d - 1][e] = L.x[d][e] + dt * acc;
    }
  }
}

// ------------------------------------------------------------------------------------------
// The whole adjoint backward of elements [b, e): y(t1) recomputed from y0 (the forward's step
// list, or per-element control), cotangent seeds from grad_y1 and grad_f1, the adjoint solve,
// and grad_f0's contribution. Writes grad_y0 and the per-element grad_g contribution (summed
// over the repeats of g by the caller). Returns the worst Status of the task's elements.
// ------------------------------------------------------------------------------------------
template <typename T>
struct AdjointTask {
  const T* y0;
  const T* g;
  int64_t G;
  const T* gy1;
  const T* gf0;  // may be null
  const T* gf1;  // may be null
  T* gy0;
  T* gfull;
  // y(t1): the forward's list of steps (w: tableau weights, wl: the last step's), or
  // per-element control (pe_y1).
  const double* dts;
  int64_t n;
  const T* w;
  const T* wl;
  bool pe_y1;
  double t_span, rtol, atol;
  int64_t max_steps;
  // Fixed-step methods: the reversed grid.
  const double* adj_dts;
  int64_t adj_n;
};

// x = [y(t1), a_y(t1), 0] and g of elements [s, s + len), len <= kBlock; grad_f1's part of
// grad_g goes to gfull (the adjoint's a_g(t0) is added to it at the end).
template <typename T, int M>
NMODE_INLINE int adj_prepare_block(const AdjointTask<T>& A, int64_t s, int64_t len, AdjStart<T>& S) {
  int64_t gi = s % A.G;
  for (int64_t e = 0; e < len; ++e) {
    S.g[e] = A.g[gi];
    gi = (gi + 1 == A.G) ? 0 : gi + 1;
    S.x[0][e] = A.y0[s + e];
  }
  int status = kOk;
  if (A.pe_y1) {
    const PerElementParams p{A.t_span, A.rtol, A.atol, A.max_steps};
    for (int64_t e = 0; e < len; ++e) status = std::max(status, pe_solve<T>(&S.x[0][e], S.g[e], p));
  } else {
    for (int64_t i = 0; i < A.n; ++i)
      advance_block<T, M>(S.x[0], S.g, len, T(A.dts[i]), (i == A.n - 1) ? A.wl : A.w, i == A.n - 1);
  }
  T* gb = A.gfull + s;
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    T a = A.gy1[s + e], v = T(0);
    if (A.gf1 != nullptr) rhs_vjp(S.x[0][e], S.g[e], A.gf1[s + e], &a, &v);
    S.x[1][e] = a;
    S.x[2][e] = T(0);
    gb[e] = v;
  }
  return status;
}

// Where a task's refill stands: the next element, and the prepared block [ps, ps + plen).
struct AdjFeed {
  int64_t next, end, ps, plen;
};

// Puts the task's next element into lane l (preparing the next block of starts when the
// prepared one is used up); false if the task has none left.
template <typename T, int M>
NMODE_INLINE bool adj_load_lane(const AdjointTask<T>& A, AdjFeed& F, AdjStart<T>& S, AdjLanes<T>& L,
                                int64_t l, int& worst) {
  if (F.next == F.end) return false;
  if (F.next == F.ps + F.plen) {
    F.ps = F.next;
    F.plen = std::min(kBlock, F.end - F.next);
    worst = std::max(worst, adj_prepare_block<T, M>(A, F.ps, F.plen, S));
    adj_initial_step_block<T>(S, F.plen, A.rtol, A.atol);
  }
  const int64_t j = F.next - F.ps;
  for (int d = 0; d < 3; ++d) {
    L.x[d][l] = S.x[d][j];
    L.k[d][0][l] = S.f[d][j];
  }
  L.g[l] = S.g[j];
  L.h[l] = S.h[j];
  L.dt[l] = T(S.h[j]);
  L.t[l] = 0.0;
  L.attempts[l] = 0;
  L.elem[l] = F.next++;
  return true;
}

template <typename T, int M>
ODEKERN_ISA_CLONES int adjoint_backward_task(const AdjointTask<T>& A, int64_t b, int64_t end) {
  int worst = kOk;
  alignas(64) AdjStart<T> S;
  if (M != kDopri5) {
    for (int64_t s = b; s < end; s += kBlock) {
      const int64_t len = std::min(kBlock, end - s);
      worst = std::max(worst, adj_prepare_block<T, M>(A, s, len, S));
      adj_list_block<T, M>(S.x, S.g, len, A.adj_dts, A.adj_n);
      for (int64_t e = 0; e < len; ++e) {
        A.gy0[s + e] = S.x[1][e];
        A.gfull[s + e] = A.gfull[s + e] + S.x[2][e];
      }
    }
  } else {
    alignas(64) AdjLanes<T> L;
    // Idle lanes compute on this finite dummy state until refilled.
    for (int64_t l = 0; l < kBlock; ++l) {
      for (int d = 0; d < 3; ++d) {
        L.x[d][l] = T(0);
        for (int j = 0; j < 7; ++j) L.k[d][j][l] = T(0);
      }
      L.g[l] = T(0);
      L.t[l] = 0.0;
      L.h[l] = 1.0;
      L.dt[l] = T(1);
      L.theta[l] = 1.0;
      L.attempts[l] = 0;
      L.elem[l] = -1;
    }
    AdjFeed F{b, end, b, 0};
    const T rt = T(A.rtol), at_ = T(A.atol);
    int64_t active = 0;
    for (int64_t l = 0; l < kBlock; ++l) active += adj_load_lane<T, M>(A, F, S, L, l, worst) ? 1 : 0;
    int64_t ended_lanes[kBlock];
    while (active > 0) {
      const int64_t ended = adj_attempt_lanes<T>(L, A.t_span, rt, at_, A.max_steps);
      if (ended == 0) continue;
      adj_dense_out_lanes<T>(L);
      int64_t m = 0;
      for (int64_t l = 0; l < kBlock; ++l) {  // branch-free list of the lanes that ended
        ended_lanes[m] = l;
        m += L.outcome[l] != kLaneRunning ? 1 : 0;
      }
      for (int64_t q = 0; q < m; ++q) {
        const int64_t l = ended_lanes[q], i = L.elem[l];
        if (L.outcome[l] == kLaneDone) {
          A.gy0[i] = L.out[0][l];
          A.gfull[i] = A.gfull[i] + L.out[1][l];
        } else {
          worst = std::max(worst, int(L.status[l]));
          A.gy0[i] = T(0);
        }
        if (!adj_load_lane<T, M>(A, F, S, L, l, worst)) {
          L.elem[l] = -1;
          --active;
        }
      }
    }
  }
  if (A.gf0 != nullptr) {
    for (int64_t s = b; s < end; s += kBlock) {
      const int64_t len = std::min(kBlock, end - s);
      int64_t gi = s % A.G;
      for (int64_t e = 0; e < len; ++e) {
        S.g[e] = A.g[gi];
        gi = (gi + 1 == A.G) ? 0 : gi + 1;
      }
      T* gy = A.gy0 + s;
      T* gb = A.gfull + s;
#pragma omp simd
      for (int64_t e = 0; e < len; ++e) rhs_vjp(A.y0[s + e], S.g[e], A.gf0[s + e], &gy[e], &gb[e]);
    }
  }
  return worst;
}

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
