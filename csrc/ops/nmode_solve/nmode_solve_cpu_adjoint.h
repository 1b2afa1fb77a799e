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
// acceptance test, dense output and controller, with one difference: the controller's
// pow(x, 1/5) is nmode_solve_cpu_lane_control.h's inv_fifth_root(), shared with per-element
// control (a libm call per lane and attempt would cost as much as the attempt).
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_kernels.h"
#include "ops/nmode_solve/nmode_solve_cpu_lane_control.h"

namespace odekern {
namespace nmode {
namespace cpu {

// ------------------------------------------------------------------------------------------
// Stages of the adjoint system over a block of lanes, each lane with its own step dt[e].
// k[d][j][e]: component d (y, a_y, a_g) of stage j. The a_g stage inputs are never formed:
// the RHS does not depend on a_g (its stages are still needed for the error and the update).
// ------------------------------------------------------------------------------------------
template <typename T>
using AdjStages = T[3][7][kBlock];

template <typename T, int M, int I>
ODEKERN_ALWAYS_INLINE void adj_stage_block(const T (*__restrict x)[kBlock], const T* __restrict g,
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
  static ODEKERN_ALWAYS_INLINE void run(const T (*x)[kBlock], const T* g, const T* dt, int64_t len, AdjStages<T>& k) {
    adj_stage_block<T, M, I>(x, g, dt, len, k);
    AdjSweep<T, M, I + 1, S>::run(x, g, dt, len, k);
  }
};
template <typename T, int M, int S>
struct AdjSweep<T, M, S, S> {
  static ODEKERN_ALWAYS_INLINE void run(const T (*)[kBlock], const T*, const T*, int64_t, AdjStages<T>&) {}
};

// ------------------------------------------------------------------------------------------
// Fixed grid: every element of a block takes the same steps (dts of the reversed grid).
// x[0..2] in place.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
ODEKERN_ALWAYS_INLINE void adj_list_block(T (*__restrict x)[kBlock], const T* __restrict g, int64_t len,
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
  alignas(64) double h0[kBlock], h_small[kBlock], small[kBlock], root_arg[kBlock];
};

// torchdiffeq's initial step selection for each lane (sys_solve_dopri5's, norm = max over the
// three components), f = AdjointSys rhs at x.
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_initial_step_block(AdjStart<T>& s, int64_t len, double rtol, double atol) {
  // Split into loops so that no select has an operation in its arms (GCC sinks it there and
  // then, for a division or multiply that may trap, does not if-convert), and no selected
  // value feeds a double -> T conversion or inv_fifth_root: each loop then vectorises.
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    T s2;
    const T fy = rhs_and_sin2(s.x[0][e], s.g[e], &s2);
    s.f[0][e] = -fy;
    s.f[1][e] = s.x[1][e] * (s2 - T(1));
    s.f[2][e] = s.x[1][e] * s2;
  }
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    double d0 = 0, d1 = 0;
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      const double xd = double(s.x[d][e]), fd = double(s.f[d][e]);
      const double ax = xd < 0 ? -xd : xd, af = fd < 0 ? -fd : fd;
      const double sc = atol + ax * rtol;
      const double q0 = ax / sc, q1 = af / sc;
      d0 = d0 > q0 ? d0 : q0;
      d1 = d1 > q1 ? d1 : q1;
    }
    s.h0[e] = kInitialStepFraction * d0 / d1;
    s.small[e] = ((d0 < kInitialNormFloor) | (d1 < kInitialNormFloor)) ? 1.0 : 0.0;
    s.h_small[e] = d1;  // d1 for now
  }
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const double h0 = s.h0[e], flag = s.small[e];
    s.h0[e] = flag != 0.0 ? kInitialTinyStep : h0;
  }
  // The probe (a sincos and three divisions per lane) has a loop of its own, with d2 parked in
  // root_arg: together with the selects below it was one loop that GCC left scalar ("control
  // flow in loop"), ~a quarter of the adjoint's time on the CNM setting.
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const double h0 = s.h0[e];
    const T h0t = T(h0);
    const T y1 = s.x[0][e] + h0t * s.f[0][e], a1 = s.x[1][e] + h0t * s.f[1][e];
    T s2b;
    const T fyb = rhs_and_sin2(y1, s.g[e], &s2b);
    const T f1[3] = {-fyb, a1 * (s2b - T(1)), a1 * s2b};
    double d2 = 0;
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      const double xd = double(s.x[d][e]);
      const double sc = atol + (xd < 0 ? -xd : xd) * rtol;
      const double df = double(f1[d] - s.f[d][e]);
      const double q = (df < 0 ? -df : df) / sc / h0;
      d2 = d2 > q ? d2 : q;
    }
    s.root_arg[e] = d2;
  }
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const double h0 = s.h0[e], d1 = s.h_small[e], d2 = s.root_arg[e];
    // max(d1, d2, kInitialFlatFloor), clamping d1 first: GCC 12 leaves the loop scalar ("control
    // flow in loop") when the clamp follows max(d1, d2).
    const double d1c = d1 > kInitialFlatFloor ? d1 : kInitialFlatFloor;
    const double dm = d2 > d1c ? d2 : d1c;
    s.root_arg[e] = (1.0 / kInitialStepFraction) * dm;
    s.small[e] = ((d1 <= kInitialFlatFloor) & (d2 <= kInitialFlatFloor)) ? 1.0 : 0.0;
    const double hs = h0 * kInitialFlatShrink;
    s.h_small[e] = hs > kInitialTinyStep ? hs : kInitialTinyStep;
  }
  inv_fifth_root_lanes(s.root_arg, len);
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    // (kInitialStepFraction / dm)^(1/5) = (dm / kInitialStepFraction)^(-1/5); dm > kInitialFlatFloor
    // where it is used.
    const double hpow = s.root_arg[e], hs = s.h_small[e], sm = s.small[e];
    const double h1 = sm != 0.0 ? hs : hpow;
    const double h_max = kInitialMaxGrowth * s.h0[e];
    s.h[e] = h_max < h1 ? h_max : h1;
  }
}

// Lane outcome after an attempt.
enum LaneOutcome : int32_t { kLaneRunning = 0, kLaneDone = 1, kLaneFailed = 2 };

// The lanes: state, FSAL stage (k[d][0]), time, next step, attempts, and the element each
// lane works on (elem; active = 0: idle).
template <typename T>
struct AdjLanes {
  alignas(64) T x[3][kBlock];
  alignas(64) AdjStages<T> k;
  alignas(64) T x1[3][kBlock];   // candidate of the current attempt
  alignas(64) T g[kBlock];
  alignas(64) T dt[kBlock], dt_step[kBlock];
  alignas(64) T move[kBlock];    // 1: accepted and not finishing (take the candidate), else 0
  alignas(64) T out[2][kBlock];  // a_y(t0), a_g(t0) of lanes that finished in this attempt
  alignas(64) double t[kBlock], h[kBlock], theta[kBlock], ratio[kBlock], root[kBlock];
  alignas(64) double move_d[kBlock];
  alignas(64) double outcome[kBlock];   // a LaneOutcome
  alignas(64) double status[kBlock];    // a Status
  alignas(64) double attempts[kBlock];
  alignas(64) double active[kBlock];    // 1: working on elem, 0: idle
  int64_t elem[kBlock];
};

// No floating-point traps are ever enabled here, and without -fno-trapping-math GCC will not
// if-convert a select whose arm holds a division or multiply (code sinking moves them into
// the arm), which keeps this loop from vectorising. Results are unchanged (same rounding;
// only trap side effects are assumed absent). Only around the double-precision controller
// loops: the stage loops vectorise as they are.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
// Each lane's controller after an attempt (error ratio in L.ratio, its root in L.root).
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_control_lanes(AdjLanes<T>& L, double t_end, double max_steps) {
  // The controller in double only (GCC 12 does not vectorise selects that feed a double -> T
  // conversion or an int32 result); codes as exact small doubles, converted afterwards.
  // (No simd reduction here: under the optimize pragma GCC leaves its lane array unlowered.)
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) {
    const double ratio = L.ratio[e], t = L.t[e], hcur = L.h[e], root = L.root[e];
    const double att = L.attempts[e] + 1.0, active = L.active[e];
    const bool nan = !(ratio == ratio);
    const bool accept = ratio <= 1.0;
    const double t_next = t + hcur;
    const bool fin = accept & (t_next >= t_end);
    const bool move = accept & !fin;
    // theta and the next step are stored for every lane (only finishing lanes use theta; a
    // finishing lane's step for the dense output is in dt_step): no operation sits in the arm
    // of a select.
    L.theta[e] = (t_end - t) / (t_next - t);
    L.move_d[e] = move ? 1.0 : 0.0;
    const double tn = move ? t_next : t;
    const double hn = optimal_step_from_root(hcur, ratio, root);
    L.t[e] = tn;
    L.h[e] = hn;
    L.attempts[e] = att;
    // The checks the scalar solver makes before its next attempt, in its order.
    const bool too_many = !fin & (att >= max_steps);
    const bool underflow = !fin & !(tn + hn > tn);
    double st = underflow ? double(kStepUnderflow) : double(kOk);
    st = too_many ? double(kTooManySteps) : st;
    st = nan ? double(kNonFinite) : st;
    L.status[e] = st;
    double oc = fin ? double(kLaneDone) : double(kLaneRunning);
    oc = st != 0.0 ? double(kLaneFailed) : oc;
    oc = active != 0.0 ? oc : double(kLaneRunning);
    L.outcome[e] = oc;
  }
}
#pragma GCC pop_options

// The candidate, its error ratio (max over the three components) and the stages of one attempt
// of every lane: the arithmetic any dopri5 attempt on the adjoint system does, controller aside
// (the test extension's nmode_adjoint_attempt_floor times it alone).
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_candidate_lanes(AdjLanes<T>& L, T rtol, T atol) {
  using D = Tableau<kDopri5>;
  AdjSweep<T, kDopri5, 1, 7>::run(L.x, L.g, L.dt, kBlock, L.k);
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) {
    const T dt = L.dt[e];
    T rmax = T(0);
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      const T x1 = combine_b<T, kDopri5>(L.x[d][e], dt, L.k[d], e);
      const T err = dt * weighted_sum<T, 7>([](int j) { return D::e(j); }, L.k[d], e);
      T r = error_ratio(err, L.x[d][e], x1, rtol, atol);
      r = r < T(0) ? -r : r;
      // A NaN component must fail the lane: keep it (the scalar path tests for NaN).
      rmax = ((r > rmax) | (r != r)) ? r : rmax;
      L.x1[d][e] = x1;
    }
    L.ratio[e] = double(rmax);
    L.dt_step[e] = dt;
  }
}

// One dopri5 attempt of every lane, then each lane's controller: accept / reject, move on,
// or finish (the dense output is adj_dense_out_lanes). Idle lanes compute on stale finite
// data and report kLaneRunning.
// Three loops of one precision each (state in T, controller in double), each branch-free so
// that it vectorises.
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_attempt_lanes(AdjLanes<T>& L, double t_end, T rtol, T atol, double max_steps) {
  adj_candidate_lanes<T>(L, rtol, atol);
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) L.root[e] = controller_root_arg(L.ratio[e]);
  inv_fifth_root_normal_lanes(L.root, kBlock);
  adj_control_lanes<T>(L, t_end, max_steps);
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) {
    L.dt[e] = T(L.h[e]);
    L.move[e] = T(L.move_d[e]);
  }
#pragma omp simd
  for (int64_t e = 0; e < kBlock; ++e) {
    const bool move = L.move[e] != T(0);
NMODE_UNROLL
    for (int d = 0; d < 3; ++d) {
      L.x[d][e] = move ? L.x1[d][e] : L.x[d][e];
      L.k[d][0][e] = move ? L.k[d][6][e] : L.k[d][0][e];
    }
  }
}

// Dense output (torchdiffeq's, dopri5_dense_weights) of a_y and a_g at each lane's theta.
// Computed for all lanes (one loop, vectorised); only finished lanes' values are used.
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_dense_out_lanes(AdjLanes<T>& L) {
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
    const T dt = L.dt_step[e];
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
// The whole adjoint backward of elements [b, e): cotangent seeds at the forward's y(t1) from
// grad_y1 and grad_f1, the adjoint solve, and grad_f0's contribution. Writes grad_y0 and the
// per-element grad_g contribution (summed over the repeats of g by the caller). Returns the
// worst Status of the task's elements.
// ------------------------------------------------------------------------------------------
template <typename T>
struct AdjointTask {
  const T* y0;
  const T* y1;  // the forward's y(t1), where the backward solve starts
  const T* g;
  int64_t G;
  const T* gy1;
  const T* gf0;  // may be null
  const T* gf1;  // may be null
  T* gy0;
  T* gfull;
  double t_span, rtol, atol;
  int64_t max_steps;
  // Fixed-step methods: the reversed grid.
  const double* adj_dts;
  int64_t adj_n;
};

// x = [y(t1), a_y(t1), 0] and g of elements [s, s + len), len <= kBlock; grad_f1's part of
// grad_g goes to gfull (the adjoint's a_g(t0) is added to it at the end).
template <typename T>
ODEKERN_ALWAYS_INLINE void adj_prepare_block(const AdjointTask<T>& A, int64_t s, int64_t len, AdjStart<T>& S) {
  int64_t gi = s % A.G;
  for (int64_t e = 0; e < len; ++e) {
    S.g[e] = A.g[gi];
    gi = (gi + 1 == A.G) ? 0 : gi + 1;
    S.x[0][e] = A.y1[s + e];
  }
  T* gb = A.gfull + s;
#pragma omp simd  // left scalar by GCC 12 (the grad_f1 test); once per element
  for (int64_t e = 0; e < len; ++e) {
    T a = A.gy1[s + e], v = T(0);
    if (A.gf1 != nullptr) rhs_vjp(S.x[0][e], S.g[e], A.gf1[s + e], &a, &v);
    S.x[1][e] = a;
    S.x[2][e] = T(0);
    gb[e] = v;
  }
}

// Where a task's refill stands: the next element, and the prepared block [ps, ps + plen).
struct AdjFeed {
  int64_t next, end, ps, plen;
};

// Puts the task's next element into lane l (preparing the next block of starts when the
// prepared one is used up); false if the task has none left.
template <typename T>
ODEKERN_ALWAYS_INLINE bool adj_load_lane(const AdjointTask<T>& A, AdjFeed& F, AdjStart<T>& S, AdjLanes<T>& L,
                                int64_t l) {
  if (F.next == F.end) return false;
  if (F.next == F.ps + F.plen) {
    F.ps = F.next;
    F.plen = std::min(kBlock, F.end - F.next);
    adj_prepare_block<T>(A, F.ps, F.plen, S);
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
  L.active[l] = 1;
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
      adj_prepare_block<T>(A, s, len, S);
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
      L.active[l] = 0;
      L.elem[l] = -1;
    }
    AdjFeed F{b, end, b, 0};
    const double max_steps = double(A.max_steps);  // exact (< 2^53)
    const T rt = T(A.rtol), at_ = T(A.atol);
    int64_t active = 0;
    for (int64_t l = 0; l < kBlock; ++l) active += adj_load_lane<T>(A, F, S, L, l) ? 1 : 0;
    int64_t ended_lanes[kBlock];
    while (active > 0) {
      adj_attempt_lanes<T>(L, A.t_span, rt, at_, max_steps);
      int64_t m = 0;
      for (int64_t l = 0; l < kBlock; ++l) {  // branch-free list of the lanes that ended
        ended_lanes[m] = l;
        m += L.outcome[l] != 0.0 ? 1 : 0;
      }
      if (m == 0) continue;
      adj_dense_out_lanes<T>(L);
      for (int64_t q = 0; q < m; ++q) {
        const int64_t l = ended_lanes[q], i = L.elem[l];
        if (L.outcome[l] == double(kLaneDone)) {
          A.gy0[i] = L.out[0][l];
          A.gfull[i] = A.gfull[i] + L.out[1][l];
        } else {
          worst = std::max(worst, int(L.status[l]));
          A.gy0[i] = T(0);
        }
        if (!adj_load_lane<T>(A, F, S, L, l)) {
          L.active[l] = 0;
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
