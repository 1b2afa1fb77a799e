// Host-side helpers shared by the CPU translation units of nmode_solve (nmode_solve_cpu*.cpp):
// the block partition of the elements, the dynamic task loop over at::parallel_for, and the
// method dispatch with its step weights. Kept out of the kernel headers, which stay torch-free.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "ops/nmode_solve/nmode_solve.h"
#include "ops/nmode_solve/nmode_solve_cpu_kernels.h"

namespace odekern {
namespace nmode {
namespace cpu {

// A block never straddles two repeats of g: task -> (repeat r, chunk c) -> elements
// [r*G + c*kBlock, ... + len).
struct Blocking {
  int64_t N, G, R, chunks;
  explicit Blocking(int64_t n, int64_t g) : N(n), G(g), R(g > 0 ? n / g : 0), chunks((g + kBlock - 1) / kBlock) {}
  int64_t tasks() const { return R * chunks; }
  int64_t offset(int64_t task) const { return (task / chunks) * G + (task % chunks) * kBlock; }
  int64_t goffset(int64_t task) const { return (task % chunks) * kBlock; }
  int64_t len(int64_t task) const { return std::min(kBlock, G - (task % chunks) * kBlock); }
};

// Runs fn(t) for every task t in [0, tasks) on all threads, each thread taking the next
// batch of tasks from a shared counter. at::parallel_for alone splits the range into one
// static chunk per thread; on a shared machine one descheduled thread then holds up the whole
// op, while here the others take over its remaining blocks. A batch is several blocks (a few
// microseconds of work) so the shared counter's cache line is not bounced between cores on
// every 64-element block, and per-task outputs written by one thread are mostly contiguous.
// Tasks are independent (disjoint outputs).
template <class Fn>
void parallel_tasks(int64_t tasks, Fn fn) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), tasks);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  // At least ~16 batches per thread keep the tail short when a thread is descheduled.
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(16, tasks / (16 * threads)));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(batch, std::memory_order_relaxed); b < tasks;
         b = next.fetch_add(batch, std::memory_order_relaxed)) {
      const int64_t e = std::min(b + batch, tasks);
      for (int64_t t = b; t < e; ++t) fn(t);
    }
  });
}

// Elements per task for a task loop whose tasks refill their lanes from their own elements
// (per-element control's forward, the continuous adjoint): long tasks keep the lanes busy (up
// to max_units blocks of `unit` elements), and a small state is still cut into about 8 tasks
// per thread (at least 4 blocks each) so that the threads share it.
inline int64_t refill_task_size(int64_t n, int64_t unit, int64_t max_units) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want = (n / (8 * threads) + unit - 1) / unit * unit;
  return std::clamp(want, 4 * unit, max_units * unit);
}

// Deterministic parallel sum over tasks: per-task partials, summed in task order.
template <class Fn>
double parallel_task_sum(int64_t tasks, Fn fn) {
  std::vector<double> part(static_cast<size_t>(tasks), 0.0);
  parallel_tasks(tasks, [&](int64_t t) { part[t] = fn(t); });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

// Worst (largest) Status over tasks run by parallel_tasks: fn(t) returns task t's status.
template <class Fn>
int parallel_worst_status(int64_t tasks, Fn fn) {
  std::atomic<int> worst{kOk};
  parallel_tasks(tasks, [&](int64_t t) {
    const int bad = fn(t);
    int cur = worst.load();
    while (bad > cur && !worst.compare_exchange_weak(cur, bad)) {
    }
  });
  return worst.load();
}

// fn(M, w, wl) for the method as a compile-time constant M (std::integral_constant) with its
// step weights: w for full steps, wl for the last step (dopri5's dense output at theta).
template <typename T, class Fn>
void with_step_weights(int method, double theta, Fn&& fn) {
  dispatch_method(method, [&](auto M_) {
    constexpr int M = decltype(M_)::value;
    T w[Tableau<M>::S], wl[Tableau<M>::S];
    step_weights<T, M>(1.0, w);
    step_weights<T, M>(theta, wl);
    fn(M_, w, wl);
  });
}

}  // namespace cpu
}  // namespace nmode
}  // namespace odekern
