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

// One step of every element of a block, in place. dopri5's FSAL stage is evaluated only on
// the interpolated last step (its weight is zero otherwise).
template <typename T, int M>
__attribute__((always_inline)) inline void advance_block(T* __restrict y, const T* __restrict g,
                                                         int64_t len, T dt, const T* w, bool last) {
  if (M == kDopri5 && last) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) y[e] = rk_step<T, M, true>(y[e], g[e], dt, rhs(y[e], g[e]), w);
  } else {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) y[e] = rk_step<T, M, false>(y[e], g[e], dt, rhs(y[e], g[e]), w);
  }
}

// ------------------------------------------------------------------------------------------
// Forward over a list of dts (fixed grids), one block.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
ODEKERN_ISA_CLONES void list_forward_block(const T* __restrict y0, const T* __restrict g, int64_t len,
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
  for (int64_t e = 0; e < len; ++e) y1[e] = y[e];
  if (f1 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) f1[e] = rhs(y[e], gg[e]);
  }
}

// ------------------------------------------------------------------------------------------
// Global control: one dopri5 attempt over a block. Writes the candidate state and FSAL
// stage, returns sum of squared error ratios; on the finishing attempt also writes the
// interpolated output (and f there).
// ------------------------------------------------------------------------------------------
template <typename T>
ODEKERN_ISA_CLONES double global_attempt_block(const T* __restrict y, const T* __restrict f,
                                               const T* __restrict g, int64_t len, T dt, const T* w,
                                               bool finishing, const T* wl, T rtol, T atol,
                                               T* __restrict ynew, T* __restrict fnew,
                                               T* __restrict out, T* __restrict fout) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t e = 0; e < len; ++e) {
    T err, klast;
    const T yn = rk_step<T, kDopri5, true>(y[e], g[e], dt, f[e], w, &err, &klast);
    const T r = error_ratio(err, y[e], yn, rtol, atol);
    sum += double(r) * double(r);
    ynew[e] = yn;
    fnew[e] = klast;
  }
  if (finishing) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) {
      // Re-deriving the stages keeps the common (non-finishing) attempt lean.
      out[e] = rk_step<T, kDopri5, true>(y[e], g[e], dt, f[e], wl);
    }
    if (fout != nullptr) {
#pragma omp simd
      for (int64_t e = 0; e < len; ++e) fout[e] = rhs(out[e], g[e]);
    }
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
// Exact backward over a list of dts, one block: two-level checkpointing as list_solve_vjp
// in the header, vectorised across the block.
// ------------------------------------------------------------------------------------------
template <typename T, int M>
ODEKERN_ISA_CLONES void list_backward_block(const T* __restrict y0, const T* __restrict g, int64_t len,
                                            const double* dts, int64_t n, const T* w, const T* wl,
                                            const T* __restrict gy1, const T* __restrict gf0,
                                            const T* __restrict gf1, T* __restrict gy0,
                                            T* __restrict gg_out, bool accumulate_g) {
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
    const T dt = T(dts[i]);
    advance_block<T, M>(y, gg, len, dt, (i == n - 1) ? wl : w, i == n - 1);
  }
  // y is now y(t1): seed the cotangent with the f1 output's contribution.
  for (int64_t e = 0; e < len; ++e) yb[e] = gy1[e];
  if (gf1 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) rhs_vjp(y[e], gg[e], gf1[e], &yb[e], &gb[e]);
  }
  auto step_back = [&](const T* ys, int64_t i) {
    const T dt = T(dts[i]);
    if (i == n - 1 && M == kDopri5) {
#pragma omp simd
      for (int64_t e = 0; e < len; ++e) rk_step_vjp<T, M, true>(ys[e], gg[e], dt, wl, yb[e], &yb[e], &gb[e]);
    } else {
#pragma omp simd
      for (int64_t e = 0; e < len; ++e) rk_step_vjp<T, M, false>(ys[e], gg[e], dt, w, yb[e], &yb[e], &gb[e]);
    }
  };
  for (int64_t s = n > 0 ? (n - 1) / seg : -1; s >= 0; --s) {
    const int64_t start = s * seg, end = std::min(start + seg, n);
    if (end - start <= kCheckpoints) {
      std::copy(ck[s], ck[s] + len, y);
      for (int64_t i = start; i < end; ++i) {
        std::copy(y, y + len, buf[i - start]);
        if (i + 1 < end) {
          advance_block<T, M>(y, gg, len, T(dts[i]), w, false);
        }
      }
      for (int64_t i = end - 1; i >= start; --i) step_back(buf[i - start], i);
    } else {
      for (int64_t i = end - 1; i >= start; --i) {
        std::copy(ck[s], ck[s] + len, y);
        for (int64_t j = start; j < i; ++j) {
          advance_block<T, M>(y, gg, len, T(dts[j]), w, false);
        }
        step_back(y, i);
      }
    }
  }
  if (gf0 != nullptr) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) rhs_vjp(y0[e], gg[e], gf0[e], &yb[e], &gb[e]);
  }
  for (int64_t e = 0; e < len; ++e) {
    gy0[e] = yb[e];
    gg_out[e] = accumulate_g ? gg_out[e] + gb[e] : gb[e];
  }
}

// The speed floor of the solve: `reps` chained evaluations of the same polynomial cos per
// element, block-resident (no memory traffic). bench/ops/bench_nmode_solve.py compares the
// solve against it at the solve's RHS-evaluation count.
template <typename T>
ODEKERN_ISA_CLONES void cos_floor_block(const T* __restrict x, int64_t len, int64_t reps, T* __restrict out) {
  alignas(64) T v[kBlock];
  for (int64_t e = 0; e < len; ++e) v[e] = x[e];
  for (int64_t r = 0; r < reps; ++r) {
#pragma omp simd
    for (int64_t e = 0; e < len; ++e) v[e] = fast_cos(v[e]);
  }
  for (int64_t e = 0; e < len; ++e) out[e] = v[e];
}

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
