// Deterministic block-wide sums: a fixed shuffle tree per warp, then warp 0 sums the warps in order.
#pragma once

#include "sgllie/cuda_launch.h"

namespace sgllie::cuda {

// The sum of v over the block's threads, valid in thread 0. Every thread of the block must call it
// (it synchronises). kThreads: the block size, a multiple of 32.
template <int kThreads, typename A>
__device__ __forceinline__ A block_sum(A v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size must be a multiple of 32");
  __shared__ A warp_sums[kThreads / 32];
  for (int d = 16; d > 0; d /= 2) v += __shfl_down_sync(0xffffffffu, v, d);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  A total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();  // warp_sums may be reused by the next call
  return total;
}

// The two-stage reduction of two sums, stage one: the block's sums of a and b stored as its pair in
// `partials` (entries 2 * blockIdx.x and 2 * blockIdx.x + 1). Every thread must call it.
template <int kThreads, typename A, typename P>
__device__ __forceinline__ void store_block_pair(A a, A b, P* partials) {
  a = block_sum<kThreads>(a);
  b = block_sum<kThreads>(b);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = a;
    partials[2 * blockIdx.x + 1] = b;
  }
}

// Stage two, in one block: the pairs of `blocks` blocks summed in block order, in double; valid
// in thread 0. Every thread must call it.
template <int kThreads, typename P>
__device__ __forceinline__ void sum_block_pairs(const P* partials, int blocks, double& a, double& b) {
  a = b = 0;
  for (int k = threadIdx.x; k < blocks; k += kThreads) {
    a += partials[2 * k];
    b += partials[2 * k + 1];
  }
  a = block_sum<kThreads>(a);
  b = block_sum<kThreads>(b);
}

}  // namespace sgllie::cuda
