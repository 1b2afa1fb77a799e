// Test-only torch ops of the CUDA emulation build (library odekern_cuda_emu): the tracking CPU
// allocator that registers every tensor storage as "device memory" for the bounds checks, the
// error log and launch counts of the emulation, and the planted faulty kernels
// (planted_kernels.cpp) that prove the checks fire. Compiled in the same unity translation
// unit as the real CUDA bindings (see ../emu_build.py).
#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <string>

#include <odekern/cuda_runtime_api.h>
#include <odekern_emu/memory.h>

namespace odekern_emu {

std::string launch_summary();  // planted_kernels.cpp (it sees the device-side emulation)
void planted_oob_write(float* out, int64_t n);
void planted_race(const float* x, float* out, int64_t n);
void planted_divergent_barrier(const float* x, float* out, int64_t n);
void block_sum(const float* x, float* out, int64_t n);

namespace {

// Wraps the default CPU allocator and registers each allocation's [ptr, ptr + nbytes) range.
class TrackingAllocator final : public c10::Allocator {
 public:
  explicit TrackingAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr inner = inner_->allocate(n);
    void* p = inner.get();
    if (p != nullptr) registry().add(p, n);
    auto* ctx = new Ctx{std::move(inner)};
    return {p, ctx, &Release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
  c10::Allocator* inner() const { return inner_; }

 private:
  struct Ctx {
    c10::DataPtr inner;
  };
  static void Release(void* ctx) {
    auto* c = static_cast<Ctx*>(ctx);
    if (c->inner.get() != nullptr) registry().remove(c->inner.get());
    delete c;
  }
  c10::Allocator* inner_;
};

constexpr uint8_t kPriority = 200;  // above the default registration, restorable by us

TrackingAllocator& tracker() {
  static TrackingAllocator t(c10::GetDefaultCPUAllocator());
  return t;
}

void track(bool on) {
  c10::SetCPUAllocator(on ? static_cast<c10::Allocator*>(&tracker()) : tracker().inner(), kPriority);
}

std::string take_errors_joined() {
  std::string out;
  for (const std::string& e : take_errors()) out += (out.empty() ? "" : "\x1e") + e;
  return out;
}

void check_planted(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.is_contiguous() && out.is_contiguous() && x.scalar_type() == at::kFloat &&
                  out.scalar_type() == at::kFloat, "planted kernels take contiguous float32 tensors");
}

// What a binding does after a launch (C10_CUDA_KERNEL_LAUNCH_CHECK).
void launch_check() {
  const cudaError_t e = cudaGetLastError();
  TORCH_CHECK(e == cudaSuccess, "CUDA error: ", cudaGetErrorString(e));
}

}  // namespace
}  // namespace odekern_emu

TORCH_LIBRARY_FRAGMENT(odekern_cuda_emu, m) {
  m.def("emu_track_allocations(bool on) -> ()");
  m.def("emu_take_errors() -> str");
  m.def("emu_launches() -> str");
  m.def("planted_oob_write(Tensor(a!) out) -> ()");
  m.def("planted_race(Tensor x, Tensor(a!) out) -> ()");
  m.def("planted_divergent_barrier(Tensor x, Tensor(a!) out) -> ()");
  m.def("block_sum(Tensor x, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(odekern_cuda_emu, CatchAll, m) {
  m.impl("emu_track_allocations", &odekern_emu::track);
  m.impl("emu_take_errors", &odekern_emu::take_errors_joined);
  m.impl("emu_launches", &odekern_emu::launch_summary);
}

TORCH_LIBRARY_IMPL(odekern_cuda_emu, CPU, m) {
  m.impl("planted_oob_write", [](const at::Tensor& out) {
    odekern_emu::check_planted(out, out);
    odekern_emu::planted_oob_write(out.data_ptr<float>(), out.numel());
    odekern_emu::launch_check();
  });
  m.impl("planted_race", [](const at::Tensor& x, const at::Tensor& out) {
    odekern_emu::check_planted(x, out);
    odekern_emu::planted_race(x.data_ptr<float>(), out.data_ptr<float>(), x.numel());
    odekern_emu::launch_check();
  });
  m.impl("planted_divergent_barrier", [](const at::Tensor& x, const at::Tensor& out) {
    odekern_emu::check_planted(x, out);
    odekern_emu::planted_divergent_barrier(x.data_ptr<float>(), out.data_ptr<float>(), x.numel());
    odekern_emu::launch_check();
  });
  m.impl("block_sum", [](const at::Tensor& x, const at::Tensor& out) {
    odekern_emu::check_planted(x, out);
    odekern_emu::block_sum(x.data_ptr<float>(), out.data_ptr<float>(), x.numel());
    odekern_emu::launch_check();
  });
}
