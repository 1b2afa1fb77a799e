// Registry of "device" allocations: address ranges the emulated kernels may touch. The test
// harness registers every CPU tensor storage allocated while it is active (a tracking CPU
// allocator, see ../../src/emu_ops.cpp), so a kernel's pointer arguments are checked against the
// tensors they were made from.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>

namespace odekern_emu {

struct Allocation {
  uintptr_t begin = 0, end = 0;  // [begin, end) in bytes; begin == 0: no allocation
  bool valid() const { return begin != 0; }
};

class Registry {
 public:
  void add(const void* p, size_t bytes) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mu_);
    ranges_[b] = b + bytes;
  }
  void remove(const void* p) {
    std::lock_guard<std::mutex> lock(mu_);
    ranges_.erase(reinterpret_cast<uintptr_t>(p));
  }
  // The allocation containing p (a zero-byte allocation "contains" its own address only).
  Allocation find(const void* p) const {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ranges_.upper_bound(a);
    if (it == ranges_.begin()) return {};
    --it;
    if (a < it->second || a == it->first) return {it->first, it->second};
    return {};
  }

 private:
  mutable std::mutex mu_;
  std::map<uintptr_t, uintptr_t> ranges_;
};

inline Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace odekern_emu
