// Vectorised CPU loops of nmode_solve's dopri5 with control="per_element" (torch-free, so the
// vectoriser report can be checked by compiling this header alone).
//
// Each lane of a block is one element with its own controller state (t, dt, attempts,
// active/finished), i.e. the header's scalar pe_solve / pe_solve_vjp run side by side. A block
// attempts one step on every lane at once: the stages are `#pragma omp simd` loops over the
// lanes (each lane with its own dt), then one controller loop accepts / rejects / finishes
// each lane with branch-free selects; lanes that are done are masked (their updates are
// discarded). The forward (forward_task) gives a lane whose element finished the next element
// at once; the exact backward (backward_block) runs a fixed block until its last lane finishes.
//
// Per lane the arithmetic is that of sys_solve_dopri5 / rk_step_vjp (same operations in the
// same order; zero tableau terms skipped, which gives the same values for finite inputs),
// with one exception: the step controller's pow(x, 1/5) is nmode_solve_cpu_lane_control.h's
// inv_fifth_root(), which vectorises and agrees with pow to about 2 ulps of the step size.
//
// Exact backward without a stored trajectory: the forward of a block is run again with every
// attempt's (y, T(dt), accepted/finishing) recorded in a block-local ring of kRecord attempts
// and a snapshot of all controller states every kRecord attempts (kSegments of them); the
// reverse sweep walks the attempts backwards, replaying one segment from its snapshot at a
// time. Memory is fixed (block-local arrays); beyond kRecord * kSegments attempts the caller
// falls back to the scalar pe_solve_vjp.
#pragma once

#include <cstdint>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_lane_control.h"

// The lane logic is selects between floating-point values. GCC's default -ftrapping-math
// keeps it from if-converting a floating-point operation (a comparison included) that sits on
// one side of a branch, and VRP / dominator jump threading turn chains of correlated selects
// back into branches with stores on each side; both stop the vectoriser (checked with
// -fopt-info-vec). These options hold for this header's functions only and do not change
// values (no reassociation, no contraction).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-trapping-math","no-tree-vrp","no-thread-jumps","no-tree-dominator-opts")

namespace odekern {
namespace nmode {
namespace cpu_pe {

// Lanes per block. Small enough that lanes needing many more steps than their neighbours do
// not keep many finished lanes idle; large enough for several vectors per stage loop.
constexpr int64_t kLanes = 32;
constexpr int kRecord = 64;    // attempts per backward segment (block-local record)
constexpr int kSegments = 32;  // controller snapshots: the backward handles kRecord * kSegments attempts

// fmax(0, v) for v >= 0 or NaN, as the scalar solver's running max starting at 0 computes it.
// `zero` is 0.0 computed at run time (Params::zero): with a literal 0 GCC rewrites each later
// comparison of the result as a select between booleans, which it cannot vectorise.
ODEKERN_ALWAYS_INLINE double max0(double v, double zero) { return v == v ? v : zero; }

// ------------------------------------------------------------------------------------------
// Lane state of a block (structure of arrays; copying it is a controller snapshot).
// ------------------------------------------------------------------------------------------
template <typename T>
struct Lanes {
  alignas(64) T y[kLanes];   // state at t
  alignas(64) T g[kLanes];
  alignas(64) T f[kLanes];   // f(y) (FSAL)
  alignas(64) T dt[kLanes];  // T(h): the step the next attempt takes
  alignas(64) double t[kLanes], h[kLanes], attempts[kLanes];
  alignas(64) double theta[kLanes];   // interpolation point of the last step (once finished)
  alignas(64) double active[kLanes];  // 1 while the lane still integrates
  alignas(64) double status[kLanes];  // Status of the lane (kOk, kTooManySteps, kStepUnderflow)
};

struct Params {
  double t_end, rtol, atol, max_steps;
  double zero;  // 0.0, computed at run time so the compiler cannot fold it (see max0)
};

// Loads up to kLanes elements (y0[i], g[(first + i) % G]) and picks each lane's initial step
// (sys_solve_dopri5's: d0, d1, one Euler probe for d2). Padding lanes start inactive.
template <typename T>
ODEKERN_ALWAYS_INLINE void init_lanes(Lanes<T>& L, const T* y0, const T* g, int64_t first, int64_t G,
                                int64_t len, const Params& p) {
  for (int64_t e = 0; e < kLanes; ++e) {
    L.y[e] = T(0);
    L.g[e] = T(0);
    L.active[e] = e < len ? 1.0 : 0.0;
  }
  int64_t gi = first % G;  // one division per block, not per element
  for (int64_t e = 0; e < len; ++e) {
    L.y[e] = y0[e];
    L.g[e] = g[gi];
    gi = gi + 1 == G ? 0 : gi + 1;
  }
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) {
    const T x = L.y[e];
    const T f = rhs(x, L.g[e]);
    const double ax = double(x) < 0 ? -double(x) : double(x);
    const double scale = p.atol + ax * p.rtol;
    const double af = double(f) < 0 ? -double(f) : double(f);
    const double d0 = max0(ax / scale, p.zero), d1 = max0(af / scale, p.zero);
    const double h0 = initial_step_h0_lane(d0, d1);
    const T f1 = rhs(x + T(h0) * f, L.g[e]);
    const double df = double(f1 - f);
    const double d2 = max0((df < 0 ? -df : df) / scale / h0, p.zero);
    const double h = initial_step_final_lane(h0, d1, d2);
    L.f[e] = f;
    L.h[e] = h;
    L.dt[e] = T(h);
    L.t[e] = 0.0;
    L.attempts[e] = 0.0;
    L.theta[e] = 1.0;
    L.status[e] = double(kOk);
  }
}

template <typename T>
using LaneArray = T[kLanes];

// Coefficient rows as types, so every "is this coefficient zero" is decided at compile time
// (`if constexpr`): a run-time test left in a lane loop is control flow, which GCC will not
// vectorise.
template <int I>
struct RowA {
  static constexpr double at(int j) { return Tableau<kDopri5>::a(I, j); }
};
struct RowB {
  static constexpr double at(int j) { return Tableau<kDopri5>::b(j); }
};
struct RowE {
  static constexpr double at(int j) { return Tableau<kDopri5>::e(j); }
};

// acc + sum_{j >= J} C(j) k[j][e] for j < Jend, in order, zero coefficients skipped
// (the header's `acc = 0; acc += c(j) k[j]`, same values for finite inputs).
template <typename T, class C, int J, int Jend>
ODEKERN_ALWAYS_INLINE T lane_sum_from(T acc, const LaneArray<T>* k, int64_t e) {
  if constexpr (J >= Jend) {
    return acc;
  } else {
    if constexpr (C::at(J) != 0.0) acc += T(C::at(J)) * k[J][e];
    return lane_sum_from<T, C, J + 1, Jend>(acc, k, e);
  }
}
template <typename T, class C, int Jend>
ODEKERN_ALWAYS_INLINE T lane_sum(const LaneArray<T>* k, int64_t e) {
  return lane_sum_from<T, C, 0, Jend>(T(0), k, e);
}

// Weight J of torchdiffeq's dense output (dopri5_dense_weights of the header, one lane).
template <typename T, int J>
ODEKERN_ALWAYS_INLINE T dense_weight(double w_y1, double w_mid, double w_f0, double w_f1) {
  using D = Tableau<kDopri5>;
  return T(w_y1 * D::b(J) + w_mid * D::mid(J) + (J == 0 ? w_f0 : 0.0) + (J == 6 ? w_f1 : 0.0));
}

// acc + sum_{j >= J} w_j(theta) k[j][e] (weights that are zero for every theta skipped).
template <typename T, int J>
ODEKERN_ALWAYS_INLINE T dense_sum_from(T acc, double w_y1, double w_mid, double w_f0, double w_f1,
                                 const LaneArray<T>* k, int64_t e) {
  using D = Tableau<kDopri5>;
  if constexpr (J >= 7) {
    return acc;
  } else {
    if constexpr (D::b(J) != 0.0 || D::mid(J) != 0.0 || J == 0 || J == 6)
      acc += dense_weight<T, J>(w_y1, w_mid, w_f0, w_f1) * k[J][e];
    return dense_sum_from<T, J + 1>(acc, w_y1, w_mid, w_f0, w_f1, k, e);
  }
}

// Stage I of every lane: k[I] = f(y + dt * sum_{j<I} a(I, j) k[j]), lane-wise dt.
template <typename T, int I>
ODEKERN_ALWAYS_INLINE void stage(const Lanes<T>& L, LaneArray<T>* __restrict k) {
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) {
    const T acc = lane_sum<T, RowA<I>, I>(k, e);
    k[I][e] = rhs(L.y[e] + L.dt[e] * acc, L.g[e]);
  }
}

// The per-attempt record of the backward (one entry per block attempt, all lanes).
template <typename T>
struct AttemptRecord {
  alignas(64) T y[kRecord][kLanes];     // state before the attempt
  alignas(64) T dt[kRecord][kLanes];    // T(dt) of the attempt
  alignas(64) T kind[kRecord][kLanes];  // 0: nothing to reverse, 1: accepted, 2: accepted, last
};

// One attempt of every active lane (sys_solve_dopri5's loop body, lane-wise), from state L to
// state N (every field written: a separate output keeps GCC from turning "keep the old value"
// selects into conditional stores, which do not vectorise). With kRec the attempt is written
// to slot `slot` of rec. Returns the number of lanes still active.
template <typename T, bool kRec>
ODEKERN_ALWAYS_INLINE int64_t attempt(const Lanes<T>& L, Lanes<T>& N, const Params& p, AttemptRecord<T>* rec,
                                int slot) {
  alignas(64) T k[7][kLanes];
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) k[0][e] = L.f[e];
  stage<T, 1>(L, k);
  stage<T, 2>(L, k);
  stage<T, 3>(L, k);
  stage<T, 4>(L, k);
  stage<T, 5>(L, k);
  stage<T, 6>(L, k);
  const T rtol = T(p.rtol), atol = T(p.atol);
  int64_t n_active = 0;
#pragma omp simd reduction(+ : n_active)
  for (int64_t e = 0; e < kLanes; ++e) {
    const bool act = L.active[e] != 0.0;
    const T y = L.y[e], dtT = L.dt[e];
    const double dt = L.h[e], t = L.t[e], t_next = t + dt;
    const bool too_many = L.attempts[e] >= p.max_steps;
    const bool underflow = !(t_next > t);
    const bool fail = too_many | underflow;
    const T y1 = y + dtT * lane_sum<T, RowB, 7>(k, e);
    const T err = dtT * lane_sum<T, RowE, 7>(k, e);
    const T r = error_ratio(err, y, y1, rtol, atol);
    const double ratio = max0(double(r) < 0 ? -double(r) : double(r), p.zero);
    const bool accept = ratio <= 1.0;
    const bool finish = accept & (t_next >= p.t_end);
    // Dense output at theta (dopri5_dense_weights, lane-wise).
    const double th = (p.t_end - t) / (t_next - t);
    const double x = th, x2 = x * x, x3 = x2 * x, x4 = x3 * x;
    const double w_y1 = -5 * x2 + 14 * x3 - 8 * x4;
    const double w_mid = 16 * x2 - 32 * x3 + 16 * x4;
    const double w_f0 = x - 4 * x2 + 5 * x3 - 2 * x4;
    const double w_f1 = x2 - 3 * x3 + 2 * x4;
    const T yd = y + dtT * dense_sum_from<T, 0>(T(0), w_y1, w_mid, w_f0, w_f1, k, e);
    const double h_new = optimal_step_lane(dt, ratio);
    const T dt_new = T(h_new);
    const double attempts_new = L.attempts[e] + 1.0;
    const bool go = act & !fail, moved = go & accept, done = go & finish;
    if (kRec) {
      rec->y[slot][e] = y;
      rec->dt[slot][e] = dtT;
      rec->kind[slot][e] = moved ? (finish ? T(2) : T(1)) : T(0);
    }
    N.y[e] = done ? yd : moved ? y1 : y;
    N.g[e] = L.g[e];
    N.f[e] = moved ? k[6][e] : L.f[e];
    N.t[e] = moved ? t_next : t;
    N.h[e] = go ? h_new : dt;
    N.dt[e] = go ? dt_new : dtT;
    N.attempts[e] = go ? attempts_new : L.attempts[e];
    N.theta[e] = done ? th : L.theta[e];
    N.status[e] = (act & fail) ? (too_many ? double(kTooManySteps) : double(kStepUnderflow)) : L.status[e];
    const bool still = go & !finish;
    N.active[e] = still ? 1.0 : 0.0;
    n_active += still ? 1 : 0;
  }
  return n_active;
}

// Worst status over the lanes.
template <typename T>
ODEKERN_ALWAYS_INLINE int worst_status(const Lanes<T>& L) {
  double w = 0.0;
  for (int64_t e = 0; e < kLanes; ++e) w = L.status[e] > w ? L.status[e] : w;
  return int(w);
}

// ------------------------------------------------------------------------------------------
// Forward of len elements [first, first + len) (y0, y1, f0, f1 point at element `first`; g is
// read at (first + i) % G): y1, and f at t0 / t1 if requested. Returns the worst Status (early,
// as soon as an element fails: the caller raises and discards the outputs).
//
// A lane whose element finishes takes the task's next element at once, so lanes do not wait
// for the slowest element of a fixed block (on the CNM setting elements need 1 to 7 attempts,
// mean 2.1; a block of 32 in lockstep runs 3.1). Each element's arithmetic is that of
// its lane alone, so y1 is the same bit for bit wherever and whenever the element runs (the
// exact backward's replay in backward_block relies on that).
// ------------------------------------------------------------------------------------------
// The task's prepared starts: a ring of 2 kLanes slots, filled kLanes at a time by
// init_lanes (vectorised) and handed out in order (start number c sits in slot c % (2 kLanes)
// and is the task's element c). Two halves, so that the next batch can be prepared while up to
// kLanes - 1 starts of the current one are still to be handed out.
template <typename T>
struct Starts {
  static constexpr int64_t kSlots = 2 * kLanes;
  alignas(64) T y[kSlots];
  alignas(64) T g[kSlots];
  alignas(64) T f[kSlots];
  alignas(64) double h[kSlots];
  Lanes<T> batch;               // init_lanes' output, copied into the ring
  int64_t ready = 0, used = 0;  // starts prepared / handed out
  int64_t first;                // the task's first element (for g's index)
  int64_t next, len;            // the task's elements [next, len) are not prepared yet
};

template <typename T>
ODEKERN_ALWAYS_INLINE void prepare_starts(Starts<T>& R, const T* y0, const T* g, int64_t G, const Params& p,
                                          T* f0) {
  const int64_t len = R.len - R.next < kLanes ? R.len - R.next : kLanes;
  init_lanes(R.batch, y0 + R.next, g, R.first + R.next, G, len, p);
  if (f0 != nullptr)
    for (int64_t e = 0; e < len; ++e) f0[R.next + e] = R.batch.f[e];
  const int64_t o = R.ready % Starts<T>::kSlots;  // a multiple of kLanes: only the last batch is short
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) {
    R.y[o + e] = R.batch.y[e];
    R.g[o + e] = R.batch.g[e];
    R.f[o + e] = R.batch.f[e];
    R.h[o + e] = R.batch.h[e];
  }
  R.ready += len;
  R.next += len;
}

// After an attempt into N: the output of every lane that ended (y1 if it finished, its status
// if it failed), then the next start into it. Returns the number of active lanes. The lanes
// are visited through a bit mask of the ended ones: a scan testing each lane mispredicts on
// about half of them (about half of the lanes end in each attempt on the CNM setting), which
// cost as much as the attempts the refill saves.
template <typename T>
ODEKERN_ALWAYS_INLINE int64_t refill(Lanes<T>& N, int64_t n_active, int64_t was_active, Starts<T>& R,
                                     int64_t* __restrict elem, const T* y0, const T* g, int64_t G,
                                     const Params& p, T* y1, T* f0, int& worst) {
  static_assert(kLanes <= 64, "one bit per lane");
  if (n_active == was_active) return n_active;
  uint64_t ended = 0;
  for (int64_t l = 0; l < kLanes; ++l)
    ended |= uint64_t((elem[l] >= 0) & (N.active[l] == 0.0)) << l;
  if (R.ready - R.used < __builtin_popcountll(ended) && R.next < R.len) prepare_starts(R, y0, g, G, p, f0);
  for (uint64_t m = ended; m != 0; m &= m - 1) {
    const int l = __builtin_ctzll(m);
    const int st = int(N.status[l]);
    worst = st > worst ? st : worst;
    y1[elem[l]] = N.y[l];
    elem[l] = -1;
    if (R.used == R.ready) continue;  // the task has no element left
    const int64_t j = R.used % Starts<T>::kSlots;
    elem[l] = R.used++;
    ++n_active;
    N.y[l] = R.y[j];
    N.g[l] = R.g[j];
    N.f[l] = R.f[j];
    N.h[l] = R.h[j];
    N.dt[l] = T(R.h[j]);
    N.t[l] = 0.0;
    N.attempts[l] = 0.0;
    N.theta[l] = 1.0;
    N.active[l] = 1.0;
    N.status[l] = double(kOk);
  }
  return n_active;
}

template <typename T>
ODEKERN_ISA_CLONES int forward_task(const T* __restrict y0, const T* __restrict g, int64_t first,
                                    int64_t G, int64_t len, double t_end, double rtol, double atol,
                                    double max_steps, T* __restrict y1, T* __restrict f0,
                                    T* __restrict f1) {
  const Params p{t_end, rtol, atol, max_steps, t_end * 0.0};  // t_end is finite: zero is 0.0
  // Two named states, stepped A -> B -> A: with distinct local objects (not buf[cur]) GCC can
  // prove every lane access in bounds, which the vectoriser's if-conversion needs.
  Lanes<T> A, B;
  Starts<T> R;
  R.first = first;
  R.next = 0;
  R.len = len;
  prepare_starts(R, y0, g, G, p, f0);
  A = R.batch;  // padding lanes of a short task start inactive
  alignas(64) int64_t elem[kLanes];  // each lane's element (of the task), -1: idle
  for (int64_t l = 0; l < kLanes; ++l) elem[l] = l < R.ready ? l : -1;
  R.used = R.ready;
  int64_t active = R.ready;
  int worst = kOk;
  while (active > 0 && worst == kOk) {
    active = refill(B, attempt<T, false>(A, B, p, nullptr, 0), active, R, elem, y0, g, G, p, y1, f0, worst);
    if (active == 0 || worst != kOk) break;
    active = refill(A, attempt<T, false>(B, A, p, nullptr, 0), active, R, elem, y0, g, G, p, y1, f0, worst);
  }
  if (worst != kOk || f1 == nullptr) return worst;
  // f at t1, kLanes elements at a time (g's repeats unrolled into a lane array).
  alignas(64) T yl[kLanes], gl[kLanes], fl[kLanes];
  int64_t gi = first % G;
  for (int64_t o = 0; o < len; o += kLanes) {
    const int64_t n = len - o < kLanes ? len - o : kLanes;
    for (int64_t e = 0; e < kLanes; ++e) {
      yl[e] = e < n ? y1[o + e] : T(0);
      gl[e] = e < n ? g[gi] : T(0);
      if (e < n) gi = gi + 1 == G ? 0 : gi + 1;
    }
#pragma omp simd
    for (int64_t e = 0; e < kLanes; ++e) fl[e] = rhs(yl[e], gl[e]);
    for (int64_t e = 0; e < n; ++e) f1[o + e] = fl[e];
  }
  return worst;
}

// ------------------------------------------------------------------------------------------
// Reverse mode of recorded attempt `slot` (rk_step_vjp of the header, lane-wise): stages and
// sin(2(y+g)) recomputed; accepted lanes take b (the FSAL stage's weight is 0), the lane's
// last step the dense weights at its theta; other lanes pass their cotangents through.
// (yb, gb) in, (yb_out, gb_out) out: separate outputs, as in attempt().
// ------------------------------------------------------------------------------------------
template <typename T, int I>
ODEKERN_ALWAYS_INLINE void stage_sin2(const T* __restrict y, const T* __restrict dt, const T* __restrict g,
                                LaneArray<T>* __restrict k, LaneArray<T>* __restrict s2) {
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) {
    const T acc = lane_sum<T, RowA<I>, I>(k, e);
    k[I][e] = rhs_and_sin2(I == 0 ? y[e] : y[e] + dt[e] * acc, g[e], &s2[I][e]);
  }
}

// The stage cotangents kbar live in a block-level kbar[7][kLanes] indexed [j][e], like the
// stages: a per-lane local array inside the lane loop makes GCC's simd privatisation emit
// scatter stores, and the loop stays scalar.
// kbar_j = dt * w_j * ybar1 with w the dense weights (last) or b; j = J .. 6.
template <typename T, int J>
ODEKERN_ALWAYS_INLINE void kbar_init(LaneArray<T>* kbar, int64_t e, bool last, T dt, T ybar1, double w_y1,
                               double w_mid, double w_f0, double w_f1) {
  if constexpr (J < 7) {
    const T wd = dense_weight<T, J>(w_y1, w_mid, w_f0, w_f1);
    const T w = last ? wd : T(Tableau<kDopri5>::b(J));
    kbar[J][e] = dt * w * ybar1;
    kbar_init<T, J + 1>(kbar, e, last, dt, ybar1, w_y1, w_mid, w_f0, w_f1);
  }
}

// kbar_j += dt * a(I, j) * sbar for j = J .. I-1 with a(I, j) != 0.
template <typename T, int I, int J>
ODEKERN_ALWAYS_INLINE void kbar_scatter(LaneArray<T>* kbar, int64_t e, T dt, T sbar) {
  if constexpr (J < I) {
    if constexpr (Tableau<kDopri5>::a(I, J) != 0.0) kbar[J][e] += dt * T(Tableau<kDopri5>::a(I, J)) * sbar;
    kbar_scatter<T, I, J + 1>(kbar, e, dt, sbar);
  }
}

// Reverse sweep over stages I, I-1, ..., 0 (rk_step_vjp's loop body).
template <typename T, int I>
ODEKERN_ALWAYS_INLINE void reverse_stages(LaneArray<T>* kbar, const LaneArray<T>* s2, int64_t e, T dt, T& ybar,
                                    T& gacc) {
  if constexpr (I >= 0) {
    const T sbar = kbar[I][e] * (s2[I][e] - T(1));
    gacc += kbar[I][e] * s2[I][e];
    ybar += sbar;
    kbar_scatter<T, I, 0>(kbar, e, dt, sbar);
    reverse_stages<T, I - 1>(kbar, s2, e, dt, ybar, gacc);
  }
}

template <typename T>
ODEKERN_ALWAYS_INLINE void reverse_attempt(const AttemptRecord<T>& rec, int slot, const T* __restrict g,
                                     const double* __restrict theta, const T* __restrict yb,
                                     const T* __restrict gb, T* __restrict yb_out, T* __restrict gb_out) {
  const T* y = rec.y[slot];
  const T* dt = rec.dt[slot];
  alignas(64) T k[7][kLanes], s2[7][kLanes], kbar[7][kLanes];
  stage_sin2<T, 0>(y, dt, g, k, s2);
  stage_sin2<T, 1>(y, dt, g, k, s2);
  stage_sin2<T, 2>(y, dt, g, k, s2);
  stage_sin2<T, 3>(y, dt, g, k, s2);
  stage_sin2<T, 4>(y, dt, g, k, s2);
  stage_sin2<T, 5>(y, dt, g, k, s2);
  stage_sin2<T, 6>(y, dt, g, k, s2);
#pragma omp simd
  for (int64_t e = 0; e < kLanes; ++e) {
    const T kind = rec.kind[slot][e];
    const bool last = kind == T(2);
    const double x = theta[e], x2 = x * x, x3 = x2 * x, x4 = x3 * x;
    const double w_y1 = -5 * x2 + 14 * x3 - 8 * x4;
    const double w_mid = 16 * x2 - 32 * x3 + 16 * x4;
    const double w_f0 = x - 4 * x2 + 5 * x3 - 2 * x4;
    const double w_f1 = x2 - 3 * x3 + 2 * x4;
    const T ybar1 = yb[e], dte = dt[e];
    kbar_init<T, 0>(kbar, e, last, dte, ybar1, w_y1, w_mid, w_f0, w_f1);
    T ybar = ybar1, gacc = T(0);
    reverse_stages<T, 6>(kbar, s2, e, dte, ybar, gacc);
    const bool on = kind != T(0);
    const T gsum = gb[e] + gacc;
    yb_out[e] = on ? ybar : ybar1;
    gb_out[e] = on ? gsum : gb[e];
  }
}

// ------------------------------------------------------------------------------------------
// Exact backward of one block (gradient of the discrete per-element solve). gy1 / gf0 / gf1:
// cotangents of y(t1), f(t0), f(t1) (gf* may be null). Writes dL/dy0 to gy0 and each
// element's dL/dg contribution to gg (len entries). Returns the worst Status, or -1 if some
// lane needs more than kRecord * kSegments attempts (nothing written; use the scalar path).
// ------------------------------------------------------------------------------------------
template <typename T>
ODEKERN_ISA_CLONES int backward_block(const T* __restrict y0, const T* __restrict g, int64_t first,
                                      int64_t G, int64_t len, double t_end, double rtol, double atol,
                                      double max_steps, const T* __restrict gy1, const T* __restrict gf0,
                                      const T* __restrict gf1, T* __restrict gy0, T* __restrict gg) {
  const Params p{t_end, rtol, atol, max_steps, t_end * 0.0};  // t_end is finite: zero is 0.0
  Lanes<T> A, B;  // stepped A -> B -> A as in forward_task
  init_lanes(A, y0, g, first, G, len, p);
  Lanes<T> snap[kSegments];
  AttemptRecord<T> rec;
  // Forward, recording the attempts of the current segment and a snapshot at its start
  // (kRecord is even, so a segment always starts from A).
  static_assert(kRecord % 2 == 0, "segments must start in state A");
  int64_t attempts = 0;
  const Lanes<T>* fin = nullptr;
  while (fin == nullptr) {
    if (attempts % kRecord == 0) {
      if (attempts / kRecord >= kSegments) return -1;
      snap[attempts / kRecord] = A;
    }
    const int slot = int(attempts % kRecord);
    attempts += 2;
    if (attempt<T, true>(A, B, p, &rec, slot) == 0) {
      fin = &B;
      --attempts;
    } else if (attempt<T, true>(B, A, p, &rec, slot + 1) == 0) {
      fin = &A;
    }
  }
  const int status = worst_status(*fin);
  if (status != kOk) return status;
  alignas(64) double theta[kLanes];
  alignas(64) T gl[kLanes], yfin[kLanes];
  alignas(64) T ybA[kLanes], gbA[kLanes], ybB[kLanes], gbB[kLanes];
  for (int64_t e = 0; e < kLanes; ++e) {
    theta[e] = fin->theta[e];
    gl[e] = fin->g[e];
    yfin[e] = fin->y[e];
    ybA[e] = gbA[e] = T(0);
  }
  for (int64_t e = 0; e < len; ++e) ybA[e] = gy1[e];
  if (gf1 != nullptr) {
    alignas(64) T c[kLanes];
    for (int64_t e = 0; e < kLanes; ++e) c[e] = T(0);
    for (int64_t e = 0; e < len; ++e) c[e] = gf1[e];
#pragma omp simd
    for (int64_t e = 0; e < kLanes; ++e) rhs_vjp(yfin[e], gl[e], c[e], &ybA[e], &gbA[e]);
  }
  // Reverse: the last segment is still in the record; earlier ones are replayed from their
  // snapshot (the replay reproduces the forward exactly: same state, same arithmetic).
  // Cotangents alternate A -> B -> A; `in_a` says where they are.
  bool in_a = true;
  const int64_t last_seg = (attempts - 1) / kRecord;
  for (int64_t s = last_seg; s >= 0; --s) {
    int64_t n = kRecord;
    if (s == last_seg) {
      n = attempts - s * kRecord;
    } else {
      A = snap[s];
      for (int a = 0; a < kRecord; a += 2) {
        attempt<T, true>(A, B, p, &rec, a);
        attempt<T, true>(B, A, p, &rec, a + 1);
      }
    }
    for (int64_t a = n - 1; a >= 0; --a) {
      if (in_a) reverse_attempt<T>(rec, int(a), gl, theta, ybA, gbA, ybB, gbB);
      else reverse_attempt<T>(rec, int(a), gl, theta, ybB, gbB, ybA, gbA);
      in_a = !in_a;
    }
  }
  T* yb = in_a ? ybA : ybB;
  T* gb = in_a ? gbA : gbB;
  if (gf0 != nullptr) {
    alignas(64) T c[kLanes], y[kLanes];
    for (int64_t e = 0; e < kLanes; ++e) c[e] = y[e] = T(0);
    for (int64_t e = 0; e < len; ++e) {
      c[e] = gf0[e];
      y[e] = y0[e];
    }
#pragma omp simd
    for (int64_t e = 0; e < kLanes; ++e) rhs_vjp(y[e], gl[e], c[e], &yb[e], &gb[e]);
  }
  for (int64_t e = 0; e < len; ++e) {
    gy0[e] = yb[e];
    gg[e] = gb[e];
  }
  return kOk;
}


}  // namespace cpu_pe
}  // namespace nmode
}  // namespace odekern

#pragma GCC pop_options
