// Vectorised CPU block loops of nmode_solve (torch-free, so the vectoriser report can be
// checked by compiling this header alone). Elements come in blocks of at most kBlock held in
// local arrays; steps are the outer loop, elements the inner `#pragma omp simd` loop. Each
// function is compiled per ISA (ODEKERN_ISA_CLONES) and picked at load time.
#pragma once

#include <algorithm>
#include <cstdint>

#include "ops/nmode_solve/nmode_solve.h"

namespace odekern {
namespace nmode {
namespace cpu {

constexpr int64_t kBlock = 64;

// Stage-major layout. One RK step of a block runs stage by stage, each stage an `omp simd`
// loop over the block with the stages kept in a block-local k[S][kBlock] (L1-resident). The
// element-major alternative (one loop iteration = a whole step of one vector) is a single
// dependency chain of S polynomial cos evaluations per iteration; the out-of-order window
// cannot overlap enough iterations to hide it, and it ran at half the instruction rate of
// the cos floor. Per stage the iterations are independent and short, like the floor's.
// Arithmetic is that of rk_step / rk_step_vjp in the header, term by term and in the same
// order; terms with a zero tableau coefficient are skipped (bit-identical for finite values).
template <typename T>
using StageArray = T[kBlock];

// sum_{j<J} c(j) k[j][e] for compile-time coefficients c, in order j = 0, 1, ..., skipping
// zeros and starting from the first product (the header's `acc = 0; acc += c k` gives the
// same bits for finite values, two instructions more per stage).
template <typename T, int J, class Coef>
ODEKERN_ALWAYS_INLINE T weighted_sum(Coef c, const StageArray<T>* k, int64_t e) {
  T acc = T(0);
  bool first = true;
NMODE_UNROLL
  for (int j = 0; j < J; ++j) {
    if (c(j) != 0.0) {
      acc = first ? T(c(j)) * k[j][e] : acc + T(c(j)) * k[j][e];
      first = false;
    }
  }
  return acc;
}

// k[I][e] = f(y + dt * sum_{j<I} a(I, j) k[j][e]) for one stage I.
template <typename T, int M, int I>
ODEKERN_ALWAYS_INLINE void stage_block(const T* __restrict y, const T* __restrict g, int64_t len, T dt,
                              StageArray<T>* __restrict k) {
  using Tab = Tableau<M>;
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const T acc = weighted_sum<T, I>([](int j) { return Tab::a(I, j); }, k, e);
    k[I][e] = rhs(I == 0 ? y[e] : y[e] + dt * acc, g[e]);
  }
}

// Stages I .. S-1 (k[0] given), unrolled at compile time so the coefficients are constants.
template <typename T, int M, int I, int S>
struct StageSweep {
  static ODEKERN_ALWAYS_INLINE void run(const T* y, const T* g, int64_t len, T dt, StageArray<T>* k) {
    stage_block<T, M, I>(y, g, len, dt, k);
    StageSweep<T, M, I + 1, S>::run(y, g, len, dt, k);
  }
};
template <typename T, int M, int S>
struct StageSweep<T, M, S, S> {
  static ODEKERN_ALWAYS_INLINE void run(const T*, const T*, int64_t, T, StageArray<T>*) {}
};

// y + dt * sum_j b_j k_j with the tableau's (constant) weights.
template <typename T, int M>
ODEKERN_ALWAYS_INLINE T combine_b(T y, T dt, const StageArray<T>* k, int64_t e) {
  return y + dt * weighted_sum<T, Tableau<M>::S>([](int j) { return Tableau<M>::b(j); }, k, e);
}

// y + dt * sum_j w_j k_j with run-time weights (dopri5's dense output on the last step).
template <typename T, int S>
ODEKERN_ALWAYS_INLINE T combine_w(T y, T dt, const T* w, const StageArray<T>* k, int64_t e) {
  T acc = T(0);
NMODE_UNROLL
  for (int j = 0; j < S; ++j) acc += w[j] * k[j][e];
  return y + dt * acc;
}

// One step of every element of a block, in place. dopri5's FSAL stage is evaluated only on
// the interpolated last step (its weight is zero otherwise); other steps use the constant b.
template <typename T, int M>
ODEKERN_ALWAYS_INLINE void advance_block(T* __restrict y, const T* __restrict g, int64_t len, T dt, const T* w,
                                bool last) {
  constexpr int S = Tableau<M>::S;
  alignas(64) T k[S][kBlock];
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) k[0][e] = rhs(y[e], g[e]);
  if (M == kDopri5 && last) {
    StageSweep<T, M, 1, S>::run(y, g, len, dt, k);
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) y[e] = combine_w<T, S>(y[e], dt, w, k, e);
  } else {
    StageSweep<T, M, 1, (M == kDopri5 ? S - 1 : S)>::run(y, g, len, dt, k);
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) y[e] = combine_b<T, M>(y[e], dt, k, e);
  }
}

// Finiteness probe, summed over a block: y - y is 0 for finite y and NaN for inf/NaN, so the
// sum is 0 exactly when every element is finite. Forward block loops add it while the output
// is still in registers, so the op can refuse a non-finite y(t1) without a second pass over it.
template <typename T>
ODEKERN_ALWAYS_INLINE T nonfinite_probe(T y) {
  return y - y;
}

template <typename T>
ODEKERN_ISA_CLONES T nonfinite_probe_block(const T* __restrict y, int64_t len) {
  T probe = T(0);
#pragma omp simd reduction(+ : probe)
  for (int64_t e = 0; e < len; ++e) probe += nonfinite_probe(y[e]);
  return probe;
}

// ------------------------------------------------------------------------------------------
// Forward over a list of dts (fixed grids), one block; returns the finiteness probe of y1.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
ODEKERN_ISA_CLONES T list_forward_block(const T* __restrict y0, const T* __restrict g, int64_t len,
                                           const double* dts, int64_t n, const T* w, const T* wl,
                                           T* __restrict y1, T* __restrict f0, T* __restrict f1) {
  alignas(64) T y[kBlock], gg[kBlock];
  for (int64_t e = 0; e < len; ++e) {
    y[e] = y0[e];
    gg[e] = g[e];
  }
  if (f0 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) f0[e] = rhs(y[e], gg[e]);
  }
  for (int64_t i = 0; i < n; ++i) {
    const T dt = T(dts[i]);
    advance_block<T, M>(y, gg, len, dt, (i == n - 1) ? wl : w, i == n - 1);
  }
  T probe = T(0);
#pragma omp simd reduction(+ : probe)
  for (int64_t e = 0; e < len; ++e) {
    y1[e] = y[e];
    probe += nonfinite_probe(y[e]);
  }
  if (f1 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) f1[e] = rhs(y[e], gg[e]);
  }
  return probe;
}

// ------------------------------------------------------------------------------------------
// Global control: one dopri5 attempt over a block; returns the sum of squared error ratios.
// A non-finishing attempt writes the candidate state and FSAL stage; the finishing attempt
// (t + dt >= t1) writes only the interpolated output (and f there) from the same stages (no
// second evaluation): its candidate is never needed (accepted = done, rejected = discarded);
// its sum also carries the output's finiteness probe (NaN if any output is inf or NaN).
// ------------------------------------------------------------------------------------------
// Element e of a dopri5 attempt: the candidate y (through yn) and its squared error ratio.
template <typename T>
ODEKERN_ALWAYS_INLINE double squared_error_ratio(const T* __restrict y, const StageArray<T>* k, int64_t e, T dt,
                                        T rtol, T atol, T* yn) {
  using D = Tableau<kDopri5>;
  *yn = combine_b<T, kDopri5>(y[e], dt, k, e);
  const T acc = weighted_sum<T, 7>([](int j) { return D::e(j); }, k, e);
  const T r = error_ratio(dt * acc, y[e], *yn, rtol, atol);
  return double(r) * double(r);
}

template <typename T>
ODEKERN_ISA_CLONES double global_attempt_block(const T* __restrict y, const T* __restrict f,
                                               const T* __restrict g, int64_t len, T dt,
                                               bool finishing, const T* wl, T rtol, T atol,
                                               T* __restrict ynew, T* __restrict fnew,
                                               T* __restrict out, T* __restrict fout) {
  alignas(64) T k[7][kBlock];
  for (int64_t e = 0; e < len; ++e) k[0][e] = f[e];
  StageSweep<T, kDopri5, 1, 7>::run(y, g, len, dt, k);
  double sum = 0.0;
  if (!finishing) {
#pragma omp simd reduction(+ : sum)
    for (int64_t e = 0; e < len; ++e) {
      T yn;
      sum += squared_error_ratio(y, k, e, dt, rtol, atol, &yn);
      ynew[e] = yn;
      fnew[e] = k[6][e];
    }
    return sum;
  }
#pragma omp simd reduction(+ : sum)
  for (int64_t e = 0; e < len; ++e) {
    T yn;
    sum += squared_error_ratio(y, k, e, dt, rtol, atol, &yn);
    out[e] = combine_w<T, 7>(y[e], dt, wl, k, e);
    sum += double(nonfinite_probe(out[e]));
  }
  if (fout != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) fout[e] = rhs(out[e], g[e]);
  }
  return sum;
}

// Sums of squares for torchdiffeq's initial step: (y0/scale)^2, (f0/scale)^2; also writes f0.
template <typename T>
ODEKERN_ISA_CLONES void initial_norms_block(const T* __restrict y, const T* __restrict g, int64_t len,
                                            T rtol, T atol, T* __restrict f, double* d0, double* d1) {
  double s0 = 0, s1 = 0;
#pragma omp simd reduction(+ : s0, s1)
  for (int64_t e = 0; e < len; ++e) {
    const T fe = rhs(y[e], g[e]);
    f[e] = fe;
    const T ay = y[e] < T(0) ? -y[e] : y[e];
    const T scale = atol + ay * rtol;
    const T a = y[e] / scale, b = fe / scale;
    s0 += double(a) * double(a);
    s1 += double(b) * double(b);
  }
  *d0 = s0;
  *d1 = s1;
}

template <typename T>
ODEKERN_ISA_CLONES double initial_d2_block(const T* __restrict y, const T* __restrict f,
                                           const T* __restrict g, int64_t len, T h0, T rtol, T atol) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t e = 0; e < len; ++e) {
    const T f1 = rhs(y[e] + h0 * f[e], g[e]);
    const T ay = y[e] < T(0) ? -y[e] : y[e];
    const T v = (f1 - f[e]) / (atol + ay * rtol);
    s += double(v) * double(v);
  }
  return s;
}

// ------------------------------------------------------------------------------------------
// Reverse mode of one step for a block (rk_step_vjp of the header, stage-major): stages and
// sin(2(y+g)) recomputed from ys into block-local arrays, then the reverse sweep per element.
// kDense: dopri5's interpolated last step (run-time weights w over all 7 stages); otherwise
// the tableau's b (dopri5 without its FSAL stage).
// ------------------------------------------------------------------------------------------
template <typename T, int M, int I>
ODEKERN_ALWAYS_INLINE void stage_sin2_block(const T* __restrict y, const T* __restrict g, int64_t len, T dt,
                                   StageArray<T>* __restrict k, StageArray<T>* __restrict s2) {
  using Tab = Tableau<M>;
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const T acc = weighted_sum<T, I>([](int j) { return Tab::a(I, j); }, k, e);
    k[I][e] = rhs_and_sin2(I == 0 ? y[e] : y[e] + dt * acc, g[e], &s2[I][e]);
  }
}
template <typename T, int M, int I, int S>
struct Sin2Sweep {
  static ODEKERN_ALWAYS_INLINE void run(const T* y, const T* g, int64_t len, T dt, StageArray<T>* k, StageArray<T>* s2) {
    stage_sin2_block<T, M, I>(y, g, len, dt, k, s2);
    Sin2Sweep<T, M, I + 1, S>::run(y, g, len, dt, k, s2);
  }
};
template <typename T, int M, int S>
struct Sin2Sweep<T, M, S, S> {
  static ODEKERN_ALWAYS_INLINE void run(const T*, const T*, int64_t, T, StageArray<T>*, StageArray<T>*) {}
};

template <typename T, int M, bool kDense>
ODEKERN_ALWAYS_INLINE void step_vjp_block(const T* __restrict ys, const T* __restrict g, int64_t len, T dt,
                                 const T* w, T* __restrict yb, T* __restrict gb) {
  using Tab = Tableau<M>;
  constexpr int S = (M == kDopri5 && !kDense) ? Tab::S - 1 : Tab::S;
  alignas(64) T k[S][kBlock], s2[S][kBlock];
  Sin2Sweep<T, M, 0, S>::run(ys, g, len, dt, k, s2);
#pragma omp simd
  for (int64_t e = 0; e < len; ++e) {
    const T ybar1 = yb[e];
    T kbar[S];
NMODE_UNROLL
    for (int j = 0; j < S; ++j) kbar[j] = dt * (kDense ? w[j] : T(Tab::b(j))) * ybar1;
    T ybar = ybar1, gacc = T(0);
NMODE_UNROLL
    for (int i = S - 1; i >= 0; --i) {
      const T sbar = kbar[i] * (s2[i][e] - T(1));
      gacc += kbar[i] * s2[i][e];
      ybar += sbar;
NMODE_UNROLL
      for (int j = 0; j < i; ++j)
        if (Tab::a(i, j) != 0.0) kbar[j] += dt * T(Tab::a(i, j)) * sbar;
    }
    yb[e] = ybar;
    gb[e] += gacc;
  }
}

// ------------------------------------------------------------------------------------------
// Exact backward over a list of dts, one block: two-level checkpointing as list_solve_vjp
// in the header, vectorised across the block. Up to kCheckpoints steps every state is a
// checkpoint, so the cost is one forward pass (n - 1 steps; n with an f1 cotangent, which
// needs y(t1)) plus n reverse steps.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
ODEKERN_ISA_CLONES void list_backward_block(const T* __restrict y0, const T* __restrict g, int64_t len,
                                            const double* dts, int64_t n, const T* w, const T* wl,
                                            const T* __restrict gy1, const T* __restrict gf0,
                                            const T* __restrict gf1, T* __restrict gy0,
                                            T* __restrict gg_out, bool accumulate_g) {
  (void)w;
  alignas(64) T ck[kCheckpoints][kBlock];
  alignas(64) T buf[kCheckpoints][kBlock];
  alignas(64) T y[kBlock], gg[kBlock], yb[kBlock], gb[kBlock];
  for (int64_t e = 0; e < len; ++e) {
    y[e] = y0[e];
    gg[e] = g[e];
    gb[e] = T(0);
  }
  const int64_t seg = n > 0 ? (n + kCheckpoints - 1) / kCheckpoints : 1;
  for (int64_t i = 0; i < n; ++i) {
    if (i % seg == 0) std::copy(y, y + len, ck[i / seg]);
    if (i + 1 < n || gf1 != nullptr) advance_block<T, M>(y, gg, len, T(dts[i]), wl, i == n - 1);
  }
  // y is now y(t1) (if needed): seed the cotangent with the f1 output's contribution.
  for (int64_t e = 0; e < len; ++e) yb[e] = gy1[e];
  if (gf1 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) rhs_vjp(y[e], gg[e], gf1[e], &yb[e], &gb[e]);
  }
  // A macro, not a lambda: a lambda is a separate function that target_clones does not
  // clone, so its body (the whole reverse sweep) would run in the baseline ISA.
#define NMODE_STEP_BACK(ys, i)                                                                 \
  do {                                                                                         \
    if ((i) == n - 1 && M == kDopri5)                                                          \
      step_vjp_block<T, M, true>((ys), gg, len, T(dts[(i)]), wl, yb, gb);                      \
    else                                                                                       \
      step_vjp_block<T, M, false>((ys), gg, len, T(dts[(i)]), wl, yb, gb);                     \
  } while (0)
  for (int64_t s = n > 0 ? (n - 1) / seg : -1; s >= 0; --s) {
    const int64_t start = s * seg, end = std::min(start + seg, n);
    if (end - start == 1) {
      NMODE_STEP_BACK(ck[s], start);
    } else if (end - start <= kCheckpoints) {
      std::copy(ck[s], ck[s] + len, y);
      for (int64_t i = start; i < end; ++i) {
        std::copy(y, y + len, buf[i - start]);
        if (i + 1 < end) advance_block<T, M>(y, gg, len, T(dts[i]), wl, false);
      }
      for (int64_t i = end - 1; i >= start; --i) NMODE_STEP_BACK(buf[i - start], i);
    } else {
      for (int64_t i = end - 1; i >= start; --i) {
        std::copy(ck[s], ck[s] + len, y);
        for (int64_t j = start; j < i; ++j) advance_block<T, M>(y, gg, len, T(dts[j]), wl, false);
        NMODE_STEP_BACK(y, i);
      }
    }
  }
#undef NMODE_STEP_BACK
  if (gf0 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) rhs_vjp(y0[e], gg[e], gf0[e], &yb[e], &gb[e]);
  }
  for (int64_t e = 0; e < len; ++e) {
    gy0[e] = yb[e];
    gg_out[e] = accumulate_g ? gg_out[e] + gb[e] : gb[e];
  }
}

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
