// Shared macros for odekern kernels: one per-element math header serves the CPU loop and the
// CUDA kernel, so the CUDA math is executed (and tested) on CPU too.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ODEKERN_DEVICE_COMPILE 1
#endif

// Force-inlining, spelled once: a call left inside an `omp simd` loop stops vectorisation, and
// device helpers belong in their caller's registers.
#if defined(ODEKERN_DEVICE_COMPILE)
#define ODEKERN_ALWAYS_INLINE __forceinline__
#elif defined(__GNUC__)
#define ODEKERN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ODEKERN_ALWAYS_INLINE inline
#endif

// Per-element math shared by host and device code.
#if defined(ODEKERN_DEVICE_COMPILE)
#define ODEKERN_HD __host__ __device__ ODEKERN_ALWAYS_INLINE
#else
#define ODEKERN_HD inline
#endif

// Hot CPU loops are compiled several times and chosen at load time by the CPU's ISA, so one
// build runs on any x86-64 (no AVX-512 needed) and still uses AVX2/AVX-512 where present.
#if !defined(__CUDACC__) && defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define ODEKERN_ISA_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define ODEKERN_ISA_CLONES
#endif

// The torch.library namespace the ops' schemas are defined in: odekern_C, or the test-only
// odekern_cuda_emu of the CUDA emulation build (tests/cuda_emulation), which loads next to
// odekern._C in the same process.
#ifndef ODEKERN_LIBRARY_NS
#define ODEKERN_LIBRARY_NS odekern_C
#endif

// Input checks for the C++ entry points. Python validates first with friendlier messages;
// these guard direct torch.ops calls so bad input never reaches a kernel.
#ifndef ODEKERN_DEVICE_COMPILE
#define ODEKERN_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)
#define ODEKERN_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor")
#if defined(ODEKERN_CUDA_EMULATION)
// The emulation's device memory is host memory: its "CUDA" tensors are CPU tensors.
#define ODEKERN_CHECK_CUDA(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor (CUDA emulation)")
#else
#define ODEKERN_CHECK_CUDA(x) TORCH_CHECK((x).device().is_cuda(), #x " must be a CUDA tensor")
#endif
#define ODEKERN_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define ODEKERN_CHECK_FLOATING(x) \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble, \
              #x " must be float32 or float64, got ", (x).scalar_type())
#endif
