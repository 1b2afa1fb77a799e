// CUDA kernels + launchers of the rk_stage op family. Raw pointers and a cudaStream_t only (no
// torch headers), so this file is compiled and register-checked by plain nvcc
// (python -m tools.gpucheck) and run on CPU by the CUDA emulation of tests/cuda_emulation. The
// per-element math is rk_stage.h, shared with the CPU loop.
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include <odekern/cuda_launch.h>

#include "rk_stage.h"

namespace odekern {
namespace rk_stage {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 4096;  // grid-stride beyond this; also bounds the partial-sum buffer

// Pointers and dt-scaled coefficients travel by value in kernel parameter space.
template <typename T>
struct Stages {
  global_ptr<const T> k[kMaxK];
  T c[kMaxK];
  T d[kMaxK];
};

// BASE = false: out = sum_j c_j k_j (y is unused).
template <typename T, int NK, bool BASE>
__global__ void __launch_bounds__(kThreads) combine_kernel(global_ptr<const T> y, Stages<T> s,
                                                           global_ptr<T> out, int64_t n) {
  T c[NK];
#pragma unroll
  for (int j = 0; j < NK; ++j) c[j] = s.c[j];
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T kv[NK];
#pragma unroll
    for (int j = 0; j < NK; ++j) kv[j] = __ldg(s.k[j] + i);
    out[i] = BASE ? combine<T, NK>(y[i], kv, c) : weighted_sum<T, NK>(kv, c);
  }
}

// Block-level sum of `acc` into partial[blockIdx.x] (warp shuffles, then one warp's worth).
__device__ ODEKERN_ALWAYS_INLINE void store_block_sum(double acc, global_ptr<double> partial) {
  ODEKERN_SHARED_ARRAY(double, warp_sums, kThreads / 32);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    partial[blockIdx.x] = total;
  }
}

// Each block writes one float64 partial sum of squared error ratios; finalize_kernel adds
// them in block order (deterministic, no atomics).
template <typename T, int NK>
__global__ void __launch_bounds__(kThreads) error_ratio_kernel(global_ptr<const T> y0,
                                                               global_ptr<const T> y1,
                                                               Stages<T> s, T rtol, T atol,
                                                               global_ptr<double> partial, int64_t n) {
  T d[NK];
#pragma unroll
  for (int j = 0; j < NK; ++j) d[j] = s.d[j];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T kv[NK];
#pragma unroll
    for (int j = 0; j < NK; ++j) kv[j] = __ldg(s.k[j] + i);
    acc += error_ratio_sq<T, double>(y0[i], y1[i], weighted_sum<T, NK>(kv, d), rtol, atol);
  }
  store_block_sum(acc, partial);
}

__global__ void finalize_kernel(global_ptr<const double> partial, int nblocks, int64_t n,
                                global_ptr<double> result) {
  ODEKERN_SHARED_ARRAY(double, sums, kThreads);
  double acc = 0.0;
  for (int b = threadIdx.x; b < nblocks; b += blockDim.x) acc += partial[b];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) sums[threadIdx.x] += sums[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) result[0] = sqrt(sums[0] / static_cast<double>(n));
}

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

template <typename T>
Stages<T> pack(const void* const* ks, const double* c, const double* d, int nk) {
  Stages<T> s{};
  for (int j = 0; j < nk; ++j) {
    s.k[j] = static_cast<const T*>(ks[j]);
    s.c[j] = c ? static_cast<T>(c[j]) : T(0);
    s.d[j] = d ? static_cast<T>(d[j]) : T(0);
  }
  return s;
}

// The runtime stage count as a compile-time one: one kernel instance per count in [1, kMaxK].
template <int NK = 1, class Fn>
void dispatch_nk(int nk, Fn&& fn) {
  if constexpr (NK <= kMaxK) {
    if (nk == NK) {
      fn(std::integral_constant<int, NK>{});
    } else {
      dispatch_nk<NK + 1>(nk, fn);
    }
  } else {
    throw std::out_of_range("rk_stage: the number of stages must be in [1, kMaxK]");
  }
}

template <typename T, bool BASE>
void combine_switch(const T* yp, const Stages<T>& s, int nk, T* op, int64_t n,
                    cudaStream_t stream) {
  const dim3 grid(blocks_for(n)), block(kThreads);
  dispatch_nk(nk, [&](auto count) {
    launch_kernel<combine_kernel<T, decltype(count)::value, BASE>>(grid, block, 0, stream, yp, s, op, n);
  });
}

template <typename T>
void combine_typed(const void* y, const void* const* ks, const double* c, int nk, void* out,
                   int64_t n, cudaStream_t stream) {
  const Stages<T> s = pack<T>(ks, c, nullptr, nk);
  const T* yp = static_cast<const T*>(y);
  T* op = static_cast<T*>(out);
  if (yp != nullptr) {
    combine_switch<T, true>(yp, s, nk, op, n, stream);
  } else {
    combine_switch<T, false>(yp, s, nk, op, n, stream);
  }
}

template <typename T>
void error_ratio_typed(const void* y0, const void* y1, const void* const* ks, const double* d,
                       int nk, double rtol, double atol, double* partial, double* result,
                       int64_t n, cudaStream_t stream) {
  const Stages<T> s = pack<T>(ks, nullptr, d, nk);
  const T* a = static_cast<const T*>(y0);
  const T* b = static_cast<const T*>(y1);
  const T rt = static_cast<T>(rtol), at = static_cast<T>(atol);
  const int nblocks = blocks_for(n);
  const dim3 grid(nblocks), block(kThreads);
  dispatch_nk(nk, [&](auto count) {
    launch_kernel<error_ratio_kernel<T, decltype(count)::value>>(grid, block, 0, stream, a, b, s, rt, at, partial, n);
  });
  launch_kernel<finalize_kernel>(1, kThreads, 0, stream, partial, nblocks, n, result);
}

}  // namespace

// Launchers (declared in rk_stage_cuda.cpp). nk in [1, kMaxK]; is_double selects float64;
// y == nullptr in rk_combine_cuda_launch drops the base term.
int rk_error_ratio_cuda_partials(int64_t n) { return blocks_for(n); }

void rk_combine_cuda_launch(bool is_double, const void* y, const void* const* ks,
                            const double* coeffs, int nk, void* out, int64_t n,
                            cudaStream_t stream) {
  if (is_double) {
    combine_typed<double>(y, ks, coeffs, nk, out, n, stream);
  } else {
    combine_typed<float>(y, ks, coeffs, nk, out, n, stream);
  }
}

void rk_error_ratio_cuda_launch(bool is_double, const void* y0, const void* y1,
                                const void* const* ks, const double* err_coeffs, int nk,
                                double rtol, double atol, double* partial, double* result,
                                int64_t n, cudaStream_t stream) {
  if (is_double) {
    error_ratio_typed<double>(y0, y1, ks, err_coeffs, nk, rtol, atol, partial, result, n, stream);
  } else {
    error_ratio_typed<float>(y0, y1, ks, err_coeffs, nk, rtol, atol, partial, result, n, stream);
  }
}

}  // namespace rk_stage
}  // namespace odekern
