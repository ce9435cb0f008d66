// What a csrc/cuda/*.cu file needs besides its kernels: the CUDA types, the launch macro, and the
// arithmetic type of each storage type. Under SGLLIE_CUDA_EMULATION (the tests, built by g++) the
// same source runs on the host through tests/cuda_emu/cuda_emulation.h.
#pragma once

#if defined(SGLLIE_CUDA_EMULATION)
#include "cuda_emulation.h"
// SGLLIE_LAUNCH(grid, block, stream, kernel)(args...): blocks one after another on host threads
#define SGLLIE_LAUNCH(grid, block, stream, ...) ::cuda_emu::launch(#__VA_ARGS__, __VA_ARGS__, grid, block)
#define SGLLIE_LAUNCH_STATUS() cudaSuccess
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// SGLLIE_LAUNCH(grid, block, stream, kernel)(args...): kernel<<<grid, block, 0, stream>>>(args...)
#define SGLLIE_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#define SGLLIE_LAUNCH_STATUS() cudaGetLastError()
#endif

namespace sgllie::cuda {

// Arithmetic in float for the 16-bit types and float, in double for double.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

// Conversions spelled out: torch builds CUDA code with __CUDA_NO_HALF_CONVERSIONS__ (and the bf16 one),
// which removes the implicit ones.
__host__ __device__ __forceinline__ float to_acc(float v) { return v; }
__host__ __device__ __forceinline__ double to_acc(double v) { return v; }
__host__ __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __host__ __device__ __forceinline__ acc_t<T> load(const T* p) { return to_acc(*p); }
template <typename T> __host__ __device__ __forceinline__ T cast(acc_t<T> v) { return static_cast<T>(v); }
template <> __host__ __device__ __forceinline__ __half cast<__half>(float v) { return __float2half_rn(v); }
template <> __host__ __device__ __forceinline__ __nv_bfloat16 cast<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The storage types every kernel is instantiated for (bind.cpp dispatches to the same four).
#define SGLLIE_FOR_EACH_STORAGE_TYPE(M) M(float) M(double) M(__half) M(__nv_bfloat16)

inline unsigned blocks_for(long long n, unsigned threads) {
  return static_cast<unsigned>((n + threads - 1) / threads);
}

}  // namespace sgllie::cuda
