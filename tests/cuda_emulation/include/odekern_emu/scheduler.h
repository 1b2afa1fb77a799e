// Execution of one kernel launch: blocks one after another, and within a block one fiber per
// CUDA thread, switched cooperatively at __syncthreads and at warp-synchronous primitives.
//
// A fiber runs until it reaches a barrier, a warp primitive, or its end. When no fiber can
// run, the scheduler completes a warp primitive whose warp has fully arrived, else a block
// barrier at which every thread of the block waits (same call site); anything else is a
// deadlock on a GPU (divergent __syncthreads, a thread that exited before the barrier) and is
// reported with the kernel's name instead of hanging. A fault (out-of-bounds access, race,
// deadlock) ends the launch: remaining threads and blocks do not run.
//
// Fibers switch with a few instructions of x86-64 assembly (glibc's swapcontext makes a system
// call per switch, ~1 us here, which would dominate launches of a million threads); other
// architectures use ucontext.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <source_location>
#include <string>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "runtime_api.h"

namespace odekern_emu {

constexpr int kWarpSize = 32;
constexpr size_t kFiberStack = 64 * 1024;
constexpr size_t kGuard = 4096;
constexpr size_t kStaticSharedLimit = 48 * 1024;

enum class State { runnable, at_barrier, at_warp, done };

struct Site {
  const char* file = "";
  unsigned line = 0;
  bool operator==(const Site& o) const { return line == o.line && std::string(file) == o.file; }
  std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};

inline Site site_of(const std::source_location& loc) { return {loc.file_name(), loc.line()}; }

struct Fiber {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  char* stack = nullptr;  // kFiberStack bytes above a PROT_NONE guard page
};

struct Thread {
  Fiber fiber;
  uint3 idx{0, 0, 0};
  int linear = 0;
  State state = State::runnable;
  Site site;
  // Warp primitive in progress: what the lane offers and what it receives.
  int warp_op = 0, warp_arg = 0, warp_width = kWarpSize;
  unsigned warp_mask = 0;
  uint64_t warp_in = 0, warp_out = 0;
};

struct SharedCell {
  uint64_t epoch = 0;
  int writer = -1;  // thread (linear id) that wrote it in this epoch, -1: none
  int reader = -1;  // thread that read it in this epoch, -1: none, -2: several
  bool written = false;
  int unwritten_reader = -1;  // a thread read it before any thread of the block wrote it
};

struct SharedBuffer {
  std::vector<unsigned char> bytes;
  std::vector<SharedCell> cells;  // one per byte offset (an element is tracked at its first byte)
  explicit SharedBuffer(size_t n) : bytes(n), cells(n) {}
};

struct Launch {
  std::string kernel;
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  size_t dynamic_smem = 0;
  std::function<void()> body;  // runs the kernel (with its parameters) for the current thread
  std::vector<Thread> threads;
  Thread* current = nullptr;
#if defined(__x86_64__)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  bool failed = false;
  uint64_t epoch = 0;  // barrier epoch (unique over all blocks of all launches)
  std::unordered_map<const void*, std::unique_ptr<SharedBuffer>> static_shared;
  size_t static_shared_bytes = 0;
  std::unique_ptr<SharedBuffer> dynamic_shared;
};

inline Launch*& active() {
  static Launch* l = nullptr;
  return l;
}

inline uint64_t next_epoch() {
  static uint64_t e = 0;
  return ++e;
}

inline std::string fmt3(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
}

// --------------------------------------------------------------------------- context switch
#if defined(__x86_64__)
// switch_stack(save, to): push the callee-saved registers, store the stack pointer in *save,
// load `to`, pop that fiber's registers and return into it (System V x86-64 ABI).
__attribute__((naked, noinline)) inline void switch_stack(void** /*save*/, void* /*to*/) {
  __asm__ volatile(
      "pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
      "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
      "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
#endif

inline void to_scheduler() {
  Launch& L = *active();
#if defined(__x86_64__)
  switch_stack(&L.current->fiber.sp, L.scheduler_sp);
#else
  swapcontext(&L.current->fiber.ctx, &L.scheduler_ctx);
#endif
}

[[noreturn]] inline void fiber_main() {
  Launch& L = *active();
  L.body();
  L.current->state = State::done;
  to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

inline void run_fiber(Thread& t) {
  Launch& L = *active();
  L.current = &t;
#if defined(__x86_64__)
  switch_stack(&L.scheduler_sp, t.fiber.sp);
#else
  swapcontext(&L.scheduler_ctx, &t.fiber.ctx);
#endif
  L.current = nullptr;
}

inline char* fiber_stack(size_t i) {
  static std::vector<char*> pool;
  while (pool.size() <= i) {
    void* m = mmap(nullptr, kFiberStack + kGuard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      std::fprintf(stderr, "odekern_emu: cannot map a fiber stack\n");
      std::abort();
    }
    mprotect(m, kGuard, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    pool.push_back(static_cast<char*>(m) + kGuard);
  }
  return pool[i];
}

inline void start_fiber(Thread& t, size_t i) {
  t.fiber.stack = fiber_stack(i);
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(t.fiber.stack) + kFiberStack) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                    // fiber_main's (never used) return address
  *--sp = reinterpret_cast<void*>(&fiber_main);       // where switch_stack's ret lands
  for (int r = 0; r < 6; ++r) *--sp = nullptr;        // rbp rbx r12 r13 r14 r15
  t.fiber.sp = sp;
#else
  getcontext(&t.fiber.ctx);
  t.fiber.ctx.uc_stack.ss_sp = t.fiber.stack;
  t.fiber.ctx.uc_stack.ss_size = kFiberStack;
  t.fiber.ctx.uc_link = nullptr;
  makecontext(&t.fiber.ctx, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

// ----------------------------------------------------------------------------------- faults

inline std::string where() {
  Launch* L = active();
  if (L == nullptr) return "host code";
  std::string s = "kernel " + L->kernel + ", block " + fmt3(L->block_idx.x, L->block_idx.y, L->block_idx.z);
  if (L->current) s += ", thread " + fmt3(L->current->idx.x, L->current->idx.y, L->current->idx.z);
  return s;
}

// Ends the launch with an error. Inside a kernel the calling fiber is abandoned (never
// resumed); outside one (host code misusing device memory) the error is only recorded.
inline void fault(cudaError_t code, const std::string& what) {
  record_error(code, what + " [" + where() + "]");
  Launch* L = active();
  if (L == nullptr || L->current == nullptr) return;
  L->failed = true;
  L->current->state = State::done;
  to_scheduler();
  std::abort();
}

inline Thread& current_thread() {
  Launch* L = active();
  if (L == nullptr || L->current == nullptr) {
    std::fprintf(stderr, "odekern_emu: device code called outside a kernel launch\n");
    std::abort();
  }
  return *L->current;
}

// ----------------------------------------------------------------------- warp & block sync

enum WarpOp { kSync = 0, kShflIdx, kShflUp, kShflDown, kShflXor };

inline int shfl_source(int lane, int op, int arg, int width) {
  const int base = lane - lane % width, in = lane % width;
  switch (op) {
    case kShflIdx: return base + ((arg % width) + width) % width;
    case kShflUp: return in >= arg ? lane - arg : lane;
    case kShflDown: return in + arg < width ? lane + arg : lane;
    case kShflXor: return (in ^ arg) < width ? base + (in ^ arg) : lane;
    default: return lane;
  }
}

inline std::string describe_waits(const Launch& L) {
  std::map<std::string, std::pair<int, int>> groups;  // what -> (count, first thread)
  for (const Thread& t : L.threads) {
    std::string k;
    switch (t.state) {
      case State::done: k = "exited"; break;
      case State::at_barrier: k = "wait at __syncthreads " + t.site.str(); break;
      case State::at_warp: k = "wait at a warp primitive " + t.site.str(); break;
      default: k = "runnable"; break;
    }
    auto it = groups.find(k);
    if (it == groups.end()) groups[k] = {1, t.linear};
    else ++it->second.first;
  }
  std::string s;
  for (const auto& [k, v] : groups)
    s += (s.empty() ? "" : "; ") + std::to_string(v.first) + " thread(s) " + k + " (first: " +
         std::to_string(v.second) + ")";
  return s;
}

// Completes warp primitives whose warps have fully arrived. True if any did.
inline bool resolve_warps(Launch& L) {
  bool any = false;
  const int n = static_cast<int>(L.threads.size());
  for (int w0 = 0; w0 < n; w0 += kWarpSize) {
    const int w1 = std::min(n, w0 + kWarpSize);
    bool all = true;
    for (int i = w0; i < w1 && all; ++i)
      all = L.threads[i].state == State::at_warp && L.threads[i].site == L.threads[w0].site;
    if (!all) continue;
    const unsigned full = (w1 - w0) == kWarpSize ? 0xffffffffu : ((1u << (w1 - w0)) - 1u);
    for (int i = w0; i < w1; ++i) {
      Thread& t = L.threads[i];
      if ((t.warp_mask & full) != full) {
        L.current = &t;
        record_error(cudaErrorLaunchFailure,
                     "warp primitive at " + t.site.str() + " with mask " + std::to_string(t.warp_mask) +
                         ": the emulation supports full-warp masks only [" + where() + "]");
        L.current = nullptr;
        L.failed = true;
        return false;
      }
      const int src = w0 + shfl_source(i - w0, t.warp_op, t.warp_arg, t.warp_width);
      t.warp_out = L.threads[src < w1 ? src : i].warp_in;
    }
    for (int i = w0; i < w1; ++i) L.threads[i].state = State::runnable;
    any = true;
  }
  return any;
}

inline void run_block(Launch& L) {
  const unsigned bx = L.block.x, by = L.block.y;
  const size_t n = static_cast<size_t>(L.block.x) * L.block.y * L.block.z;
  L.threads.resize(n);
  for (size_t i = 0; i < n; ++i) {
    Thread& t = L.threads[i];
    t = Thread{};
    t.linear = static_cast<int>(i);
    t.idx = {static_cast<unsigned>(i % bx), static_cast<unsigned>((i / bx) % by), static_cast<unsigned>(i / (bx * by))};
    start_fiber(t, i);
  }
  L.static_shared.clear();
  L.static_shared_bytes = 0;
  if (L.dynamic_smem) L.dynamic_shared = std::make_unique<SharedBuffer>(L.dynamic_smem);
  L.epoch = next_epoch();
  while (true) {
    for (Thread& t : L.threads) {
      if (t.state != State::runnable) continue;
      run_fiber(t);
      if (L.failed) return;
    }
    if (resolve_warps(L)) continue;
    if (L.failed) return;
    size_t done = 0, waiting = 0;
    for (const Thread& t : L.threads) {
      done += t.state == State::done;
      waiting += t.state == State::at_barrier;
    }
    if (done == n) return;
    bool same_site = true;
    for (const Thread& t : L.threads) same_site = same_site && t.site == L.threads[0].site;
    if (waiting == n && same_site) {
      for (Thread& t : L.threads) t.state = State::runnable;
      L.epoch = next_epoch();
      continue;
    }
    record_error(cudaErrorLaunchFailure,
                 "deadlock: divergent barrier in kernel " + L.kernel + ", block " +
                     fmt3(L.block_idx.x, L.block_idx.y, L.block_idx.z) +
                     ": not every thread of the block reaches the same __syncthreads / warp "
                     "primitive: " + describe_waits(L));
    L.failed = true;
    return;
  }
}

inline void syncthreads(Site s) {
  Thread& t = current_thread();
  t.state = State::at_barrier;
  t.site = s;
  to_scheduler();
}

template <typename T>
T warp_op(int op, unsigned mask, T v, int arg, int width, Site s) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp primitives exchange at most 8 bytes");
  Thread& t = current_thread();
  t.state = State::at_warp;
  t.site = s;
  t.warp_op = op;
  t.warp_mask = mask;
  t.warp_arg = arg;
  t.warp_width = width;
  t.warp_in = 0;
  std::memcpy(&t.warp_in, &v, sizeof(T));
  to_scheduler();
  T out;
  std::memcpy(&out, &current_thread().warp_out, sizeof(T));
  return out;
}

}  // namespace odekern_emu
