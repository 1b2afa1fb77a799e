// Per-element math of the fused nmODE solve, shared by the CPU loops (nmode_solve_cpu.cpp),
// the CUDA kernels (nmode_solve_cuda.cu) and mirrored by the Triton kernels.
//
//   dy/dt = f(y, g) = -y + sin^2(y + g)
//   df/dy = -1 + sin(2 (y + g)),   df/dg = sin(2 (y + g))
//
// Everything here is branch-free where it sits in a hot loop (selects, not ifs) so GCC can
// vectorise it across elements under `#pragma omp simd`; cos/sin are our own polynomials
// (Cody-Waite reduction + Taylor kernels) because libm calls do not vectorise.
//
// Contents, top to bottom: sincos; the RHS; Butcher tableaus; one RK step (forward, with
// error estimate, and reverse mode); torchdiffeq's dense output as step weights; the step
// size controller; per-element solvers (fixed list of steps, per-element adaptive dopri5,
// continuous adjoint) with two-level checkpointing for the exact backward.
#pragma once

#include <odekern/generated/nmode_constants.h>
#include <odekern/macros.h>

#ifndef ODEKERN_DEVICE_COMPILE
#include <cmath>
#include <limits>
#include <type_traits>
#endif

// Hot per-element functions must inline into the vectorised CPU loops (a call inside
// `#pragma omp simd` stops vectorisation) and their stage loops must unroll so the tableau
// coefficients fold to constants.
#if defined(ODEKERN_DEVICE_COMPILE)
#define NMODE_HOT ODEKERN_HD
#define NMODE_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define NMODE_HOT ODEKERN_ALWAYS_INLINE
#define NMODE_UNROLL _Pragma("GCC unroll 16")
#else
#define NMODE_HOT ODEKERN_ALWAYS_INLINE
#define NMODE_UNROLL
#endif

namespace odekern {
namespace nmode {

// ------------------------------------------------------------------------------------------
// sincos without libm. x = k*pi/2 + r, |r| <= pi/4; pi/2 split in three parts whose leading
// ones have few significant bits so k*part is exact (Cody-Waite) without needing FMA (the
// baseline clone has none). Taylor kernels: error < 1e-9 relative (float), < 1e-18 (double).
// k is rounded with the 1.5*2^p "magic number" trick, which vectorises. The constants and the
// range are generated (TrigConst, from odekern/ops/nmode_solve/fast_sine.py).
// ------------------------------------------------------------------------------------------

// sin(r), cos(r) for |r| <= pi/4.
NMODE_HOT void sincos_kernel(float r, float* s, float* c) {
  const float r2 = r * r;
  *s = r + r * r2 * (-1.0f / 6 + r2 * (1.0f / 120 + r2 * (-1.0f / 5040 + r2 * (1.0f / 362880))));
  *c = 1.0f - 0.5f * r2 +
       r2 * r2 * (1.0f / 24 + r2 * (-1.0f / 720 + r2 * (1.0f / 40320 + r2 * (-1.0f / 3628800))));
}
NMODE_HOT void sincos_kernel(double r, double* s, double* c) {
  const double r2 = r * r;
  *s = r + r * r2 *
               (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880 +
               r2 * (-1.0 / 39916800 + r2 * (1.0 / 6227020800.0 + r2 * (-1.0 / 1307674368000.0 +
               r2 * (1.0 / 355687428096000.0))))))));
  *c = 1.0 - 0.5 * r2 +
       r2 * r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800 +
       r2 * (1.0 / 479001600.0 + r2 * (-1.0 / 87178291200.0 + r2 * (1.0 / 20922789888000.0 +
       r2 * (-1.0 / 6402373705728000.0))))))));
}

// sin(x) and cos(x) together (one range reduction). The reduction keeps full accuracy for
// |x| <= TrigConst::range (2^15 float, 1e7 double; measured against exact sines); beyond that
// k*part is no longer exact and the result would be silently wrong, so it becomes inf instead
// (from |k| > max_quarter_turns, at most a quarter turn past the range), which every caller
// reports as a failed solve. The nmODE state stays far inside that range; only
// the continuous adjoint's backward re-solve, which grows like e^(t1 - t0), can leave it.
// The test is on the rounded multiple k of pi/2 (or pi) with integer ops and the poison is
// added, not selected: GCC keeps the lane loops vectorised that way (a select on |x| made it
// refuse), and bad * max * max is 0 or inf (no reassociation without -ffast-math).
template <typename T>
NMODE_HOT T poison_beyond(int k, int kmax) {
  const T bad = T((((kmax - k) | (k + kmax)) >> 31) & 1);  // 1 iff |k| > kmax (or k = INT_MIN)
  return (bad * std::numeric_limits<T>::max()) * std::numeric_limits<T>::max();
}

template <typename T>
NMODE_HOT void fast_sincos(T x, T* s_out, T* c_out) {
  using C = TrigConst<T>;
  const T kf = (x * C::two_over_pi + C::magic) - C::magic;
  const int q = static_cast<int>(kf);
  T r = x - kf * C::pio2_hi;
  r = r - kf * C::pio2_mid;
  r = r - kf * C::pio2_lo;
  T s, c;
  sincos_kernel(r, &s, &c);
  // Quadrant selection by multiplying with exact 0/1 and +-1 (no branches, no blends GCC
  // refuses to if-convert): odd*c + even*s is exactly c or s.
  const T odd = T(q & 1), even = T(1) - odd;
  const T sin_v = odd * c + even * s;
  const T cos_v = odd * s + even * c;
  const T poison = poison_beyond<T>(q, C::max_quarter_turns);
  *s_out = sin_v * T(1 - (q & 2)) + poison;
  *c_out = cos_v * T(1 - ((q + 1) & 2)) + poison;
}

// sin^2(x) alone, for the forward RHS (the hot path: one call per element and stage). With
// x = n pi + r, |r| <= pi/2, sin^2(x) = sin^2(r): no quadrant selection and no sign, one odd
// polynomial; about half the work of fast_sincos, and unlike (1 - cos 2x) / 2 it keeps its
// relative accuracy near x = 0. Same range as fast_sincos (inf beyond it). Float:
// least-squares fit on [-pi/2, pi/2] in relative error (max error of sin 1.1e-7 evaluated in
// float, rounding level); double: Taylor to r^21 (truncation < 2e-18).
template <typename T> struct SinPoly;
template <> struct SinPoly<float> {
  NMODE_HOT static float sin_over_r_m1(float z) {  // (sin(r)/r - 1) / r^2 as a poly in z = r^2
    return -0.16666659712791443f + z * (0.00833306647837162f + z * (-0.00019809605146292597f +
           z * 2.6057839477289235e-06f));
  }
};
template <> struct SinPoly<double> {
  NMODE_HOT static double sin_over_r_m1(double z) {
    return -1.0 / 6 + z * (1.0 / 120 + z * (-1.0 / 5040 + z * (1.0 / 362880 + z * (-1.0 / 39916800 +
           z * (1.0 / 6227020800.0 + z * (-1.0 / 1307674368000.0 + z * (1.0 / 355687428096000.0 +
           z * (-1.0 / 121645100408832000.0 + z * (1.0 / 51090942171709440000.0)))))))));
  }
};

template <typename T>
NMODE_HOT T fast_sin_sq(T x) {
  using C = TrigConst<T>;
  const T n = (x * C::inv_pi + C::magic) - C::magic;  // round(x / pi)
  // pi in three parts: twice pi/2's (exact), so n * part stays exact as in fast_sincos.
  T r = x - n * (T(2) * C::pio2_hi);
  r = r - n * (T(2) * C::pio2_mid);
  r = r - n * (T(2) * C::pio2_lo);
  const T z = r * r;
  const T s = r + (r * z) * SinPoly<T>::sin_over_r_m1(z);
  return s * s + poison_beyond<T>(static_cast<int>(n), C::max_half_turns);
}

// ------------------------------------------------------------------------------------------
// The right-hand side and its partial derivatives.
// ------------------------------------------------------------------------------------------
template <typename T>
NMODE_HOT T rhs(T y, T g) {
  return -y + fast_sin_sq(y + g);
}

// f, and s2 = sin(2(y+g)) = 2 sin(y+g) cos(y+g) = df/dg (df/dy = s2 - 1), from one sincos.
template <typename T>
NMODE_HOT T rhs_and_sin2(T y, T g, T* s2) {
  T s, c;
  fast_sincos(y + g, &s, &c);
  *s2 = T(2) * s * c;
  return -y + s * s;
}

// ------------------------------------------------------------------------------------------
// Butcher tableaus, method ids and controller constants: generated from the Python tableaus
// (odekern/generated/nmode_constants.h). Same coefficients as torchdiffeq: "rk4" is the 3/8
// rule, dopri5 is Dormand-Prince-Shampine with the 7th (FSAL) stage feeding only the error
// estimate and the dense output.
// ------------------------------------------------------------------------------------------
// Host-side: turns the runtime method id into a compile-time constant, so each launcher (CPU
// block loops, CUDA kernels) instantiates one specialised solver per method.
template <class Fn>
void dispatch_method(int method, Fn&& fn) {
  switch (method) {
    case kEuler: fn(std::integral_constant<int, kEuler>{}); break;
    case kMidpoint: fn(std::integral_constant<int, kMidpoint>{}); break;
    case kRk4: fn(std::integral_constant<int, kRk4>{}); break;
    case kRk4Classic: fn(std::integral_constant<int, kRk4Classic>{}); break;
    default: fn(std::integral_constant<int, kDopri5>{}); break;
  }
}

// sum_{p=1..4} coeff(p) theta^p, in the order the reference sums it (zero terms add exactly 0).
template <class Coeff>
ODEKERN_HD double dense_weight(Coeff coeff, double theta) {
  double acc = 0.0, power = theta;
  for (int p = 1; p <= 4; ++p) {
    acc += coeff(p) * power;
    power *= theta;
  }
  return acc;
}

// torchdiffeq's dense output on the last step (quartic through y0, y1, y_mid, f0, f1) is
// linear in the stages: y(theta) = y0 + dt * sum_j w_j(theta) k_j. These are the w_j, so the
// interpolated last step is just an RK step with other weights (and its reverse mode too).
template <typename T>
NMODE_HOT void dopri5_dense_weights(double theta, T w[7]) {
  const double w_y1 = dense_weight(dense_y1, theta), w_mid = dense_weight(dense_mid, theta);
  const double w_f0 = dense_weight(dense_f0, theta), w_f1 = dense_weight(dense_f1, theta);
  using D = Tableau<kDopri5>;
NMODE_UNROLL
  for (int j = 0; j < 7; ++j) {
    w[j] = T(w_y1 * D::b(j) + w_mid * D::mid(j) + (j == 0 ? w_f0 : 0.0) + (j == 6 ? w_f1 : 0.0));
  }
}

// Step weights: the tableau's b, or (dopri5, last step) the dense-output weights at theta.
template <typename T, int M>
NMODE_HOT void step_weights(double theta, T w[Tableau<M>::S]) {
  if (M == kDopri5 && theta != 1.0) {
    dopri5_dense_weights<T>(theta, w);
  } else {
NMODE_UNROLL
    for (int j = 0; j < Tableau<M>::S; ++j) w[j] = T(Tableau<M>::b(j));
  }
}

// ------------------------------------------------------------------------------------------
// One RK step of the scalar nmODE, forward. k1 = f(y) is passed in (FSAL reuse); the return
// value is y + dt * sum_j w_j k_j. For dopri5 with kWithLast the FSAL stage is evaluated too
// and the local error estimate and that stage are written to *err and *klast (the stages stay
// in a local array: handing an array out of a function called in an omp simd loop defeats
// GCC's vectoriser).
// ------------------------------------------------------------------------------------------
template <typename T>
NMODE_HOT T dopri5_error(T dt, const T* k);

template <typename T, int M, bool kWithLast = true>
NMODE_HOT T rk_step(T y, T g, T dt, T k1, const T* w, T* err = nullptr, T* klast = nullptr) {
  using Tab = Tableau<M>;
  constexpr int S = (M == kDopri5 && !kWithLast) ? Tab::S - 1 : Tab::S;
  T k[S];
  k[0] = k1;
NMODE_UNROLL
  for (int i = 1; i < S; ++i) {
    T acc = T(0);
NMODE_UNROLL
    for (int j = 0; j < i; ++j) acc += T(Tab::a(i, j)) * k[j];
    k[i] = rhs(y + dt * acc, g);
  }
  T acc = T(0);
NMODE_UNROLL
  for (int j = 0; j < S; ++j) acc += w[j] * k[j];
  if (M == kDopri5 && kWithLast && err != nullptr) {
    *err = dopri5_error(dt, k);
    *klast = k[S - 1];
  }
  return y + dt * acc;
}

// dopri5 local error estimate from the stages of rk_step<..., true>.
template <typename T>
NMODE_HOT T dopri5_error(T dt, const T* k) {
  T acc = T(0);
NMODE_UNROLL
  for (int j = 0; j < 7; ++j) acc += T(Tableau<kDopri5>::e(j)) * k[j];
  return dt * acc;
}

// Error ratio of one element as torchdiffeq scales it: err / (atol + rtol * max(|y0|, |y1|)).
template <typename T>
NMODE_HOT T error_ratio(T err, T y0, T y1, T rtol, T atol) {
  const T ay0 = y0 < T(0) ? -y0 : y0, ay1 = y1 < T(0) ? -y1 : y1;
  return err / (atol + rtol * (ay0 > ay1 ? ay0 : ay1));
}

// ------------------------------------------------------------------------------------------
// Reverse mode of one step y1 = y0 + dt * sum_j w_j k_j (stages recomputed from y0).
// Adds d(y1)/d(y0)^T ybar1 to *ybar0 (which it overwrites) and d(y1)/dg^T ybar1 to *gbar.
// Costs S sincos (the forward stages and their derivatives come from one reduction each).
// ------------------------------------------------------------------------------------------
template <typename T, int M, bool kWithLast = true>
NMODE_HOT void rk_step_vjp(T y, T g, T dt, const T* w, T ybar1, T* ybar0, T* gbar) {
  using Tab = Tableau<M>;
  // dopri5's FSAL stage only matters when its weight is nonzero (the interpolated last step).
  constexpr int S = (M == kDopri5 && !kWithLast) ? Tab::S - 1 : Tab::S;
  T k[S], s2[S];
NMODE_UNROLL
  for (int i = 0; i < S; ++i) {
    T acc = T(0);
NMODE_UNROLL
    for (int j = 0; j < i; ++j) acc += T(Tab::a(i, j)) * k[j];
    k[i] = rhs_and_sin2(y + dt * acc, g, &s2[i]);
  }
  // kbar_j = dt * w_j * ybar1 + sum_{i > j} dt * a(i, j) * sbar_i;  sbar_i = kbar_i * f_y(s_i).
  T kbar[S];
NMODE_UNROLL
  for (int j = 0; j < S; ++j) kbar[j] = dt * w[j] * ybar1;
  T ybar = ybar1, gb = T(0);
NMODE_UNROLL
  for (int i = S - 1; i >= 0; --i) {
    const T sbar = kbar[i] * (s2[i] - T(1));
    gb += kbar[i] * s2[i];
    ybar += sbar;
NMODE_UNROLL
    for (int j = 0; j < i; ++j) kbar[j] += dt * T(Tab::a(i, j)) * sbar;
  }
  *ybar0 = ybar;
  *gbar += gb;
}

// ------------------------------------------------------------------------------------------
// Step size control, exactly torchdiffeq's (_optimal_step_size, order 5).
// ------------------------------------------------------------------------------------------
ODEKERN_HD double optimal_step(double dt, double ratio) {
  if (ratio == 0.0) return dt * kIfactor;
  const double dfactor = ratio < 1.0 ? 1.0 : kDfactor;
  double factor = kSafety / pow(ratio, 1.0 / Tableau<kDopri5>::kOrder);
  factor = factor > dfactor ? factor : dfactor;
  factor = factor < kIfactor ? factor : kIfactor;
  return dt * factor;
}

// torchdiffeq's initial step (Hairer, Norsett & Wanner II.4) from the three norms it needs:
// d0 = ||y0/scale||, d1 = ||f0/scale||, and d2 = ||(f(y0 + h0 f0) - f0)/scale|| / h0.
ODEKERN_HD double initial_step_h0(double d0, double d1) {
  return (d0 < kInitialNormFloor || d1 < kInitialNormFloor) ? kInitialTinyStep : kInitialStepFraction * d0 / d1;
}
ODEKERN_HD double initial_step_final(double h0, double d1, double d2) {
  double h1;
  if (d1 <= kInitialFlatFloor && d2 <= kInitialFlatFloor) {
    h1 = h0 * kInitialFlatShrink > kInitialTinyStep ? h0 * kInitialFlatShrink : kInitialTinyStep;
  } else {
    const double dm = d1 > d2 ? d1 : d2;
    // torchdiffeq's exponent 1 / (embedded order + 1) = 1/5 for dopri5.
    h1 = pow(kInitialStepFraction / dm, 1.0 / Tableau<kDopri5>::kOrder);
  }
  return kInitialMaxGrowth * h0 < h1 ? kInitialMaxGrowth * h0 : h1;
}

// torchdiffeq's fixed grid on [t0, t1]: t0 + k*h for k < n, the last point clipped to t1.
// Returns the number of steps; fills dts[0..n) if dts is not null.
ODEKERN_HD long fixed_grid(double t0, double t1, double h, double* dts) {
  const long n_points = static_cast<long>(ceil((t1 - t0) / h + 1.0));
  const long n = n_points > 2 ? n_points - 1 : 1;
  if (dts != nullptr) {
    for (long k = 0; k < n; ++k) {
      const double a = t0 + double(k) * h;
      const double b = (k + 1 == n) ? t1 : t0 + double(k + 1) * h;
      dts[k] = b - a;
    }
  }
  return n;
}

// ------------------------------------------------------------------------------------------
// Per-element solvers over a D-dimensional state (D = 1: the nmODE; D = 3: its adjoint).
// Sys provides `void rhs(const T* x, T* out) const`.
// ------------------------------------------------------------------------------------------
template <typename T>
struct NmodeSys {
  static constexpr int D = 1;
  T g;
  ODEKERN_HD void rhs(const T* x, T* out) const { out[0] = nmode::rhs(x[0], g); }
};

// Adjoint system in reversed time tau = t1 - t: x = [y, a_y, a_g];
//   dy/dtau = -f(y),  da_y/dtau = a_y f_y(y),  da_g/dtau = a_y f_g(y).
template <typename T>
struct AdjointSys {
  static constexpr int D = 3;
  T g;
  ODEKERN_HD void rhs(const T* x, T* out) const {
    T s2;
    const T f = rhs_and_sin2(x[0], g, &s2);
    out[0] = -f;
    out[1] = x[1] * (s2 - T(1));
    out[2] = x[1] * s2;
  }
};

// One RK step of a D-dim system; k1 given; stages in k[S][D]; returns y1 in y1[].
template <typename T, int M, class Sys>
ODEKERN_HD void sys_rk_step(const Sys& sys, const T* y, T dt, const T* k1, const T* w,
                            T (*k)[Sys::D], T* y1) {
  using Tab = Tableau<M>;
  constexpr int D = Sys::D;
NMODE_UNROLL
  for (int d = 0; d < D; ++d) k[0][d] = k1[d];
NMODE_UNROLL
  for (int i = 1; i < Tab::S; ++i) {
    T yi[D];
NMODE_UNROLL
    for (int d = 0; d < D; ++d) {
      T acc = T(0);
NMODE_UNROLL
      for (int j = 0; j < i; ++j) acc += T(Tab::a(i, j)) * k[j][d];
      yi[d] = y[d] + dt * acc;
    }
    sys.rhs(yi, k[i]);
  }
NMODE_UNROLL
  for (int d = 0; d < D; ++d) {
    T acc = T(0);
NMODE_UNROLL
    for (int j = 0; j < Tab::S; ++j) acc += w[j] * k[j][d];
    y1[d] = y[d] + dt * acc;
  }
}

// Fixed-grid solve of a D-dim system over a list of dts (last step may carry dense weights
// for dopri5 at theta). x is updated in place.
// DtsPtr: `const double*`, or the bounds-checked pointer of the CUDA emulation (global_ptr.h).
template <typename T, int M, class Sys, typename DtsPtr>
ODEKERN_HD void sys_solve_list(const Sys& sys, T* x, DtsPtr dts, int n, double theta) {
  constexpr int D = Sys::D;
  constexpr int S = Tableau<M>::S;
  T w[S], wl[S];
  step_weights<T, M>(1.0, w);
  step_weights<T, M>(theta, wl);
  for (int i = 0; i < n; ++i) {
    T k1[D], k[S][D], x1[D];
    sys.rhs(x, k1);
    sys_rk_step<T, M>(sys, x, T(dts[i]), k1, i == n - 1 ? wl : w, k, x1);
NMODE_UNROLL
    for (int d = 0; d < D; ++d) x[d] = x1[d];
  }
}

// Per-element adaptive dopri5 over [0, T] for a D-dim system, torchdiffeq's algorithm with the
// norm max_d |v_d| (torchdiffeq's mixed norm, each "tensor" being one scalar here): initial
// step selection, accept if ratio <= 1, integrate past T and interpolate there.
// Observer hooks let the exact backward replay accepted steps: on_accept(x_before, dt, theta)
// is called for each accepted step (theta = 1 except on the last one).
struct NoObserver {
  template <typename T> ODEKERN_HD bool operator()(const T*, double, double) { return true; }
};

template <typename T, class Sys, class Observer = NoObserver>
ODEKERN_HD int sys_solve_dopri5(const Sys& sys, T* x, double t_end, double rtol, double atol,
                                long max_steps, Observer* obs = nullptr, long* n_accepted = nullptr,
                                double* h_start = nullptr) {
  constexpr int D = Sys::D;
  T f[D];
  sys.rhs(x, f);
  double h;
  if (h_start != nullptr && *h_start > 0) {
    h = *h_start;
  } else {
    double d0 = 0, d1 = 0;
NMODE_UNROLL
    for (int d = 0; d < D; ++d) {
      const double scale = atol + fabs(double(x[d])) * rtol;
      d0 = fmax(d0, fabs(double(x[d])) / scale);
      d1 = fmax(d1, fabs(double(f[d])) / scale);
    }
    const double h0 = initial_step_h0(d0, d1);
    T x1[D], f1[D];
NMODE_UNROLL
    for (int d = 0; d < D; ++d) x1[d] = x[d] + T(h0) * f[d];
    sys.rhs(x1, f1);
    double d2 = 0;
NMODE_UNROLL
    for (int d = 0; d < D; ++d) {
      const double scale = atol + fabs(double(x[d])) * rtol;
      d2 = fmax(d2, fabs(double(f1[d] - f[d])) / scale / h0);
    }
    h = initial_step_final(h0, d1, d2);
    if (h_start != nullptr) *h_start = h;
  }
  T w[7];
  step_weights<T, kDopri5>(1.0, w);
  double t = 0.0;
  long attempts = 0, accepted = 0;
  while (true) {
    if (attempts++ >= max_steps) return kTooManySteps;
    const double dt = h;
    const double t_next = t + dt;
    if (!(t_next > t)) return kStepUnderflow;
    T k[7][D], x1[D];
    sys_rk_step<T, kDopri5>(sys, x, T(dt), f, w, k, x1);
    double ratio = 0;
NMODE_UNROLL
    for (int d = 0; d < D; ++d) {
      T e = T(0);
NMODE_UNROLL
      for (int j = 0; j < 7; ++j) e += T(Tableau<kDopri5>::e(j)) * k[j][d];
      e = T(dt) * e;
      const T r = error_ratio(e, x[d], x1[d], T(rtol), T(atol));
      ratio = fmax(ratio, fabs(double(r)));
    }
    if (!(ratio == ratio)) return kNonFinite;
    if (ratio <= 1.0) {
      ++accepted;
      if (t_next >= t_end) {
        const double theta = (t_end - t) / (t_next - t);
        T wl[7];
        step_weights<T, kDopri5>(theta, wl);
        if (obs != nullptr) (*obs)(x, dt, theta);
NMODE_UNROLL
        for (int d = 0; d < D; ++d) {
          T acc = T(0);
NMODE_UNROLL
          for (int j = 0; j < 7; ++j) acc += wl[j] * k[j][d];
          x[d] = x[d] + T(dt) * acc;
        }
        break;
      }
      if (obs != nullptr && !(*obs)(x, dt, 1.0)) break;  // observer may stop early (replay)
NMODE_UNROLL
      for (int d = 0; d < D; ++d) {
        x[d] = x1[d];
        f[d] = k[6][d];
      }
      t = t_next;
    }
    h = optimal_step(dt, ratio);
  }
  if (n_accepted != nullptr) *n_accepted = accepted;
  return kOk;
}

// ------------------------------------------------------------------------------------------
// Exact backward of one element (reverse mode through the discrete solve) with two-level
// checkpointing in fixed-size local arrays: kCheckpoints states along the whole solve, and
// one segment of up to kCheckpoints states recomputed from its checkpoint. Up to
// kCheckpoints^2 steps this costs one extra forward replay; beyond, each step in a long
// segment is recomputed from the segment's checkpoint (still no trajectory in memory).
// ------------------------------------------------------------------------------------------

// A step sequence that can be replayed from any of its steps: fixed list of dts (fixed-grid
// methods and global control) -- step i has dt = dts[i], last step at theta. DtsPtr as in
// sys_solve_list.
template <typename DtsPtr = const double*>
struct ListSteps {
  DtsPtr dts;
  long n;
  double theta;
  ODEKERN_HD double dt(long i) const { return dts[i]; }
  ODEKERN_HD double th(long i) const { return i == n - 1 ? theta : 1.0; }
};

template <typename T, int M>
ODEKERN_HD T step_fwd(T y, T g, double dt, double theta) {
  constexpr int S = Tableau<M>::S;
  T w[S];
  step_weights<T, M>(theta, w);
  return rk_step<T, M, true>(y, g, T(dt), rhs(y, g), w);
}

template <typename T, int M>
ODEKERN_HD void step_bwd(T y, T g, double dt, double theta, T ybar1, T* ybar0, T* gbar) {
  constexpr int S = Tableau<M>::S;
  T w[S];
  step_weights<T, M>(theta, w);
  if (theta != 1.0) rk_step_vjp<T, M, true>(y, g, T(dt), w, ybar1, ybar0, gbar);
  else rk_step_vjp<T, M, false>(y, g, T(dt), w, ybar1, ybar0, gbar);
}

// Reverse sweep over a ListSteps sequence. ybar enters as dL/dy(t1) and leaves as dL/dy0.
template <typename T, int M, typename DtsPtr>
ODEKERN_HD void list_solve_vjp(T y0, T g, const ListSteps<DtsPtr>& steps, T* ybar, T* gbar) {
  const long n = steps.n;
  if (n == 0) return;
  const long seg = (n + kCheckpoints - 1) / kCheckpoints;
  T ck[kCheckpoints];
  T y = y0;
  for (long i = 0; i < n; ++i) {
    if (i % seg == 0) ck[i / seg] = y;
    if (i + 1 < n) y = step_fwd<T, M>(y, g, steps.dt(i), steps.th(i));
  }
  T buf[kCheckpoints];
  T yb = *ybar;
  for (long s = (n - 1) / seg; s >= 0; --s) {
    const long start = s * seg;
    const long end = start + seg < n ? start + seg : n;
    if (end - start <= kCheckpoints) {
      T yy = ck[s];
      for (long i = start; i < end; ++i) {
        buf[i - start] = yy;
        if (i + 1 < end) yy = step_fwd<T, M>(yy, g, steps.dt(i), steps.th(i));
      }
      for (long i = end - 1; i >= start; --i)
        step_bwd<T, M>(buf[i - start], g, steps.dt(i), steps.th(i), yb, &yb, gbar);
    } else {
      for (long i = end - 1; i >= start; --i) {
        T yy = ck[s];
        for (long j = start; j < i; ++j) yy = step_fwd<T, M>(yy, g, steps.dt(j), steps.th(j));
        step_bwd<T, M>(yy, g, steps.dt(i), steps.th(i), yb, &yb, gbar);
      }
    }
  }
  *ybar = yb;
}

// Per-element adaptive control: the accepted (y, dt, theta) sequence is re-derived by
// running the same controller again from y0 (deterministic: same arithmetic, same order).
struct PerElementParams {
  double t_end, rtol, atol;
  long max_steps;
};

template <typename T>
struct AcceptedStep {
  T y;
  double dt, theta;
};

// Records accepted steps with index in [lo, hi) into out[] (index - lo) and stops the replay
// after them. (ck_y / ck_t: optional controller checkpoints every `seg` accepted steps; the
// kernels do not use them yet.)
template <typename T>
struct RecordObserver {
  long index = 0, lo = 0, hi = 0, seg = 0;
  AcceptedStep<T>* out = nullptr;
  T* ck_y = nullptr;
  double* ck_t = nullptr;
  double t = 0.0;
  ODEKERN_HD bool operator()(const T* x, double dt, double theta) {
    if (ck_y != nullptr && seg > 0 && index % seg == 0) {
      ck_y[index / seg] = x[0];
      ck_t[index / seg] = t;
    }
    if (out != nullptr && index >= lo && index < hi) out[index - lo] = AcceptedStep<T>{x[0], dt, theta};
    t += dt;
    ++index;
    return !(out != nullptr && index >= hi && ck_y == nullptr);
  }
};

// Forward of one element with per-element control. Returns a Status; y updated in place.
template <typename T>
ODEKERN_HD int pe_solve(T* y, T g, const PerElementParams& p) {
  NmodeSys<T> sys{g};
  return sys_solve_dopri5<T>(sys, y, p.t_end, p.rtol, p.atol, p.max_steps);
}

// Exact backward of one element with per-element control. Pass 1 counts the n accepted
// steps; then, segment by segment from the last, the controller is replayed from y0 and the
// segment's (y, dt, theta) recorded into a local buffer of kCheckpoints entries, and reverse
// mode runs through it. Cost: up to kCheckpoints replays of the solve (segments of
// ceil(n / kCheckpoints) steps); memory: the fixed buffer. Time runs from 0 to t_end.
template <typename T>
ODEKERN_HD int pe_solve_vjp(T y0, T g, const PerElementParams& p, T* ybar, T* gbar) {
  NmodeSys<T> sys{g};
  // Pass 1: count accepted steps (and fix the initial step).
  long n = 0;
  double h0 = -1.0;
  {
    T x = y0;
    const int st = sys_solve_dopri5<T>(sys, &x, p.t_end, p.rtol, p.atol, p.max_steps,
                                       (NoObserver*)nullptr, &n, &h0);
    if (st != kOk) return st;
  }
  // Pass 2..: one replay from y0 per segment, recording only that segment.
  const long seg = (n + kCheckpoints - 1) / kCheckpoints;
  AcceptedStep<T> buf[kCheckpoints];
  T yb = *ybar;
  for (long s = (n - 1) / seg; s >= 0; --s) {
    const long start = s * seg;
    const long end = start + seg < n ? start + seg : n;
    if (end - start <= kCheckpoints) {
      RecordObserver<T> rec;
      rec.lo = start;
      rec.hi = end;
      rec.out = buf;
      T x = y0;
      double h = h0;
      sys_solve_dopri5<T>(sys, &x, p.t_end, p.rtol, p.atol, p.max_steps, &rec, (long*)nullptr, &h);
      for (long i = end - 1; i >= start; --i)
        step_bwd<T, kDopri5>(buf[i - start].y, g, buf[i - start].dt, buf[i - start].theta, yb, &yb, gbar);
    } else {
      for (long i = end - 1; i >= start; --i) {
        RecordObserver<T> rec;
        rec.lo = i;
        rec.hi = i + 1;
        rec.out = buf;
        T x = y0;
        double h = h0;
        sys_solve_dopri5<T>(sys, &x, p.t_end, p.rtol, p.atol, p.max_steps, &rec, (long*)nullptr, &h);
        step_bwd<T, kDopri5>(buf[0].y, g, buf[0].dt, buf[0].theta, yb, &yb, gbar);
      }
    }
  }
  *ybar = yb;
  return kOk;
}

// Continuous adjoint of one element. yT = y(t1) (the forward's, kept by the caller), ybar = dL/dy(t1)
// (with the f1 contribution already added), gbar accumulates; both leave at t0.
// Fixed-step methods use torchdiffeq's grid on the reversed interval (`dts`, n steps).
template <typename T, int M, typename DtsPtr>
ODEKERN_HD int adjoint_solve(T yT, T g, double t_span, DtsPtr dts, long n,
                             double rtol, double atol, long max_steps, T* ybar, T* gbar) {
  AdjointSys<T> sys{g};
  T x[3] = {yT, *ybar, T(0)};
  int st = kOk;
  if (M == kDopri5) {
    st = sys_solve_dopri5<T>(sys, x, t_span, rtol, atol, max_steps);
  } else {
    sys_solve_list<T, M>(sys, x, dts, n, 1.0);
  }
  *ybar = x[1];
  *gbar += x[2];
  return st;
}

// dL/dy0, dL/dg contributions of an f output: f = f(y, g) with cotangent fbar.
template <typename T>
NMODE_HOT void rhs_vjp(T y, T g, T fbar, T* ybar, T* gbar) {
  T s2;
  rhs_and_sin2(y, g, &s2);
  *ybar += fbar * (s2 - T(1));
  *gbar += fbar * s2;
}

}  // namespace nmode
}  // namespace odekern
