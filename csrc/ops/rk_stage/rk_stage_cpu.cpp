// CPU kernels of the rk_stage op family: checks, chunked at::parallel_for, vectorised loops.
//
// The hot loops are non-template functions compiled once per ISA (ODEKERN_ISA_CLONES); the
// templated per-NK loop bodies are force-inlined into them, so each clone gets an unrolled,
// auto-vectorised loop for its own vector width. Reductions run over fixed-size blocks whose
// partial sums are added in block order afterwards: the result does not depend on the number
// of threads. No __restrict__: out may legitimately be y (in-place update); `omp simd` tells
// the compiler the element-wise loop is safe to vectorise anyway.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "rk_stage.h"
#include "rk_stage_host.h"

namespace odekern {
namespace rk_stage {
namespace {

template <typename T, int NK>
struct Loaded {
  const T* k[NK];
  T c[NK];
  T d[NK];
  ODEKERN_ALWAYS_INLINE Loaded(const T* const* kp, const T* c_in, const T* d_in) {
    for (int j = 0; j < NK; ++j) {
      k[j] = kp[j];
      c[j] = c_in ? c_in[j] : T(0);
      d[j] = d_in ? d_in[j] : T(0);
    }
  }
};

// y == nullptr: out = sum_j c_j k_j.
template <typename T, int NK>
ODEKERN_ALWAYS_INLINE void combine_loop(const T* y, const T* const* kp, const T* c_in, T* out,
                                 int64_t n) {
  const Loaded<T, NK> s(kp, c_in, nullptr);
  if (y != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T kv[NK];
      for (int j = 0; j < NK; ++j) kv[j] = s.k[j][i];
      out[i] = combine<T, NK>(y[i], kv, s.c);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T kv[NK];
      for (int j = 0; j < NK; ++j) kv[j] = s.k[j][i];
      out[i] = weighted_sum<T, NK>(kv, s.c);
    }
  }
}

template <typename T, int NK>
ODEKERN_ALWAYS_INLINE double error_ratio_loop(const T* y0, const T* y1, const T* const* kp,
                                       const T* d_in, T rtol, T atol, int64_t n) {
  const Loaded<T, NK> s(kp, nullptr, d_in);
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) {
    T kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = s.k[j][i];
    acc += error_ratio_sq<T, double>(y0[i], y1[i], weighted_sum<T, NK>(kv, s.d), rtol, atol);
  }
  return acc;
}

// nk in [1, kMaxK] selects the unrolled instantiation.
static_assert(kMaxK == 13, "ODEKERN_NK_SWITCH must have one case per stage count up to kMaxK");
#define ODEKERN_NK_SWITCH(CALL)   \
  switch (nk) {                   \
    case 1: return CALL(1);       \
    case 2: return CALL(2);       \
    case 3: return CALL(3);       \
    case 4: return CALL(4);       \
    case 5: return CALL(5);       \
    case 6: return CALL(6);       \
    case 7: return CALL(7);       \
    case 8: return CALL(8);       \
    case 9: return CALL(9);       \
    case 10: return CALL(10);     \
    case 11: return CALL(11);     \
    case 12: return CALL(12);     \
    default: return CALL(13);     \
  }

// Written out per dtype (target_clones functions cannot be templates).
ODEKERN_ISA_CLONES void combine_f32(const float* y, const float* const* k, const float* c, int nk,
                                    float* out, int64_t n) {
#define CALL(NK) combine_loop<float, NK>(y, k, c, out, n)
  ODEKERN_NK_SWITCH(CALL)
#undef CALL
}
ODEKERN_ISA_CLONES void combine_f64(const double* y, const double* const* k, const double* c,
                                    int nk, double* out, int64_t n) {
#define CALL(NK) combine_loop<double, NK>(y, k, c, out, n)
  ODEKERN_NK_SWITCH(CALL)
#undef CALL
}
ODEKERN_ISA_CLONES double error_ratio_f32(const float* y0, const float* y1, const float* const* k,
                                          const float* d, int nk, float rtol, float atol,
                                          int64_t n) {
#define CALL(NK) error_ratio_loop<float, NK>(y0, y1, k, d, rtol, atol, n)
  ODEKERN_NK_SWITCH(CALL)
#undef CALL
}
ODEKERN_ISA_CLONES double error_ratio_f64(const double* y0, const double* y1,
                                          const double* const* k, const double* d, int nk,
                                          double rtol, double atol, int64_t n) {
#define CALL(NK) error_ratio_loop<double, NK>(y0, y1, k, d, rtol, atol, n)
  ODEKERN_NK_SWITCH(CALL)
#undef CALL
}

// Overloads so the typed drivers below read the same for both dtypes.
inline void combine_chunk(const float* y, const float* const* k, const float* c, int nk, float* o,
                          int64_t n) {
  combine_f32(y, k, c, nk, o, n);
}
inline void combine_chunk(const double* y, const double* const* k, const double* c, int nk,
                          double* o, int64_t n) {
  combine_f64(y, k, c, nk, o, n);
}
inline double error_ratio_chunk(const float* y0, const float* y1, const float* const* k,
                                const float* d, int nk, float rtol, float atol, int64_t n) {
  return error_ratio_f32(y0, y1, k, d, nk, rtol, atol, n);
}
inline double error_ratio_chunk(const double* y0, const double* y1, const double* const* k,
                                const double* d, int nk, double rtol, double atol, int64_t n) {
  return error_ratio_f64(y0, y1, k, d, nk, rtol, atol, n);
}

void check_like(const at::Tensor& t, const at::Tensor& like, const char* what, int64_t index = -1) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type() &&
                  t.sizes() == like.sizes(),
              "rk_stage: ", what, index >= 0 ? "[" + std::to_string(index) + "]" : std::string(),
              " must be a contiguous CPU tensor with shape ", like.sizes(), " and dtype ",
              like.scalar_type());
}

void check_stages(const at::Tensor& like, at::TensorList ks, size_t ncoeffs, bool bounded) {
  ODEKERN_CHECK_CPU(like);
  ODEKERN_CHECK_FLOATING(like);
  TORCH_CHECK(ks.size() == ncoeffs, "rk_stage: got ", ks.size(), " k tensors but ", ncoeffs,
              " coefficients");
  TORCH_CHECK(!bounded || (ks.size() >= 1 && ks.size() <= static_cast<size_t>(kMaxK)),
              "rk_stage: the error pass needs 1..", kMaxK, " k tensors, got ", ks.size());
  for (size_t j = 0; j < ks.size(); ++j) check_like(ks[j], like, "ks", static_cast<int64_t>(j));
}

// Chunks of at most kMaxK k's: the first chunk reads y (or nothing), later ones accumulate into
// out.
template <typename T>
void combine_impl(const T* y, at::TensorList ks, at::ArrayRef<double> coeffs, T* out, int64_t n) {
  const T* src = y;
  for (size_t start = 0; start < ks.size(); start += kMaxK) {
    const int nk = static_cast<int>(std::min<size_t>(kMaxK, ks.size() - start));
    const T* kp[kMaxK];
    T c[kMaxK];
    for (int j = 0; j < nk; ++j) {
      kp[j] = ks[start + j].data_ptr<T>();
      c[j] = static_cast<T>(coeffs[start + j]);
    }
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t b, int64_t e) {
      const T* kb[kMaxK];
      for (int j = 0; j < nk; ++j) kb[j] = kp[j] + b;
      combine_chunk(src ? src + b : nullptr, kb, c, nk, out + b, e - b);
    });
    src = out;
  }
}

void rk_combine_out_cpu(const std::optional<at::Tensor>& y, at::TensorList ks,
                        at::ArrayRef<double> coeffs, const at::Tensor& out) {
  check_stages(out, ks, coeffs.size(), false);
  if (y.has_value()) check_like(*y, out, "y");
  TORCH_CHECK(out.is_contiguous(), "rk_stage: out must be contiguous");
  const int64_t n = out.numel();
  if (n == 0) return;
  if (combine_without_stages(y, ks, out)) return;
  if (out.scalar_type() == at::kFloat) {
    combine_impl<float>(y ? y->data_ptr<float>() : nullptr, ks, coeffs, out.data_ptr<float>(), n);
  } else {
    combine_impl<double>(y ? y->data_ptr<double>() : nullptr, ks, coeffs, out.data_ptr<double>(),
                         n);
  }
}

constexpr int64_t kReduceBlock = 1 << 15;

// Sum over fixed blocks of block_sum(b, e), in block order.
template <typename F>
double blocked_sum(int64_t n, const F& block_sum) {
  const int64_t nblocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> partial(nblocks, 0.0);
  at::parallel_for(0, nblocks, 1, [&](int64_t bb, int64_t be) {
    for (int64_t blk = bb; blk < be; ++blk) {
      const int64_t b = blk * kReduceBlock;
      partial[blk] = block_sum(b, std::min(n, b + kReduceBlock));
    }
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  return sum;
}

template <typename T>
struct Coeffs {
  const T* k[kMaxK];
  T c[kMaxK];
  T d[kMaxK];
  int nk;
  Coeffs(at::TensorList ks, at::ArrayRef<double> c_in, at::ArrayRef<double> d_in)
      : nk(static_cast<int>(ks.size())) {
    for (int j = 0; j < nk; ++j) {
      k[j] = ks[j].data_ptr<T>();
      c[j] = c_in.empty() ? T(0) : static_cast<T>(c_in[j]);
      d[j] = static_cast<T>(d_in[j]);
    }
  }
  void offset(const T** kb, int64_t b) const {
    for (int j = 0; j < nk; ++j) kb[j] = k[j] + b;
  }
};

template <typename T>
double error_ratio_impl(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                        at::ArrayRef<double> err_coeffs, double rtol, double atol) {
  const Coeffs<T> s(ks, {}, err_coeffs);
  const T* a = y0.data_ptr<T>();
  const T* b1 = y1.data_ptr<T>();
  return blocked_sum(y0.numel(), [&](int64_t b, int64_t e) {
    const T* kb[kMaxK];
    s.offset(kb, b);
    return error_ratio_chunk(a + b, b1 + b, kb, s.d, s.nk, static_cast<T>(rtol),
                             static_cast<T>(atol), e - b);
  });
}

at::Tensor rms_result(const at::Tensor& like, double sum_sq) {
  auto result = at::zeros({}, like.options().dtype(at::kDouble));
  if (like.numel() > 0) result.fill_(std::sqrt(sum_sq / static_cast<double>(like.numel())));
  return result;
}

at::Tensor rk_error_ratio_cpu(const at::Tensor& y0, const at::Tensor& y1, at::TensorList ks,
                              at::ArrayRef<double> err_coeffs, double rtol, double atol) {
  check_stages(y0, ks, err_coeffs.size(), true);
  check_like(y0, y0, "y0");
  check_like(y1, y0, "y1");
  if (y0.numel() == 0) return rms_result(y0, 0.0);
  const double sum = y0.scalar_type() == at::kFloat
                         ? error_ratio_impl<float>(y0, y1, ks, err_coeffs, rtol, atol)
                         : error_ratio_impl<double>(y0, y1, ks, err_coeffs, rtol, atol);
  return rms_result(y0, sum);
}

}  // namespace
}  // namespace rk_stage
}  // namespace odekern

TORCH_LIBRARY_IMPL(odekern_C, CPU, m) {
  m.impl("rk_combine_out", &odekern::rk_stage::rk_combine_out_cpu);
  m.impl("rk_error_ratio", &odekern::rk_stage::rk_error_ratio_cpu);
}
