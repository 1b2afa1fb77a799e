// CPU backend of odekern_C::nmode_solve_{fwd,bwd}: checks, allocation and dispatch, and the
// fixed-grid and global-control paths. The math is csrc/ops/nmode_solve/nmode_solve.h.
//
// Vectorisation: elements are processed in blocks of kBlock held in local arrays; steps are
// the outer loop and elements the inner `#pragma omp simd` loop, so the polynomial sincos of
// the header vectorises across elements. Hot loops are ODEKERN_ISA_CLONES (AVX-512 / AVX2 /
// baseline picked at load time).
//
// Paths: fixed-grid and global-control (shared dt sequence) forward and exact backward are
// block-vectorised here (nmode_solve_cpu_kernels.h); the continuous adjoint
// (nmode_solve_cpu_adjoint.cpp: lanes with their own adaptive steps, refilled as elements
// finish) and per-element control (nmode_solve_cpu_per_element.cpp: lanes with their own
// controller, masked) are their own translation units (nmode_solve_cpu_paths.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_kernels.h"
#include "ops/nmode_solve/nmode_solve_cpu_parallel.h"
#include "ops/nmode_solve/nmode_solve_cpu_paths.h"
#include "ops/nmode_solve/nmode_solve_global_control.h"
#include "ops/nmode_solve/nmode_solve_host.h"

namespace odekern {
namespace nmode {
namespace {

using namespace cpu;  // NOLINT: the block loops and the other CPU paths

// ------------------------------------------------------------------------------------------
// Dispatch helpers.
// ------------------------------------------------------------------------------------------

void check_inputs(const at::Tensor& y0, const at::Tensor& g) {
  ODEKERN_CHECK_CPU(y0);
  ODEKERN_CHECK_CPU(g);
  ODEKERN_CHECK_FLOATING(y0);
  TORCH_CHECK(g.scalar_type() == y0.scalar_type(), "g must have y0's dtype ", y0.scalar_type(),
              ", got ", g.scalar_type());
  TORCH_CHECK(y0.dim() == 1 && g.dim() == 1, "y0 and g must be 1-D (flattened) at this level");
  TORCH_CHECK((g.numel() == 0 && y0.numel() == 0) || (g.numel() > 0 && y0.numel() % g.numel() == 0),
              "y0.numel() must be a multiple of g.numel() (leading broadcast), got ", y0.numel(),
              " and ", g.numel());
}

at::Tensor make_stats(int64_t n_acc, int64_t n_rej, double theta, const std::vector<double>& dts) {
  auto stats = at::empty({3 + static_cast<int64_t>(dts.size())}, at::TensorOptions().dtype(at::kDouble));
  double* p = stats.data_ptr<double>();
  p[0] = double(n_acc);
  p[1] = double(n_rej);
  p[2] = theta;
  std::copy(dts.begin(), dts.end(), p + 3);
  return stats;
}

// ------------------------------------------------------------------------------------------
// Forward.
// ------------------------------------------------------------------------------------------
// Scratch memory of global_forward, kept per calling thread between calls. Allocating it per
// call made every call page-fault on ~4 N fresh elements (glibc returns large blocks to the
// kernel on free): ~15% of a single-threaded CNM solve, and worse with 2 threads, which
// contend on the page-fault path. Bounded: requests above kMaxCachedScratchBytes get memory
// for that call only (so a one-off huge solve does not pin its scratch for the thread's life);
// a smaller request reuses (or grows) the thread's one cached block.
constexpr size_t kMaxCachedScratchBytes = size_t(64) << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using ScratchPtr = std::unique_ptr<void, FreeDeleter>;

ScratchPtr aligned_scratch(size_t bytes) {
  void* p = nullptr;
  TORCH_CHECK(posix_memalign(&p, 64, std::max<size_t>(bytes, 64)) == 0,
              "nmode_solve: could not allocate ", bytes, " bytes of scratch");
  return ScratchPtr(p);
}

// Returns `bytes` of 64-byte aligned scratch, valid until the next call on this thread (or
// until `owned` dies, for oversized requests).
void* thread_scratch(size_t bytes, ScratchPtr& owned) {
  if (bytes > kMaxCachedScratchBytes) {
    owned = aligned_scratch(bytes);
    return owned.get();
  }
  thread_local ScratchPtr cached;
  thread_local size_t cached_bytes = 0;
  if (bytes > cached_bytes) {
    cached.reset();
    cached = aligned_scratch(bytes);
    cached_bytes = bytes;
  }
  return cached.get();
}

// The passes global_dopri5 (nmode_solve_global_control.h) makes over the elements, as block
// loops run on the thread pool.
// Work buffers (every element is written before it is read): two for candidate states, two
// for FSAL stages, padded to whole cache lines so no two share one. The current state starts
// as y0 itself and f(y0) goes straight into the f0 output when it is asked for; candidates
// always go to a scratch buffer other than the current one (y0 and f0 are never overwritten).
// Finishing attempts write only the outputs (their candidate is not needed: accepted means
// done, rejected means discarded).
template <typename T>
struct CpuGlobalPasses {
  const T* g;
  const Blocking& B;
  T rtol, atol;
  T *ya, *yb, *fa, *fb;
  T *y1, *f1;
  const T* ycur;
  T* fcur;
  T *ynew = nullptr, *fnew = nullptr;

  std::string initial_norm_sums(double* s0, double* s1) {
    std::vector<double> p0(B.tasks()), p1(B.tasks());
    parallel_tasks(B.tasks(), [&](int64_t t) {
      const int64_t o = B.offset(t);
      initial_norms_block<T>(ycur + o, g + B.goffset(t), B.len(t), rtol, atol, fcur + o, &p0[t], &p1[t]);
    });
    for (int64_t t = 0; t < B.tasks(); ++t) {
      *s0 += p0[t];
      *s1 += p1[t];
    }
    return {};
  }
  std::string initial_d2_sum(double h0, double* s2) {
    *s2 = parallel_task_sum(B.tasks(), [&](int64_t t) {
      const int64_t o = B.offset(t);
      return initial_d2_block<T>(ycur + o, fcur + o, g + B.goffset(t), B.len(t), T(h0), rtol, atol);
    });
    return {};
  }
  std::string attempt(double dt, bool finishing, double theta, double* ssum) {
    T wl[7];
    step_weights<T, kDopri5>(theta, wl);
    ynew = (ycur == ya) ? yb : ya;
    fnew = (fcur == fa) ? fb : fa;
    *ssum = parallel_task_sum(B.tasks(), [&](int64_t tk) {
      const int64_t o = B.offset(tk);
      return global_attempt_block<T>(ycur + o, fcur + o, g + B.goffset(tk), B.len(tk), T(dt), finishing, wl,
                                     rtol, atol, ynew + o, fnew + o, y1 + o, f1 != nullptr ? f1 + o : nullptr);
    });
    return {};
  }
  void accept() {
    ycur = ynew;
    fcur = fnew;
  }
};

template <typename T>
GlobalControlResult global_forward(const T* y0, const T* g, const Blocking& B, double t0, double t1,
                                   double rtol, double atol, int64_t max_steps, T* y1, T* f0, T* f1) {
  const int64_t stride = (B.N + 15) / 16 * 16;
  ScratchPtr owned;
  T* scratch = static_cast<T*>(thread_scratch(sizeof(T) * 4 * size_t(stride), owned));
  T* fa = scratch + 2 * stride;
  CpuGlobalPasses<T> passes{g, B, T(rtol), T(atol), scratch, scratch + stride, fa, scratch + 3 * stride,
                            y1, f1, y0, f0 != nullptr ? f0 : fa};
  GlobalControlResult result;
  const std::string err = global_dopri5(passes, B.N, t0, t1, max_steps, &result);
  TORCH_CHECK(err.empty(), err);
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nmode_solve_fwd_cpu(
    const at::Tensor& y0_, const at::Tensor& g_, double t0, double t1, c10::string_view method_name,
    double step_size, double rtol, double atol, c10::string_view control, int64_t max_num_steps,
    bool need_f) {
  check_inputs(y0_, g_);
  const int method = parse_method(std::string(method_name));
  const bool global = std::string(control) == "global";
  TORCH_CHECK(t1 > t0, "nmode_solve: t1 must be greater than t0, got t0=", t0, ", t1=", t1);
  const at::Tensor y0 = y0_.contiguous(), g = g_.contiguous();
  const int64_t N = y0.numel(), G = g.numel();
  at::Tensor y1 = at::empty_like(y0);
  at::Tensor f0 = need_f ? at::empty_like(y0) : at::empty({0}, y0.options());
  at::Tensor f1 = need_f ? at::empty_like(y0) : at::empty({0}, y0.options());
  std::vector<double> dts;
  int64_t n_rej = 0;
  double theta = 1.0;
  if (method != kDopri5) {
    TORCH_CHECK(step_size > 0, "nmode_solve: step_size must be > 0 for fixed-step methods");
    dts.resize(static_cast<size_t>(fixed_grid(t0, t1, step_size, nullptr)));
    TORCH_CHECK(static_cast<int64_t>(dts.size()) <= max_num_steps,
                fixed_grid_too_many_steps(step_size, t0, t1, double(dts.size()), max_num_steps));
    fixed_grid(t0, t1, step_size, dts.data());
  }
  if (N == 0) return {y1, f0, f1, make_stats(int64_t(dts.size()), 0, 1.0, dts)};
  const Blocking B(N, G);
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "nmode_solve_fwd_cpu", [&] {
    const scalar_t* py0 = y0.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* py1 = y1.data_ptr<scalar_t>();
    scalar_t* pf0 = need_f ? f0.data_ptr<scalar_t>() : nullptr;
    scalar_t* pf1 = need_f ? f1.data_ptr<scalar_t>() : nullptr;
    // Every path refuses a non-finite y1 (non-finite inputs, or an explicit method unstable at
    // its step size overflowing), so callers need no pass of their own over the output.
    double probe = 0.0;
    if (method != kDopri5) {
      with_step_weights<scalar_t>(method, 1.0, [&](auto M_, const scalar_t* w, const scalar_t*) {
        constexpr int M = decltype(M_)::value;
        probe = parallel_task_sum(B.tasks(), [&](int64_t t) {
          const int64_t o = B.offset(t);
          return double(list_forward_block<scalar_t, M>(py0 + o, pg + B.goffset(t), B.len(t), dts.data(),
                                                        int64_t(dts.size()), w, w, py1 + o,
                                                        pf0 ? pf0 + o : nullptr, pf1 ? pf1 + o : nullptr));
        });
      });
    } else if (global) {
      // The finishing attempt's error sum carries y1's probe: it raises inside on a NaN sum.
      GlobalControlResult result = global_forward<scalar_t>(py0, pg, B, t0, t1, rtol, atol, max_num_steps,
                                                            py1, pf0, pf1);
      dts = std::move(result.dts);
      n_rej = result.n_rejected;
      theta = result.theta;
    } else {
      per_element_forward<scalar_t>(py0, pg, N, G, t0, t1, rtol, atol, max_num_steps, py1, pf0, pf1);
      probe = parallel_task_sum(B.tasks(), [&](int64_t t) {
        return double(nonfinite_probe_block<scalar_t>(py1 + B.offset(t), B.len(t)));
      });
    }
    TORCH_CHECK(probe == 0.0, non_finite_y1());
  });
  const int64_t n_acc = (method == kDopri5 && !global) ? 0 : int64_t(dts.size());
  if (method == kDopri5 && !global) dts.clear();
  return {y1, f0, f1, make_stats(n_acc, n_rej, theta, dts)};
}

// ------------------------------------------------------------------------------------------
// Backward.
// ------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> nmode_solve_bwd_cpu(
    const at::Tensor& grad_y1_, const c10::optional<at::Tensor>& grad_f0_,
    const c10::optional<at::Tensor>& grad_f1_, const at::Tensor& y0_, const at::Tensor& g_,
    const c10::optional<at::Tensor>& y1_, const at::Tensor& stats_, double t0, double t1,
    c10::string_view method_name, double step_size, double rtol, double atol, c10::string_view control,
    c10::string_view gradient, int64_t max_num_steps) {
  check_inputs(y0_, g_);
  const int method = parse_method(std::string(method_name));
  const bool global = std::string(control) == "global";
  const bool adjoint = std::string(gradient) == "adjoint";
  const at::Tensor y1 = adjoint_start(y1_, y0_, adjoint);
  const at::Tensor y0 = y0_.contiguous(), g = g_.contiguous();
  const at::Tensor gy1 = grad_y1_.contiguous();
  const bool has_gf0 = grad_f0_.has_value() && grad_f0_->defined() && grad_f0_->numel() > 0;
  const bool has_gf1 = grad_f1_.has_value() && grad_f1_->defined() && grad_f1_->numel() > 0;
  const at::Tensor gf0 = has_gf0 ? grad_f0_->contiguous() : at::Tensor();
  const at::Tensor gf1 = has_gf1 ? grad_f1_->contiguous() : at::Tensor();
  TORCH_CHECK(gy1.sizes() == y0.sizes(), "grad_y1 must have y0's shape");
  const int64_t N = y0.numel(), G = g.numel();
  at::Tensor gy0 = at::empty_like(y0);
  at::Tensor gg = at::zeros_like(g);
  if (N == 0) return {gy0, gg};
  const at::Tensor stats = stats_.to(at::kDouble).contiguous();
  const double* sp = stats.data_ptr<double>();
  const int64_t n_list = static_cast<int64_t>(sp[0]);
  const double theta = sp[2];
  const double* dts = sp + 3;
  const bool list_mode = method != kDopri5 || global;
  const Blocking B(N, G);
  AT_DISPATCH_FLOATING_TYPES(y0.scalar_type(), "nmode_solve_bwd_cpu", [&] {
    const scalar_t* py0 = y0.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    const scalar_t* pgy1 = gy1.data_ptr<scalar_t>();
    const scalar_t* pgf0 = has_gf0 ? gf0.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pgf1 = has_gf1 ? gf1.data_ptr<scalar_t>() : nullptr;
    scalar_t* pgy0 = gy0.data_ptr<scalar_t>();
    if (list_mode && !adjoint) {
      // Vectorised exact backward. grad_g: chunks of g in parallel, repeats inside (no races)
      // when there are enough chunks; else per-element grad_g summed over repeats afterwards.
      const bool by_chunk = B.chunks >= 2 * at::get_num_threads() || B.R == 1;
      at::Tensor gfull = by_chunk ? at::Tensor() : at::empty_like(y0);
      scalar_t* pgg = by_chunk ? gg.data_ptr<scalar_t>() : gfull.data_ptr<scalar_t>();
      with_step_weights<scalar_t>(method, theta, [&](auto M_, const scalar_t* w, const scalar_t* wl) {
        constexpr int M = decltype(M_)::value;
        auto run = [&](int64_t t, bool acc) {
          const int64_t o = B.offset(t);
          list_backward_block<scalar_t, M>(py0 + o, pg + B.goffset(t), B.len(t), dts, n_list, w, wl,
                                           pgy1 + o, pgf0 ? pgf0 + o : nullptr, pgf1 ? pgf1 + o : nullptr,
                                           pgy0 + o, by_chunk ? pgg + B.goffset(t) : pgg + o, acc);
        };
        if (by_chunk) {
          parallel_tasks(B.chunks, [&](int64_t c) {
            for (int64_t r = 0; r < B.R; ++r) run(r * B.chunks + c, r > 0);
          });
        } else {
          parallel_tasks(B.tasks(), [&](int64_t t) { run(t, false); });
        }
      });
      if (!by_chunk) gg.copy_(gfull.view({B.R, G}).sum(0));
      return;
    }
    at::Tensor gfull = at::empty_like(y0);
    if (adjoint) {
      adjoint_backward<scalar_t>(py0, y1.data_ptr<scalar_t>(), pg, N, G, pgy1, pgf0, pgf1, method, t0, t1,
                                 step_size, rtol, atol, max_num_steps, pgy0, gfull.data_ptr<scalar_t>());
    } else {
      per_element_backward<scalar_t>(py0, pg, N, G, t0, t1, rtol, atol, max_num_steps, pgy1, pgf0, pgf1,
                                     pgy0, gfull.data_ptr<scalar_t>());
    }
    gg.copy_(gfull.view({B.R, G}).sum(0));
  });
  return {gy0, gg};
}

}  // namespace
}  // namespace nmode
}  // namespace odekern

TORCH_LIBRARY_IMPL(odekern_C, CPU, m) {
  m.impl("nmode_solve_fwd", &odekern::nmode::nmode_solve_fwd_cpu);
  m.impl("nmode_solve_bwd", &odekern::nmode::nmode_solve_bwd_cpu);
}
