// The schemas of sgllie_C under the emulation build's own library name (its CPU kernels are the
// host-emulated CUDA kernels: csrc/cuda/bind.cpp with SGLLIE_CUDA_EMULATION), plus kernels that
// break the rules on purpose, to show the emulator reports them instead of hanging.
#include <ATen/ATen.h>

#include "sgllie/cuda_launch.h"
#include "sgllie/schemas.h"

namespace {

// Thread 3 returns early, the rest wait at __syncthreads: undefined behaviour on a GPU.
__global__ void early_return(int* out) {
  if (threadIdx.x == 3) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Half a warp shuffles: the other lanes never arrive.
__global__ void half_warp_shuffle(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_down_sync(0xffffu, v, 1);
  out[threadIdx.x] = v;
}

// Reads a neighbour's shared-memory slot with no __syncthreads in between: a race on a GPU. The
// emulator runs each thread up to its next barrier in turn, so thread t reads slot t + 1 before
// thread t + 1 writes it, every time: the missing barrier shows as a wrong result.
__global__ void missing_barrier(int* out) {
  __shared__ int slots[64];
  const unsigned t = threadIdx.x;
  slots[t] = static_cast<int>(blockIdx.x * 100 + t);
  out[blockIdx.x * 64 + t] = slots[(t + 1) % 64];
}

// A block sum through shuffles, shared memory and atomicAdd: the emulator's own sanity check.
__global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float warp_sums[32];
  float v = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warp_sums[w];
    atomicAdd(out, s);
  }
}

at::Tensor selftest(const at::Tensor& x, int64_t which) {
  at::Tensor out = at::zeros({64}, x.options().dtype(at::kInt));
  if (which == 0) {
    at::Tensor sum = at::zeros({}, x.options());
    const at::Tensor xc = x.contiguous();
    SGLLIE_LAUNCH(dim3(3), dim3(96), nullptr, block_sum)(xc.data_ptr<float>(), sum.data_ptr<float>(),
                                                         static_cast<int>(xc.numel()));
    return sum;
  }
  if (which == 1) SGLLIE_LAUNCH(dim3(2), dim3(64), nullptr, early_return)(out.data_ptr<int>());
  if (which == 2) SGLLIE_LAUNCH(dim3(1), dim3(32), nullptr, half_warp_shuffle)(out.data_ptr<int>());
  if (which == 3) {
    out = at::zeros({128}, x.options().dtype(at::kInt));
    SGLLIE_LAUNCH(dim3(2), dim3(64), nullptr, missing_barrier)(out.data_ptr<int>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(SGLLIE_BIND_LIBRARY, m) {
  sgllie::define_schemas(m);
  m.def("selftest(Tensor x, int which) -> Tensor");
}

TORCH_LIBRARY_IMPL(SGLLIE_BIND_LIBRARY, CPU, m) { m.impl("selftest", &selftest); }
