// CUDA kernels and launchers of nmode_solve. One thread per element (per g index in the
// backward, looping over the repeats so grad_g needs no atomics); the math is the shared
// header nmode_solve.h. No torch headers here: the launchers take raw pointers and a stream;
// nmode_solve_cuda.cpp is the torch binding (allocation, checks, stats tensor).
//
// Global control (dopri5, one step size for the tensor) is host-driven like torchdiffeq: one
// launch per attempted step computes all stages, the candidate state and per-block float64
// partial sums of the squared error ratio; the host sums the partials (deterministically)
// and decides accept / reject and the next step. Everything else is one launch.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <odekern/cuda_launch.h>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cuda.h"
#include "ops/nmode_solve/nmode_solve_global_control.h"

namespace odekern {
namespace nmode {
namespace cuda {
namespace {

constexpr int kThreads = 128;

inline int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// Sum over the block of a per-thread double into part[blockIdx.x] (fixed order: deterministic).
__device__ ODEKERN_ALWAYS_INLINE void block_sum_to(double v, global_ptr<double> part) {
  ODEKERN_SHARED_ARRAY(double, buf, kThreads);
  buf[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = buf[0];
}

// ---------------------------------------------------------------------------------------------
// Kernels.
// ---------------------------------------------------------------------------------------------
template <typename T, int M>
__global__ void list_fwd_kernel(global_ptr<const T> ODEKERN_RESTRICT y0, global_ptr<const T> ODEKERN_RESTRICT g, int64_t N, int64_t G,
                                global_ptr<const double> ODEKERN_RESTRICT dts, int64_t n, double theta, global_ptr<T> ODEKERN_RESTRICT y1,
                                global_ptr<T> ODEKERN_RESTRICT f0, global_ptr<T> ODEKERN_RESTRICT f1) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= N) return;
  const T gi = g[e % G];
  T y = y0[e];
  if (f0 != nullptr) f0[e] = rhs(y, gi);
  for (int64_t i = 0; i < n; ++i) y = step_fwd<T, M>(y, gi, dts[i], i == n - 1 ? theta : 1.0);
  y1[e] = y;
  if (f1 != nullptr) f1[e] = rhs(y, gi);
}

template <typename T>
__global__ void global_init_kernel(global_ptr<const T> ODEKERN_RESTRICT y0, global_ptr<const T> ODEKERN_RESTRICT g, int64_t N, int64_t G,
                                   T rtol, T atol, global_ptr<T> ODEKERN_RESTRICT f, global_ptr<double> part0, global_ptr<double> part1) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  double a2 = 0, b2 = 0;
  if (e < N) {
    const T y = y0[e];
    const T fe = rhs(y, g[e % G]);
    f[e] = fe;
    const T scale = atol + fabs(y) * rtol;
    const T a = y / scale, b = fe / scale;
    a2 = double(a) * double(a);
    b2 = double(b) * double(b);
  }
  block_sum_to(a2, part0);
  block_sum_to(b2, part1);
}

template <typename T>
__global__ void global_d2_kernel(global_ptr<const T> ODEKERN_RESTRICT y0, global_ptr<const T> ODEKERN_RESTRICT f, global_ptr<const T> ODEKERN_RESTRICT g,
                                 int64_t N, int64_t G, T h0, T rtol, T atol, global_ptr<double> part) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  double v2 = 0;
  if (e < N) {
    const T y = y0[e];
    const T f1 = rhs(y + h0 * f[e], g[e % G]);
    const T v = (f1 - f[e]) / (atol + fabs(y) * rtol);
    v2 = double(v) * double(v);
  }
  block_sum_to(v2, part);
}

struct Dopri5Weights {
  double w[7], wl[7];
};

template <typename T>
__global__ void global_attempt_kernel(global_ptr<const T> ODEKERN_RESTRICT y, global_ptr<const T> ODEKERN_RESTRICT f, global_ptr<const T> ODEKERN_RESTRICT g,
                                      int64_t N, int64_t G, T dt, Dopri5Weights wts, bool finishing, T rtol,
                                      T atol, global_ptr<T> ODEKERN_RESTRICT ynew, global_ptr<T> ODEKERN_RESTRICT fnew, global_ptr<T> ODEKERN_RESTRICT out,
                                      global_ptr<T> ODEKERN_RESTRICT fout, global_ptr<double> part) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  double r2 = 0;
  if (e < N) {
    const T gi = g[e % G];
    T w[7], wl[7];
#pragma unroll
    for (int j = 0; j < 7; ++j) {
      w[j] = T(wts.w[j]);
      wl[j] = T(wts.wl[j]);
    }
    T err, klast;
    const T yn = rk_step<T, kDopri5, true>(y[e], gi, dt, f[e], w, &err, &klast);
    const T r = error_ratio(err, y[e], yn, rtol, atol);
    r2 = double(r) * double(r);
    ynew[e] = yn;
    fnew[e] = klast;
    if (finishing) {
      const T yo = rk_step<T, kDopri5, true>(y[e], gi, dt, f[e], wl);
      out[e] = yo;
      if (fout != nullptr) fout[e] = rhs(yo, gi);
    }
  }
  block_sum_to(r2, part);
}

template <typename T>
__global__ void pe_fwd_kernel(global_ptr<const T> ODEKERN_RESTRICT y0, global_ptr<const T> ODEKERN_RESTRICT g, int64_t N, int64_t G,
                              PerElementParams p, global_ptr<T> ODEKERN_RESTRICT y1, global_ptr<T> ODEKERN_RESTRICT f0, global_ptr<T> ODEKERN_RESTRICT f1,
                              global_ptr<int> status) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= N) return;
  const T gi = g[e % G];
  T y = y0[e];
  if (f0 != nullptr) f0[e] = rhs(y, gi);
  const int st = pe_solve<T>(&y, gi, p);
  if (st != kOk) atomicMax(status, st);
  y1[e] = y;
  if (f1 != nullptr) f1[e] = rhs(y, gi);
}

// Backward kernels: thread = one index of g; it loops over the R = N / G repeats.
struct BwdArgs {
  int64_t N, G;
  global_ptr<const double> dts;  // list steps (fixed grid / global control), device memory
  int64_t n;
  double theta;
  global_ptr<const double> adj_dts;  // fixed-grid adjoint: grid on the reversed interval
  int64_t adj_n;
  PerElementParams p;
  bool list_mode, adjoint;
};

template <typename T, int M>
__global__ void bwd_kernel(global_ptr<const T> ODEKERN_RESTRICT y0, global_ptr<const T> ODEKERN_RESTRICT y1s, global_ptr<const T> ODEKERN_RESTRICT g, global_ptr<const T> ODEKERN_RESTRICT gy1,
                           global_ptr<const T> ODEKERN_RESTRICT gf0, global_ptr<const T> ODEKERN_RESTRICT gf1, BwdArgs a,
                           global_ptr<T> ODEKERN_RESTRICT gy0, global_ptr<T> ODEKERN_RESTRICT gg, global_ptr<int> status) {
  const int64_t gi_idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (gi_idx >= a.G) return;
  const T gi = g[gi_idx];
  T gsum = T(0);
  int worst = kOk;
  for (int64_t e = gi_idx; e < a.N; e += a.G) {
    const T y0e = y0[e];
    // y(t1), needed for the f1 cotangent and as the adjoint's starting point: the forward's
    // (y1s, the adjoint), or solved for again (the checkpointed gradient replays the solve).
    T y1 = y0e;
    if (y1s != nullptr) {
      y1 = y1s[e];
    } else if (a.list_mode) {
      for (int64_t i = 0; i < a.n; ++i) y1 = step_fwd<T, M>(y1, gi, a.dts[i], i == a.n - 1 ? a.theta : 1.0);
    } else {
      const int st = pe_solve<T>(&y1, gi, a.p);
      worst = st > worst ? st : worst;
    }
    T yb = gy1[e], gb = T(0);
    if (gf1 != nullptr) rhs_vjp(y1, gi, gf1[e], &yb, &gb);
    if (a.adjoint) {
      const int st = adjoint_solve<T, M>(y1, gi, a.p.t_end, a.adj_dts, a.adj_n, a.p.rtol, a.p.atol,
                                         a.p.max_steps, &yb, &gb);
      worst = st > worst ? st : worst;
    } else if (a.list_mode) {
      const ListSteps<global_ptr<const double>> steps{a.dts, a.n, a.theta};
      list_solve_vjp<T, M>(y0e, gi, steps, &yb, &gb);
    } else {
      const int st = pe_solve_vjp<T>(y0e, gi, a.p, &yb, &gb);
      worst = st > worst ? st : worst;
    }
    if (gf0 != nullptr) rhs_vjp(y0e, gi, gf0[e], &yb, &gb);
    gy0[e] = yb;
    gsum += gb;
  }
  gg[gi_idx] = gsum;
  if (worst != kOk) atomicMax(status, worst);
}


std::string check(cudaError_t err, const char* what) {
  return err == cudaSuccess ? std::string() : std::string(what) + ": " + cudaGetErrorString(err);
}

// The passes global_dopri5 (nmode_solve_global_control.h) makes over the elements: one kernel
// each, whose per-block partial sums are copied back and added on the host (the accept
// decision needs them there: one synchronisation per attempt, as torchdiffeq's).
template <typename T>
struct CudaGlobalPasses {
  const ForwardArgs& a;
  cudaStream_t stream;
  int nb;
  T rtol, atol;
  T *ycur, *fcur, *ynew, *fnew;
  std::vector<double> part_host0, part_host1;

  // Sums of the nb partials at each of parts[0..count) (device), after the work queued on the
  // stream: one synchronisation.
  std::string block_sums(const double* part, int count, double* const* sums, const char* what) {
    std::vector<double>* host[2] = {&part_host0, &part_host1};
    for (int k = 0; k < count; ++k)
      cudaMemcpyAsync(host[k]->data(), part + k * nb, nb * sizeof(double), cudaMemcpyDeviceToHost, stream);
    const std::string err = check(cudaStreamSynchronize(stream), what);
    if (!err.empty()) return err;
    for (int k = 0; k < count; ++k)
      for (int b = 0; b < nb; ++b) *sums[k] += (*host[k])[b];
    return err;
  }
  std::string initial_norm_sums(double* s0, double* s1) {
    const T* y0 = static_cast<const T*>(a.y0);
    const std::string err = check(cudaMemcpyAsync(ycur, y0, a.N * sizeof(T), cudaMemcpyDeviceToDevice, stream), "copy y0");
    if (!err.empty()) return err;
    launch_kernel<global_init_kernel<T>>(nb, kThreads, 0, stream, y0, static_cast<const T*>(a.g), a.N, a.G, rtol,
                                         atol, fcur, a.partials, a.partials + nb);
    if (a.f0 != nullptr) cudaMemcpyAsync(a.f0, fcur, a.N * sizeof(T), cudaMemcpyDeviceToDevice, stream);
    double* sums[2] = {s0, s1};
    return block_sums(a.partials, 2, sums, "initial step");
  }
  std::string initial_d2_sum(double h0, double* s2) {
    launch_kernel<global_d2_kernel<T>>(nb, kThreads, 0, stream, static_cast<const T*>(a.y0), fcur,
                                       static_cast<const T*>(a.g), a.N, a.G, T(h0), rtol, atol, a.partials);
    return block_sums(a.partials, 1, &s2, "initial step");
  }
  std::string attempt(double dt, bool finishing, double theta, double* ssum) {
    Dopri5Weights wts;
    step_weights<double, kDopri5>(1.0, wts.w);
    step_weights<double, kDopri5>(theta, wts.wl);
    launch_kernel<global_attempt_kernel<T>>(nb, kThreads, 0, stream, ycur, fcur, static_cast<const T*>(a.g), a.N,
                                            a.G, T(dt), wts, finishing, rtol, atol, ynew, fnew,
                                            static_cast<T*>(a.y1), static_cast<T*>(a.f1), a.partials);
    return block_sums(a.partials, 1, &ssum, "dopri5 attempt");
  }
  void accept() {
    std::swap(ycur, ynew);
    std::swap(fcur, fnew);
  }
};

template <typename T>
std::string global_forward(const ForwardArgs& a, cudaStream_t stream, std::vector<double>* dts,
                           int64_t* n_rejected, double* theta) {
  T* scratch = static_cast<T*>(a.scratch);
  const int nb = blocks_for(a.N);
  CudaGlobalPasses<T> passes{a, stream, nb, T(a.rtol), T(a.atol), scratch, scratch + a.N, scratch + 2 * a.N,
                             scratch + 3 * a.N, std::vector<double>(nb), std::vector<double>(nb)};
  GlobalControlResult result;
  const std::string err = global_dopri5(passes, a.N, a.t0, a.t1, a.max_steps, &result);
  *dts = std::move(result.dts);
  *n_rejected = result.n_rejected;
  *theta = result.theta;
  return err;
}

template <typename T>
std::string forward_t(const ForwardArgs& a, cudaStream_t stream, std::vector<double>* dts,
                      int64_t* n_rejected, double* theta) {
  const T* y0 = static_cast<const T*>(a.y0);
  const T* g = static_cast<const T*>(a.g);
  T* y1 = static_cast<T*>(a.y1);
  T* f0 = static_cast<T*>(a.f0);
  T* f1 = static_cast<T*>(a.f1);
  const int nb = blocks_for(a.N);
  if (a.method != kDopri5) {
    dispatch_method(a.method, [&](auto M_) {
      constexpr int M = decltype(M_)::value;
      launch_kernel<list_fwd_kernel<T, M>>(nb, kThreads, 0, stream, y0, g, a.N, a.G, a.dts, a.n_fixed, 1.0, y1, f0, f1);
    });
    return check(cudaGetLastError(), "nmode_solve list forward");
  }
  if (a.global) return global_forward<T>(a, stream, dts, n_rejected, theta);
  const PerElementParams p{a.t1 - a.t0, a.rtol, a.atol, a.max_steps};
  cudaMemsetAsync(a.status, 0, sizeof(int), stream);
  launch_kernel<pe_fwd_kernel<T>>(nb, kThreads, 0, stream, y0, g, a.N, a.G, p, y1, f0, f1, a.status);
  int status = 0;
  cudaMemcpyAsync(&status, a.status, sizeof(int), cudaMemcpyDeviceToHost, stream);
  std::string err = check(cudaStreamSynchronize(stream), "nmode_solve per-element forward");
  if (!err.empty()) return err;
  return status_message(status, a.max_steps);
}

template <typename T>
std::string backward_t(const BackwardArgs& a, cudaStream_t stream) {
  BwdArgs k{a.N, a.G, a.dts, a.n, a.theta, a.adj_dts, a.adj_n,
            PerElementParams{a.t1 - a.t0, a.rtol, a.atol, a.max_steps}, a.list_mode, a.adjoint};
  cudaMemsetAsync(a.status, 0, sizeof(int), stream);
  dispatch_method(a.method, [&](auto M_) {
    constexpr int M = decltype(M_)::value;
    launch_kernel<bwd_kernel<T, M>>(blocks_for(a.G), kThreads, 0, stream, 
        static_cast<const T*>(a.y0), static_cast<const T*>(a.y1), static_cast<const T*>(a.g),
        static_cast<const T*>(a.gy1), static_cast<const T*>(a.gf0), static_cast<const T*>(a.gf1), k, static_cast<T*>(a.gy0),
        static_cast<T*>(a.gg), a.status);
  });
  int status = 0;
  cudaMemcpyAsync(&status, a.status, sizeof(int), cudaMemcpyDeviceToHost, stream);
  std::string err = check(cudaStreamSynchronize(stream), "nmode_solve backward");
  if (!err.empty()) return err;
  return status_message(status, a.max_steps);
}

}  // namespace

int64_t global_partials_needed(int64_t N) { return 2 * int64_t(blocks_for(N)); }

std::string forward(const ForwardArgs& a, cudaStream_t stream, std::vector<double>* dts, int64_t* n_rejected,
                    double* theta) {
  if (a.N == 0) return std::string();
  return a.is_double ? forward_t<double>(a, stream, dts, n_rejected, theta)
                     : forward_t<float>(a, stream, dts, n_rejected, theta);
}

std::string backward(const BackwardArgs& a, cudaStream_t stream) {
  if (a.N == 0) return std::string();
  return a.is_double ? backward_t<double>(a, stream) : backward_t<float>(a, stream);
}

}  // namespace cuda
}  // namespace nmode
}  // namespace odekern
