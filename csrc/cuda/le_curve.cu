// le_curve on the GPU. Forward: one thread per 16 bytes of a row (4 floats, 8 halves), r's bilinear
// upsample (align_corners=True, taps rounded as PyTorch's) fused, the steps in registers: one read
// of x, one write of y, r from cache. Backward: the same walk back through the steps, writing
// grad_x; when r is smaller, its full-size gradient (acc precision, workspace) is folded onto r's
// rows and then its columns by two gather kernels (each output element sums its own sources in a
// fixed order: deterministic, no atomics).
#include "launchers.h"
#include "sgllie/math.h"

#include <cstdint>
#include <initializer_list>

namespace sgllie::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte load

template <typename T>
struct alignas(16) Pack {
  T v[kVec<T>];
};

struct RowTaps {
  int i0, i1;
};

// r at (row i, column j) of `plane`: read, or bilinear from (rh, rw) in PyTorch's order.
template <typename T>
struct Factors {
  const T* r;
  int h, w, rh, rw;
  bool upsample;

  __device__ __forceinline__ acc_t<T> at(long long plane, int i, int j, const Lerp<acc_t<T>>& ty) const {
    using A = acc_t<T>;
    if (!upsample) return load(r + (plane * h + i) * w + j);
    const Lerp<A> tx = align_corners_lerp<A>(j, rw, w);
    const T* base = r + plane * rh * rw;
    const A r00 = load(base + ty.i0 * rw + tx.i0), r01 = load(base + ty.i0 * rw + tx.i1);
    const A r10 = load(base + ty.i1 * rw + tx.i0), r11 = load(base + ty.i1 * rw + tx.i1);
    return (A(1) - ty.w1) * ((A(1) - tx.w1) * r00 + tx.w1 * r01) + ty.w1 * ((A(1) - tx.w1) * r10 + tx.w1 * r11);
  }
};

// The kVec columns of one row this thread owns: [j0, j0 + kVec) clipped to w; vector access when
// the whole pack is inside the row and `aligned` (every row start 16-byte aligned).
template <typename T>
__device__ __forceinline__ void load_pack(const T* row, int j0, int w, bool aligned, acc_t<T>* out) {
  if (aligned && j0 + kVec<T> <= w) {
    const Pack<T> p = *reinterpret_cast<const Pack<T>*>(row + j0);
    for (int k = 0; k < kVec<T>; ++k) out[k] = to_acc(p.v[k]);
  } else {
    for (int k = 0; k < kVec<T>; ++k) out[k] = j0 + k < w ? load(row + j0 + k) : acc_t<T>(0);
  }
}

template <typename T>
__device__ __forceinline__ void store_pack(T* row, int j0, int w, bool aligned, const acc_t<T>* in) {
  if (aligned && j0 + kVec<T> <= w) {
    Pack<T> p;
    for (int k = 0; k < kVec<T>; ++k) p.v[k] = cast<T>(in[k]);
    *reinterpret_cast<Pack<T>*>(row + j0) = p;
  } else {
    for (int k = 0; k < kVec<T>; ++k)
      if (j0 + k < w) row[j0 + k] = cast<T>(in[k]);
  }
}

// This thread's pack in a (planes * h rows, column packs / kThreads) grid: where it starts in x, and
// r at its columns (read, or upsampled with the row's taps computed once).
template <typename T>
struct PackSite {
  const Factors<T>& f;
  long long row, plane;
  int i, j0;
  Lerp<acc_t<T>> ty;

  __device__ __forceinline__ explicit PackSite(const Factors<T>& factors)
      : f(factors), row(blockIdx.x), plane(row / f.h), i(static_cast<int>(row % f.h)),
        j0(static_cast<int>((blockIdx.y * kThreads + threadIdx.x) * kVec<T>)),
        ty(f.upsample ? align_corners_lerp<acc_t<T>>(i, f.rh, f.h) : Lerp<acc_t<T>>{0, 0, acc_t<T>(0)}) {}

  __device__ __forceinline__ long long offset() const { return row * f.w; }  // of the row in x
  __device__ __forceinline__ acc_t<T> factor(int k) const {
    return j0 + k < f.w ? f.at(plane, i, j0 + k, ty) : acc_t<T>(0);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads) le_curve_fwd(const T* __restrict__ x, Factors<T> f,
                                                         T* __restrict__ y, int iterations, bool aligned) {
  using A = acc_t<T>;
  const PackSite<T> site(f);
  if (site.j0 >= f.w) return;
  A v[kVec<T>];
  load_pack(x + site.offset(), site.j0, f.w, aligned, v);
  for (int k = 0; k < kVec<T>; ++k) {
    const A r = site.factor(k);
    A xk = v[k];
    for (int t = 0; t < iterations; ++t) xk = le_step(xk, r);
    v[k] = xk;
  }
  store_pack(y + site.offset(), site.j0, f.w, aligned, v);
}

// grad_x, and r's gradient at full size into gr (T when r has x's size, else acc_t<T> workspace).
template <typename T, typename G>
__global__ void __launch_bounds__(kThreads) le_curve_bwd(const T* __restrict__ grad, const T* __restrict__ x,
                                                         Factors<T> f, T* __restrict__ gx, G* __restrict__ gr,
                                                         int iterations, bool aligned) {
  using A = acc_t<T>;
  const PackSite<T> site(f);
  if (site.j0 >= f.w) return;
  A xv[kVec<T>], g[kVec<T>], gsum[kVec<T>];
  load_pack(x + site.offset(), site.j0, f.w, aligned, xv);
  load_pack(grad + site.offset(), site.j0, f.w, aligned, g);
  for (int k = 0; k < kVec<T>; ++k) {
    const A r = site.factor(k);
    A acc = 0, gk = g[k];
    // walk back: step t's input is recomputed from x (registers only; 36 cheap steps for 8)
    for (int t = iterations - 1; t >= 0; --t) {
      A xt = xv[k];
      for (int s = 0; s < t; ++s) xt = le_step(xt, r);
      acc += gk * le_step_dr(xt);
      gk *= le_step_dx(xt, r);
    }
    g[k] = gk;
    gsum[k] = acc;
  }
  store_pack(gx + site.offset(), site.j0, f.w, aligned, g);
  G* gr_row = gr + site.offset();
  for (int k = 0; k < kVec<T>; ++k)
    if (site.j0 + k < f.w) gr_row[site.j0 + k] = cast<G>(gsum[k]);
}

// The adjoint of one align_corners resize along an axis: the sum, over the `full`-axis positions i
// whose taps include `target` of the `small` axis, of their tap weight times g[i * stride]. Those i
// lie within one source step of target: i in [(target - 1) / s, (target + 1) / s].
template <typename A>
__device__ __forceinline__ A fold(const A* g, long long stride, int target, int small, int full) {
  const A s = full > 1 ? A(small - 1) / A(full - 1) : A(0);
  const int lo = s > 0 ? max(static_cast<int>(A(target - 1) / s) - 1, 0) : 0;
  const int hi = s > 0 ? min(static_cast<int>(A(target + 1) / s) + 2, full) : full;
  A acc = 0;
  for (int i = lo; i < hi; ++i) {
    const Lerp<A> t = align_corners_lerp<A>(i, small, full);
    const A weight = (t.i0 == target ? A(1) - t.w1 : A(0)) + (t.i1 == target ? t.w1 : A(0));
    if (weight != A(0)) acc += weight * g[i * stride];
  }
  return acc;
}

// Full-size rows folded onto r's rows. grid: (planes * rh, w / kThreads)
template <typename A>
__global__ void __launch_bounds__(kThreads) fold_rows(const A* __restrict__ g, A* __restrict__ out, int h,
                                                      int w, int rh) {
  const long long prow = blockIdx.x, plane = prow / rh;
  const int j = blockIdx.y * kThreads + threadIdx.x;
  if (j < w) out[prow * w + j] = fold(g + plane * h * w + j, w, static_cast<int>(prow % rh), rh, h);
}

// Then their columns onto r's columns. grid: (planes * rh, rw / kThreads)
template <typename T>
__global__ void __launch_bounds__(kThreads) fold_cols(const acc_t<T>* __restrict__ g, T* __restrict__ out,
                                                      int w, int rw) {
  const long long row = blockIdx.x;
  const int q = blockIdx.y * kThreads + threadIdx.x;
  if (q < rw) out[row * rw + q] = cast<T>(fold(g + row * w, 1, q, rw, w));
}

template <typename T>
bool rows_aligned(std::initializer_list<const void*> ptrs, int w) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return w % kVec<T> == 0;
}

template <typename T>
dim3 row_grid(CurveShape s) {
  const long long packs = (s.w + kVec<T> - 1) / kVec<T>;
  return dim3(static_cast<unsigned>(static_cast<long long>(s.planes) * s.h), blocks_for(packs, kThreads));
}

size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

}  // namespace

template <typename T>
cudaError_t le_curve_forward(const T* x, const T* r, T* y, CurveShape s, int iterations, cudaStream_t stream) {
  const Factors<T> f{r, s.h, s.w, s.rh, s.rw, s.rh != s.h || s.rw != s.w};
  SGLLIE_LAUNCH(row_grid<T>(s), dim3(kThreads), stream, le_curve_fwd<T>)(
      x, f, y, iterations, rows_aligned<T>({x, y}, s.w));
  return SGLLIE_LAUNCH_STATUS();
}

template <typename T>
size_t le_curve_backward_workspace(CurveShape s) {
  if (s.rh == s.h && s.rw == s.w) return 0;
  const size_t full = static_cast<size_t>(s.planes) * s.h * s.w, rows = static_cast<size_t>(s.planes) * s.rh * s.w;
  return align16(full * sizeof(acc_t<T>)) + align16(rows * sizeof(acc_t<T>));
}

template <typename T>
cudaError_t le_curve_backward(const T* grad, const T* x, const T* r, T* grad_x, T* grad_r, void* workspace,
                              CurveShape s, int iterations, cudaStream_t stream) {
  using A = acc_t<T>;
  const Factors<T> f{r, s.h, s.w, s.rh, s.rw, s.rh != s.h || s.rw != s.w};
  const bool aligned = rows_aligned<T>({grad, x, grad_x}, s.w);
  if (!f.upsample) {
    SGLLIE_LAUNCH(row_grid<T>(s), dim3(kThreads), stream, le_curve_bwd<T, T>)(
        grad, x, f, grad_x, grad_r, iterations, aligned);
    return SGLLIE_LAUNCH_STATUS();
  }
  A* full = static_cast<A*>(workspace);
  A* rows = reinterpret_cast<A*>(static_cast<char*>(workspace) +
                                 align16(static_cast<size_t>(s.planes) * s.h * s.w * sizeof(A)));
  SGLLIE_LAUNCH(row_grid<T>(s), dim3(kThreads), stream, le_curve_bwd<T, A>)(
      grad, x, f, grad_x, full, iterations, aligned);
  SGLLIE_LAUNCH(dim3(static_cast<unsigned>(static_cast<long long>(s.planes) * s.rh), blocks_for(s.w, kThreads)),
                dim3(kThreads), stream, fold_rows<A>)(full, rows, s.h, s.w, s.rh);
  SGLLIE_LAUNCH(dim3(static_cast<unsigned>(static_cast<long long>(s.planes) * s.rh), blocks_for(s.rw, kThreads)),
                dim3(kThreads), stream, fold_cols<T>)(rows, grad_r, s.w, s.rw);
  return SGLLIE_LAUNCH_STATUS();
}

#define SGLLIE_INSTANTIATE(T)                                                                              \
  template cudaError_t le_curve_forward<T>(const T*, const T*, T*, CurveShape, int, cudaStream_t);         \
  template size_t le_curve_backward_workspace<T>(CurveShape);                                              \
  template cudaError_t le_curve_backward<T>(const T*, const T*, const T*, T*, T*, void*, CurveShape, int,  \
                                            cudaStream_t);
SGLLIE_FOR_EACH_STORAGE_TYPE(SGLLIE_INSTANTIATE)
#undef SGLLIE_INSTANTIATE

}  // namespace sgllie::cuda
