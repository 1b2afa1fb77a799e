// CUDA device-side language for .cu sources compiled as host C++ (g++ -x c++): qualifiers,
// built-in indices, __syncthreads, shared memory with race tracking, the atomics and warp
// primitives odekern's kernels use, and launch<Kernel>(), which odekern::launch_kernel
// (csrc/include/odekern/cuda_launch.h) calls in emulation builds. See ../../README.md.
#pragma once

#include <math.h>

#include <cstdint>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "checked_ptr.h"
#include "runtime_api.h"
#include "scheduler.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

#define threadIdx (::odekern_emu::current_thread().idx)
#define blockIdx (::odekern_emu::active()->block_idx)
#define blockDim (::odekern_emu::active()->block)
#define gridDim (::odekern_emu::active()->grid)
#define warpSize (::odekern_emu::kWarpSize)

namespace odekern_emu {

// ------------------------------------------------------------------------------ shared memory

// A view of one shared-memory variable of the running block. Each element access checks the
// index and records which thread read / wrote the element since the last barrier: a write and
// another thread's read or write of the same element between two barriers is a data race (a
// missing __syncthreads) and fails the kernel, as does reading an element no thread wrote
// (judged when the element is next touched after a barrier).
template <typename T>
class shared_span {
 public:
  shared_span(SharedBuffer* buf, size_t offset, size_t n, const char* name)
      : buf_(buf), offset_(offset), n_(n), name_(name) {}

  T* access(int64_t i, bool write) const {
    if (i < 0 || static_cast<size_t>(i) >= n_)
      fault(cudaErrorIllegalAddress, std::string("out-of-bounds shared-memory ") + (write ? "write" : "read") +
                                         " of " + name_ + "[" + std::to_string(i) + "] (" + std::to_string(n_) +
                                         " elements)");
    const size_t at = offset_ + static_cast<size_t>(i) * sizeof(T);
    SharedCell& c = buf_->cells[at];
    const Launch& L = *active();
    const int me = L.current->linear;
    auto elem = [&] { return std::string(name_) + "[" + std::to_string(i) + "]"; };
    if (c.epoch != L.epoch) {
      // A read of a never-written element is judged when its phase is over: a write by
      // another thread in the same phase is the better diagnosis (a race, reported below).
      if (c.unwritten_reader >= 0 && !c.written)
        fault(cudaErrorLaunchFailure, "thread " + std::to_string(c.unwritten_reader) +
                                          " read uninitialised shared memory " + elem());
      c.epoch = L.epoch;
      c.writer = -1;
      c.reader = -1;
    }
    if (write) {
      if (c.writer >= 0 && c.writer != me)
        fault(cudaErrorLaunchFailure, "shared-memory race: threads " + std::to_string(c.writer) + " and " +
                                          std::to_string(me) + " both write " + elem() +
                                          " with no __syncthreads between");
      if (c.reader == -2 || (c.reader >= 0 && c.reader != me))
        fault(cudaErrorLaunchFailure, "shared-memory race: thread " + std::to_string(me) + " writes " + elem() +
                                          " that thread " + (c.reader == -2 ? std::string("s") : std::to_string(c.reader)) +
                                          " read with no __syncthreads between");
      c.writer = me;
      c.written = true;
    } else {
      if (c.writer >= 0 && c.writer != me)
        fault(cudaErrorLaunchFailure, "shared-memory race: thread " + std::to_string(me) + " reads " + elem() +
                                          " written by thread " + std::to_string(c.writer) +
                                          " with no __syncthreads between");
      if (!c.written && c.unwritten_reader < 0) c.unwritten_reader = me;
      c.reader = (c.reader == -1 || c.reader == me) ? me : -2;
    }
    return reinterpret_cast<T*>(buf_->bytes.data() + at);
  }

  class Ref {
   public:
    Ref(const shared_span& s, int64_t i) : s_(s), i_(i) {}
    operator T() const { return *s_.access(i_, false); }
    Ref& operator=(T v) { *s_.access(i_, true) = v; return *this; }
    Ref& operator=(const Ref& o) { return *this = static_cast<T>(o); }
    Ref& operator+=(T v) { const T old = *this; return *this = old + v; }
    Ref& operator-=(T v) { const T old = *this; return *this = old - v; }
    Ref& operator*=(T v) { const T old = *this; return *this = old * v; }

   private:
    const shared_span& s_;
    int64_t i_;
  };

  Ref operator[](int64_t i) const { return Ref(*this, i); }
  size_t size() const { return n_; }

 private:
  SharedBuffer* buf_;
  size_t offset_, n_;
  const char* name_;
};

// `__shared__ T name[N]` of the running block; `key` identifies the declaration.
template <typename T, size_t N>
shared_span<T> static_shared(const void* key, const char* name) {
  Launch& L = *active();
  auto it = L.static_shared.find(key);
  if (it == L.static_shared.end()) {
    L.static_shared_bytes += N * sizeof(T);
    if (L.static_shared_bytes > kStaticSharedLimit)
      fault(cudaErrorInvalidConfiguration, "static shared memory exceeds " + std::to_string(kStaticSharedLimit) +
                                               " bytes at " + name);
    it = L.static_shared.emplace(key, std::make_unique<SharedBuffer>(N * sizeof(T))).first;
  }
  return shared_span<T>(it->second.get(), 0, N, name);
}

template <typename T>
shared_span<T> dynamic_shared(const char* name) {
  Launch& L = *active();
  if (!L.dynamic_shared) return shared_span<T>(nullptr, 0, 0, name);
  return shared_span<T>(L.dynamic_shared.get(), 0, L.dynamic_smem / sizeof(T), name);
}

// -------------------------------------------------------------------------------- launching

template <auto Kernel>
const std::string& kernel_name() {
  static const std::string name = [](std::string s) {
    // s: "... [with auto Kernel = ns::name<args>; ...]"
    const size_t a = s.find("Kernel = ");
    s = a == std::string::npos ? s : s.substr(a + 9);
    int depth = 0;
    size_t end = s.size();
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '<') ++depth;
      if (s[i] == '>') --depth;
      if (depth == 0 && (s[i] == ';' || s[i] == ']')) { end = i; break; }
    }
    s = s.substr(0, end);
    for (const char* anon : {"{anonymous}::", "(anonymous namespace)::"})
      for (size_t p; (p = s.find(anon)) != std::string::npos;) s.erase(p, std::string(anon).size());
    return s;
  }(__PRETTY_FUNCTION__);
  return name;
}

// Launches per kernel name (instantiation), for the tests' coverage guard.
inline std::map<std::string, long>& launch_counts() {
  static std::map<std::string, long> counts;
  return counts;
}

inline bool valid_config(const std::string& name, dim3 g, dim3 b, size_t smem) {
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  std::string why;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    why = "grid " + fmt3(g.x, g.y, g.z) + " outside [1, 2^31-1] x [1, 65535] x [1, 65535]";
  else if (threads == 0 || threads > 1024 || b.z > 64)
    why = "block " + fmt3(b.x, b.y, b.z) + " has " + std::to_string(threads) + " threads (1..1024, z <= 64)";
  else if (smem > kStaticSharedLimit)
    why = std::to_string(smem) + " bytes of dynamic shared memory (more than 48 KiB needs an opt-in)";
  if (why.empty()) return true;
  record_error(cudaErrorInvalidConfiguration, "invalid launch configuration of kernel " + name + ": " + why);
  return false;
}

template <typename... P>
struct params_of;
template <typename... P>
struct params_of<void (*)(P...)> {
  using tuple = std::tuple<std::decay_t<P>...>;
};

// Runs Kernel over grid x block now (the stream only orders work, and all work is done at
// launch). A launch after an unreported fault does not run, as on a GPU whose context a fault
// has poisoned.
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t, Args&&... args) {
  const std::string& name = kernel_name<Kernel>();
  ++launch_counts()[name];
  if (!errors().log.empty()) return;
  if (!valid_config(name, grid, block, smem)) return;
  // Parameters are converted once, as the <<<>>> launch would (raw -> checked pointers), then
  // each thread gets its own copy.
  typename params_of<decltype(Kernel)>::tuple params(std::forward<Args>(args)...);
  Launch L;
  L.kernel = name;
  L.grid = grid;
  L.block = block;
  L.dynamic_smem = smem;
  L.body = [&params] { std::apply(Kernel, params); };
  Launch* outer = active();
  active() = &L;
  for (unsigned z = 0; z < grid.z && !L.failed; ++z)
    for (unsigned y = 0; y < grid.y && !L.failed; ++y)
      for (unsigned x = 0; x < grid.x && !L.failed; ++x) {
        L.block_idx = {x, y, z};
        run_block(L);
      }
  active() = outer;
}

}  // namespace odekern_emu

// ----------------------------------------------------------------------------- device API

#define ODEKERN_EMU_SHARED_ARRAY(T, name, n)  \
  static char name##_odekern_emu_key_ = 0;    \
  const auto name = ::odekern_emu::static_shared<T, (n)>(&name##_odekern_emu_key_, #name)
#define ODEKERN_EMU_DYNAMIC_SHARED(T, name) const auto name = ::odekern_emu::dynamic_shared<T>(#name)

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  odekern_emu::syncthreads(odekern_emu::site_of(loc));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
  odekern_emu::warp_op<int>(odekern_emu::kSync, mask, 0, 0, odekern_emu::kWarpSize, odekern_emu::site_of(loc));
}

template <typename T>
T __shfl_sync(unsigned mask, T v, int lane, int width = 32, std::source_location loc = std::source_location::current()) {
  return odekern_emu::warp_op<T>(odekern_emu::kShflIdx, mask, v, lane, width, odekern_emu::site_of(loc));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32, std::source_location loc = std::source_location::current()) {
  return odekern_emu::warp_op<T>(odekern_emu::kShflUp, mask, v, int(d), width, odekern_emu::site_of(loc));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32, std::source_location loc = std::source_location::current()) {
  return odekern_emu::warp_op<T>(odekern_emu::kShflDown, mask, v, int(d), width, odekern_emu::site_of(loc));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32, std::source_location loc = std::source_location::current()) {
  return odekern_emu::warp_op<T>(odekern_emu::kShflXor, mask, v, m, width, odekern_emu::site_of(loc));
}

// Read-only cache loads are plain checked reads.
template <typename T>
T __ldg(odekern_emu::checked_ptr<const T> p) { return p.load(0); }
template <typename T>
T __ldg(const T* p) { return *p; }

// Atomics: fibers of one launch never run concurrently, so a checked read-modify-write is atomic.
template <typename T, typename F>
T odekern_emu_atomic(odekern_emu::checked_ptr<T> p, F f) {
  T* a = p.checked(0, "atomic");
  const T old = *a;
  *a = f(old);
  return old;
}
template <typename T>
T atomicAdd(odekern_emu::checked_ptr<T> p, T v) { return odekern_emu_atomic(p, [v](T o) { return o + v; }); }
template <typename T>
T atomicMax(odekern_emu::checked_ptr<T> p, T v) { return odekern_emu_atomic(p, [v](T o) { return o > v ? o : v; }); }
template <typename T>
T atomicMin(odekern_emu::checked_ptr<T> p, T v) { return odekern_emu_atomic(p, [v](T o) { return o < v ? o : v; }); }
template <typename T>
T atomicExch(odekern_emu::checked_ptr<T> p, T v) { return odekern_emu_atomic(p, [v](T) { return v; }); }
