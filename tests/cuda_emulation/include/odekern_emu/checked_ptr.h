// checked_ptr<T>: a kernel's pointer into device memory that knows the allocation it points
// into. Every read and write through it is checked; an access outside the allocation (or
// through a null or non-device pointer) fails the kernel with its name, the thread, the index
// and the allocation's size, as compute-sanitizer's memcheck would report on a GPU.
//
// It is built implicitly from a raw pointer where a launcher passes one to a kernel parameter
// (the allocation is looked up once, then), supports pointer arithmetic and comparison with
// nullptr, and reads return values while writes go through a small reference proxy, so the
// kernel source reads as with raw pointers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "memory.h"
#include "scheduler.h"

namespace odekern_emu {

template <typename T>
class checked_ptr {
 public:
  using value_type = std::remove_const_t<T>;

  checked_ptr() = default;
  checked_ptr(std::nullptr_t) {}
  checked_ptr(T* p) : p_(p) {
    if (p != nullptr) alloc_ = registry().find(p);
  }
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U*, T*> && !std::is_same_v<U, T>>>
  checked_ptr(const checked_ptr<U>& o) : p_(o.raw_unchecked()), alloc_(o.allocation()) {}

  checked_ptr operator+(int64_t i) const { return checked_ptr(p_ + i, alloc_); }
  checked_ptr operator-(int64_t i) const { return checked_ptr(p_ - i, alloc_); }
  checked_ptr& operator+=(int64_t i) { p_ += i; return *this; }
  checked_ptr& operator-=(int64_t i) { p_ -= i; return *this; }
  bool operator==(std::nullptr_t) const { return p_ == nullptr; }
  bool operator!=(std::nullptr_t) const { return p_ != nullptr; }
  explicit operator bool() const { return p_ != nullptr; }

  // Address of element i after checking that sizeof(T) bytes there lie in the allocation.
  T* checked(int64_t i, const char* access) const {
    T* a = p_ + i;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(a);
    if (p_ == nullptr) {
      fault(cudaErrorIllegalAddress, std::string(access) + " through a null pointer (index " + std::to_string(i) + ")");
    } else if (!alloc_.valid()) {
      fault(cudaErrorIllegalAddress, std::string(access) + " through a pointer into no device allocation (index " +
                                         std::to_string(i) + "; a host pointer?)");
    } else if (lo < alloc_.begin || lo + sizeof(T) > alloc_.end) {
      const int64_t elem = (static_cast<int64_t>(lo) - static_cast<int64_t>(alloc_.begin)) / int64_t(sizeof(T));
      fault(cudaErrorIllegalAddress,
            "out-of-bounds " + std::string(access) + " at index " + std::to_string(i) + " = element " +
                std::to_string(elem) + " of an allocation of " +
                std::to_string((alloc_.end - alloc_.begin) / sizeof(T)) + " elements of " +
                std::to_string(sizeof(T)) + " bytes (the pointer starts at element " +
                std::to_string((reinterpret_cast<uintptr_t>(p_) - alloc_.begin) / sizeof(T)) + ")");
    }
    return a;
  }

  value_type load(int64_t i) const { return *checked(i, "read"); }

  class Ref {
   public:
    Ref(const checked_ptr& p, int64_t i) : p_(p), i_(i) {}
    operator value_type() const { return p_.load(i_); }
    Ref& operator=(value_type v) { *p_.checked(i_, "write") = v; return *this; }
    Ref& operator=(const Ref& o) { return *this = static_cast<value_type>(o); }
    Ref& operator+=(value_type v) { return *this = static_cast<value_type>(*this) + v; }
    Ref& operator-=(value_type v) { return *this = static_cast<value_type>(*this) - v; }
    Ref& operator*=(value_type v) { return *this = static_cast<value_type>(*this) * v; }

   private:
    checked_ptr p_;
    int64_t i_;
  };

  // Reads through a pointer to const return the value; writable pointers return the proxy.
  auto operator[](int64_t i) const {
    if constexpr (std::is_const_v<T>) return load(i);
    else return Ref(*this, i);
  }
  auto operator*() const { return (*this)[0]; }

  T* raw_unchecked() const { return p_; }
  Allocation allocation() const { return alloc_; }

 private:
  checked_ptr(T* p, Allocation a) : p_(p), alloc_(a) {}
  T* p_ = nullptr;
  Allocation alloc_;
};

}  // namespace odekern_emu
