// tv_loss on the GPU. Forward: a fixed grid (set by the shape alone) of blocks sums the squared
// row and column differences of its grid-stride share; one block then sums those partials in
// order, in double: deterministic, no atomics. Backward: one thread per element.
#include "block_reduce.cuh"
#include "launchers.h"

namespace sgllie::cuda {
namespace {

constexpr int kThreads = 256;
#ifndef SGLLIE_TV_MAX_BLOCKS  // the tests' emulation build sets it small, so every block strides
#define SGLLIE_TV_MAX_BLOCKS 512
#endif
constexpr unsigned kMaxBlocks = SGLLIE_TV_MAX_BLOCKS;

template <typename T>
__global__ void __launch_bounds__(kThreads) tv_partials(const T* __restrict__ r, acc_t<T>* __restrict__ partials,
                                                        long long total, int h, int w) {
  using A = acc_t<T>;
  A sh = 0, sw = 0;
  for (long long e = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x; e < total;
       e += static_cast<long long>(gridDim.x) * kThreads) {
    const int j = static_cast<int>(e % w), i = static_cast<int>(e / w % h);
    const A v = load(r + e);
    if (i > 0) { const A d = v - load(r + e - w); sh += d * d; }
    if (j > 0) { const A d = v - load(r + e - 1); sw += d * d; }
  }
  store_block_pair<kThreads>(sh, sw, partials);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) tv_finish(const acc_t<T>* __restrict__ partials, int blocks,
                                                      T* __restrict__ out, int n, int h, int w) {
  double sh, sw;
  sum_block_pairs<kThreads>(partials, blocks, sh, sw);
  if (threadIdx.x == 0)
    *out = cast<T>(static_cast<acc_t<T>>(2.0 * (sh / ((h - 1.0) * w) + sw / (h * (w - 1.0))) / n));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) tv_bwd(const T* __restrict__ grad, const T* __restrict__ r,
                                                   T* __restrict__ gr, long long total, int n, int h, int w) {
  using A = acc_t<T>;
  const long long e = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x;
  if (e >= total) return;
  const A g = load(grad);
  const A kh = A(4) * g / (A(h - 1) * A(w) * A(n)), kw = A(4) * g / (A(h) * A(w - 1) * A(n));
  const int j = static_cast<int>(e % w), i = static_cast<int>(e / w % h);
  const A v = load(r + e);
  A out = 0;
  if (i > 0) out += kh * (v - load(r + e - w));
  if (i < h - 1) out -= kh * (load(r + e + w) - v);
  if (j > 0) out += kw * (v - load(r + e - 1));
  if (j < w - 1) out -= kw * (load(r + e + 1) - v);
  gr[e] = cast<T>(out);
}

unsigned partial_blocks(long long total) { return std::min<unsigned>(blocks_for(total, kThreads), kMaxBlocks); }

}  // namespace

template <typename T>
size_t tv_loss_workspace(int n, int c, int h, int w) {
  return 2 * partial_blocks(static_cast<long long>(n) * c * h * w) * sizeof(acc_t<T>);
}

template <typename T>
cudaError_t tv_loss_forward(const T* r, T* out, void* workspace, int n, int c, int h, int w, cudaStream_t stream) {
  const long long total = static_cast<long long>(n) * c * h * w;
  const unsigned blocks = partial_blocks(total);
  auto* partials = static_cast<acc_t<T>*>(workspace);
  SGLLIE_LAUNCH(dim3(blocks), dim3(kThreads), stream, tv_partials<T>)(r, partials, total, h, w);
  SGLLIE_LAUNCH(dim3(1), dim3(kThreads), stream, tv_finish<T>)(partials, static_cast<int>(blocks), out, n, h, w);
  return SGLLIE_LAUNCH_STATUS();
}

template <typename T>
cudaError_t tv_loss_backward(const T* grad, const T* r, T* grad_r, int n, int c, int h, int w, cudaStream_t stream) {
  const long long total = static_cast<long long>(n) * c * h * w;
  SGLLIE_LAUNCH(dim3(blocks_for(total, kThreads)), dim3(kThreads), stream, tv_bwd<T>)(grad, r, grad_r, total, n, h, w);
  return SGLLIE_LAUNCH_STATUS();
}

#define SGLLIE_INSTANTIATE(T)                                                                         \
  template size_t tv_loss_workspace<T>(int, int, int, int);                                           \
  template cudaError_t tv_loss_forward<T>(const T*, T*, void*, int, int, int, int, cudaStream_t);     \
  template cudaError_t tv_loss_backward<T>(const T*, const T*, T*, int, int, int, int, cudaStream_t);
SGLLIE_FOR_EACH_STORAGE_TYPE(SGLLIE_INSTANTIATE)
#undef SGLLIE_INSTANTIATE

}  // namespace sgllie::cuda
