// Pointer type of kernel parameters that point into device memory.
//
// Under nvcc (and any real CUDA build) `global_ptr<T>` is exactly `T*`: kernels compile to the
// same code as with raw pointers. When the .cu sources are compiled as host C++ for the CUDA
// emulation of the tests (tests/cuda_emulation, -DODEKERN_CUDA_EMULATION), it is a pointer that
// knows the allocation it points into and fails the running kernel with its name and the index
// on any out-of-bounds read or write, the way compute-sanitizer's memcheck would on a GPU.
//
// Launchers keep passing raw pointers: the conversion happens at the kernel's parameter.
// ODEKERN_RESTRICT is `__restrict__` under nvcc and nothing in the emulation (where the
// pointer is a class).
#pragma once

#if defined(ODEKERN_CUDA_EMULATION)
#include <odekern_emu/checked_ptr.h>  // tests/cuda_emulation/include
namespace odekern {
template <typename T>
using global_ptr = ::odekern_emu::checked_ptr<T>;
}  // namespace odekern
#define ODEKERN_RESTRICT
#else
namespace odekern {
template <typename T>
using global_ptr = T*;
}  // namespace odekern
#define ODEKERN_RESTRICT __restrict__
#endif
