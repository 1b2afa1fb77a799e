// The part of the CUDA runtime API odekern's launchers call (streams, memcpy/memset, errors),
// for .cu sources compiled as host C++. "Device" memory is host memory; every call runs
// synchronously, so a stream is only a token. Copies that touch device memory are
// bounds-checked against the registered allocations (memory.h), like a real cudaMemcpy that
// would fault on an invalid range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "memory.h"

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

namespace odekern_emu {

// Error state: `last` is what cudaGetLastError returns (and clears), `log` every error since
// the test harness last called take_errors() (so an error the host code ignored still fails
// the test). `message` is the detailed text behind the last error code.
struct ErrorState {
  cudaError_t last = cudaSuccess;
  std::string message;
  std::vector<std::string> log;
};

inline ErrorState& errors() {
  static ErrorState state;
  return state;
}

inline void record_error(cudaError_t code, const std::string& message) {
  ErrorState& e = errors();
  if (e.last == cudaSuccess) {
    e.last = code;
    e.message = message;
  }
  e.log.push_back(message);
}

// Every error recorded since the last call, then a clean state.
inline std::vector<std::string> take_errors() {
  ErrorState& e = errors();
  std::vector<std::string> out;
  out.swap(e.log);
  e.last = cudaSuccess;
  e.message.clear();
  return out;
}

inline bool device_range_ok(const void* p, size_t bytes, const char* what, const char* api) {
  if (bytes == 0) return true;
  const Allocation a = registry().find(p);
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p);
  if (!a.valid() || lo + bytes > a.end) {
    record_error(cudaErrorInvalidValue,
                 std::string(api) + ": the " + what + " range of " + std::to_string(bytes) +
                     " bytes is not inside one device allocation" +
                     (a.valid() ? " (it runs " + std::to_string(lo + bytes - a.end) + " bytes past the end)"
                                : " (not device memory)"));
    return false;
  }
  return true;
}

}  // namespace odekern_emu

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  if ((src_dev && !odekern_emu::device_range_ok(src, bytes, "source", "cudaMemcpyAsync")) ||
      (dst_dev && !odekern_emu::device_range_ok(dst, bytes, "destination", "cudaMemcpyAsync")))
    return cudaErrorInvalidValue;
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t = nullptr) {
  if (!odekern_emu::device_range_ok(dst, bytes, "destination", "cudaMemsetAsync")) return cudaErrorInvalidValue;
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}

// Kernels ran at launch: synchronising only reports the sticky error, as a real fault would.
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return odekern_emu::errors().last; }
inline cudaError_t cudaDeviceSynchronize() { return odekern_emu::errors().last; }
inline cudaError_t cudaPeekAtLastError() { return odekern_emu::errors().last; }
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = odekern_emu::errors().last;
  odekern_emu::errors().last = cudaSuccess;
  return e;
}

// The emulation's own detail (kernel name, thread, index) for the last error's code.
inline const char* cudaGetErrorString(cudaError_t code) {
  if (code == cudaSuccess) return "no error";
  const std::string& m = odekern_emu::errors().message;
  if (!m.empty()) return m.c_str();
  switch (code) {
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unspecified launch failure";
  }
}
