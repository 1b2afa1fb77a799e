// Continuous adjoint backward of nmode_solve on CPU: tasks of consecutive elements, each
// refilling its lanes as elements finish (the block loops are nmode_solve_cpu_adjoint.h).
#include <algorithm>
#include <vector>

#include "ops/nmode_solve/nmode_solve_cpu_adjoint.h"
#include "ops/nmode_solve/nmode_solve_cpu_parallel.h"
#include "ops/nmode_solve/nmode_solve_cpu_paths.h"
#include "ops/nmode_solve/nmode_solve_host.h"

namespace odekern {
namespace nmode {
namespace cpu {

template <typename T>
void adjoint_backward(const T* y0, const T* y1, const T* g, int64_t N, int64_t G, const T* gy1, const T* gf0,
                      const T* gf1, int method, double t0, double t1, double step_size, double rtol, double atol,
                      int64_t max_steps, T* gy0, T* gfull) {
  std::vector<double> adj_dts;
  if (method != kDopri5) {
    adj_dts.resize(static_cast<size_t>(fixed_grid(0.0, t1 - t0, step_size, nullptr)));
    fixed_grid(0.0, t1 - t0, step_size, adj_dts.data());
  }
  const int64_t per_task = refill_task_size(N, kBlock, 64);
  const int64_t tasks = (N + per_task - 1) / per_task;
  int worst = kOk;
  dispatch_method(method, [&](auto M_) {
    constexpr int M = decltype(M_)::value;
    const AdjointTask<T> task{y0, y1, g, G, gy1, gf0, gf1, gy0, gfull, t1 - t0, rtol, atol, max_steps,
                              adj_dts.data(), int64_t(adj_dts.size())};
    worst = parallel_worst_status(tasks, [&](int64_t t) {
      return adjoint_backward_task<T, M>(task, t * per_task, std::min(N, (t + 1) * per_task));
    });
  });
  check_status(worst, max_steps);
}

template void adjoint_backward<float>(const float*, const float*, const float*, int64_t, int64_t, const float*,
                                      const float*, const float*, int, double, double, double, double, double,
                                      int64_t, float*, float*);
template void adjoint_backward<double>(const double*, const double*, const double*, int64_t, int64_t,
                                       const double*, const double*, const double*, int, double, double, double,
                                       double, double, int64_t, double*, double*);

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
