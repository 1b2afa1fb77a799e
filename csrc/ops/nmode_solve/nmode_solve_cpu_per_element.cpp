// dopri5 with per-element step control on CPU, forward and exact backward: lanes of
// cpu_pe::kLanes elements, each lane its own controller (nmode_solve_cpu_per_element.h); the
// forward refills lanes as elements finish, the exact backward runs fixed blocks.
#include <algorithm>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_parallel.h"
#include "ops/nmode_solve/nmode_solve_cpu_paths.h"
#include "ops/nmode_solve/nmode_solve_cpu_per_element.h"
#include "ops/nmode_solve/nmode_solve_host.h"

namespace odekern {
namespace nmode {
namespace cpu {

template <typename T>
void per_element_forward(const T* y0, const T* g, int64_t N, int64_t G, double t0, double t1,
                         double rtol, double atol, int64_t max_steps, T* y1, T* f0, T* f1) {
  const int64_t per_task = refill_task_size(N, cpu_pe::kLanes, 128);
  const int64_t tasks = (N + per_task - 1) / per_task;
  const int worst = parallel_worst_status(tasks, [&](int64_t t) {
    const int64_t o = t * per_task;
    return cpu_pe::forward_task<T>(y0 + o, g, o, G, std::min(per_task, N - o), t1 - t0, rtol, atol,
                                   double(max_steps), y1 + o, f0 ? f0 + o : nullptr, f1 ? f1 + o : nullptr);
  });
  check_status(worst, max_steps);
}

// A block whose lanes need more attempts than its fixed record holds runs the header's scalar
// pe_solve_vjp per element.
template <typename T>
void per_element_backward(const T* y0, const T* g, int64_t N, int64_t G, double t0, double t1,
                          double rtol, double atol, int64_t max_steps, const T* gy1, const T* gf0,
                          const T* gf1, T* gy0, T* gfull) {
  const int64_t blocks = (N + cpu_pe::kLanes - 1) / cpu_pe::kLanes;
  const int worst = parallel_worst_status(blocks, [&](int64_t b) {
    const int64_t o = b * cpu_pe::kLanes, len = std::min(cpu_pe::kLanes, N - o);
    int bad = cpu_pe::backward_block<T>(y0 + o, g, o, G, len, t1 - t0, rtol, atol, double(max_steps),
                                        gy1 + o, gf0 ? gf0 + o : nullptr, gf1 ? gf1 + o : nullptr,
                                        gy0 + o, gfull + o);
    if (bad < 0) {
      bad = kOk;
      const PerElementParams p{t1 - t0, rtol, atol, max_steps};
      for (int64_t i = o; i < o + len; ++i) {
        const T gi = g[i % G];
        T yb = gy1[i], gb = T(0), y1v = y0[i];
        bad = std::max(bad, pe_solve<T>(&y1v, gi, p));
        if (gf1) rhs_vjp(y1v, gi, gf1[i], &yb, &gb);
        bad = std::max(bad, pe_solve_vjp<T>(y0[i], gi, p, &yb, &gb));
        if (gf0) rhs_vjp(y0[i], gi, gf0[i], &yb, &gb);
        gy0[i] = yb;
        gfull[i] = gb;
      }
    }
    return bad;
  });
  check_status(worst, max_steps);
}

template void per_element_forward<float>(const float*, const float*, int64_t, int64_t, double, double, double,
                                         double, int64_t, float*, float*, float*);
template void per_element_forward<double>(const double*, const double*, int64_t, int64_t, double, double,
                                          double, double, int64_t, double*, double*, double*);
template void per_element_backward<float>(const float*, const float*, int64_t, int64_t, double, double, double,
                                          double, int64_t, const float*, const float*, const float*, float*,
                                          float*);
template void per_element_backward<double>(const double*, const double*, int64_t, int64_t, double, double,
                                           double, double, int64_t, const double*, const double*,
                                           const double*, double*, double*);

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
