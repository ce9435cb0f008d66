// LE curve on the CPU: 8 steps of x + r (x^2 - x) per pixel with the align_corners=True bilinear
// upsample of a smaller r fused in. One read of x, one write of y; rows run in parallel.
//
// The upsample is separable: r's rows are first resized along the width (a small (h, W) map per
// plane, built once), then each output row is a blend of two of those rows, a plain vector loop.
// The blend order (columns, then rows) is PyTorch's, so the factors round as the reference's do.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sgllie/cpu_output.h"

#include <algorithm>
#include <vector>

#include "sgllie/cpu_simd.h"
#include "sgllie/math.h"

namespace sgllie {
namespace {

constexpr int64_t kChunk = 256;  // pixels per pass: the chunk and its factors stay in L1

void check_inputs(const at::Tensor& x, const at::Tensor& r, int64_t iterations) {
  TORCH_CHECK(iterations >= 1, "sgllie_C::le_curve: iterations must be >= 1");
  TORCH_CHECK(x.dim() == 4 && r.dim() == 4, "sgllie_C::le_curve: x and r must be 4-D");
  TORCH_CHECK(x.size(0) == r.size(0) && x.size(1) == r.size(1) && r.size(2) <= x.size(2) &&
                  r.size(3) <= x.size(3),
              "sgllie_C::le_curve: r must have x's batch and channels and at most its size");
  TORCH_CHECK(x.scalar_type() == r.scalar_type(), "sgllie_C::le_curve: x and r dtypes differ");
  TORCH_CHECK(x.device().is_cpu() && r.device().is_cpu(), "sgllie_C::le_curve: CPU tensors expected");
}

template <typename T>
std::vector<Lerp<T>> taps(int64_t in_size, int64_t out_size) {
  std::vector<Lerp<T>> t(out_size);
  for (int64_t j = 0; j < out_size; ++j)
    t[j] = align_corners_lerp<T>(static_cast<int>(j), static_cast<int>(in_size), static_cast<int>(out_size));
  return t;
}

// Every row of r (planes * h rows of w) resized to W columns.
template <typename T>
std::vector<T> width_resized(const T* r, int64_t rows, int64_t w, const std::vector<Lerp<T>>& cols) {
  const int64_t W = static_cast<int64_t>(cols.size());
  std::vector<T> out(rows * W);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const T* src = r + k * w;
      T* dst = out.data() + k * W;
      for (int64_t j = 0; j < W; ++j) dst[j] = (T(1) - cols[j].w1) * src[cols[j].i0] + cols[j].w1 * src[cols[j].i1];
    }
  });
  return out;
}

// One output row's factors: r0 (and, when r is upsampled, the blend with r1 by wy), chunk [j0, j0+n).
template <typename T>
SGLLIE_SIMD_INLINE const T* row_factors(const T* r0, const T* r1, T wy, int64_t j0, int64_t n, T* buf) {
  if (r1 == nullptr) return r0 + j0;
  for (int64_t j = 0; j < n; ++j) buf[j] = (T(1) - wy) * r0[j0 + j] + wy * r1[j0 + j];
  return buf;
}

// y = the curve applied `iterations` times to x[0, n), factors rr. Eight vectors at a time with
// every step in registers: eight independent chains keep both FMA pipes busy through the
// 2-FMA-deep dependency of each step.
template <typename T>
SGLLIE_SIMD_INLINE void le_chunk(const T* __restrict__ x, const T* __restrict__ rr, int64_t n, int64_t iterations,
                                 T* __restrict__ y) {
  int64_t j = 0;
#if defined(SGLLIE_HAVE_VEC)
  using V = typename Vec32<T>::type;
  constexpr int64_t kL = sizeof(V) / sizeof(T), kU = 8;
  for (; j + kU * kL <= n; j += kU * kL) {
    V v[kU], r[kU];
    for (int64_t u = 0; u < kU; ++u) {
      v[u] = vload(x + j + u * kL);
      r[u] = vload(rr + j + u * kL);
    }
    for (int64_t k = 0; k < iterations; ++k)
      for (int64_t u = 0; u < kU; ++u) v[u] = le_step(v[u], r[u]);
    for (int64_t u = 0; u < kU; ++u) vstore(y + j + u * kL, v[u]);
  }
#endif
  for (; j < n; ++j) {
    T v = x[j];
    for (int64_t k = 0; k < iterations; ++k) v = le_step(v, rr[j]);
    y[j] = v;
  }
}

template <typename T>
SGLLIE_SIMD_CLONES void le_row(const T* __restrict__ x, const T* r0, const T* r1, T wy, int64_t W,
                               int64_t iterations, T* __restrict__ y) {
  T buf[kChunk];
  for (int64_t j0 = 0; j0 < W; j0 += kChunk) {
    const int64_t n = std::min(kChunk, W - j0);
    le_chunk(x + j0, row_factors(r0, r1, wy, j0, n, buf), n, iterations, y + j0);
  }
}

// Gradients of pixels [0, n) of a chunk: gx, and gr, the gradient of the full-size factors. The
// forward is run again keeping each step's input (in `steps`, iterations x kChunk), then the steps
// are walked back.
template <typename T>
SGLLIE_SIMD_INLINE void le_chunk_backward(const T* __restrict__ g, const T* __restrict__ x, const T* __restrict__ rr,
                                          int64_t n, int64_t iterations, T* __restrict__ gx, T* __restrict__ gr,
                                          T* __restrict__ steps) {
  std::copy(x, x + n, steps);
  for (int64_t k = 1; k < iterations; ++k) {
    const T* __restrict__ prev = steps + (k - 1) * kChunk;
    T* __restrict__ cur = steps + k * kChunk;
    for (int64_t j = 0; j < n; ++j) cur[j] = le_step(prev[j], rr[j]);
  }
  for (int64_t j = 0; j < n; ++j) {
    gr[j] = T(0);
    gx[j] = g[j];
  }
  for (int64_t k = iterations - 1; k >= 0; --k) {
    const T* __restrict__ xk = steps + k * kChunk;
    for (int64_t j = 0; j < n; ++j) {
      gr[j] += gx[j] * le_step_dr(xk[j]);
      gx[j] *= le_step_dx(xk[j], rr[j]);
    }
  }
}

#if defined(SGLLIE_HAVE_VEC)
// The same for kIter steps known at compile time, a vector at a time with every step's input in
// registers; returns how many pixels it did (whole vectors), the rest is le_chunk_backward's.
template <typename T, int kIter>
SGLLIE_SIMD_INLINE int64_t le_chunk_backward_registers(const T* __restrict__ g, const T* __restrict__ x,
                                                       const T* __restrict__ rr, int64_t n, T* __restrict__ gx,
                                                       T* __restrict__ gr) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kL = sizeof(V) / sizeof(T);
  int64_t j = 0;
  for (; j + kL <= n; j += kL) {
    const V r = vload(rr + j);
    V xs[kIter];
    xs[0] = vload(x + j);
    for (int k = 1; k < kIter; ++k) xs[k] = le_step(xs[k - 1], r);
    V gv = vload(g + j), acc = V{} * T(0);
    for (int k = kIter - 1; k >= 0; --k) {
      acc += gv * le_step_dr(xs[k]);
      gv *= le_step_dx(xs[k], r);
    }
    vstore(gx + j, gv);
    vstore(gr + j, acc);
  }
  return j;
}
#endif

// Gradients of one row: gx, and the gradient of the row's full-size factors (gr).
template <typename T>
SGLLIE_SIMD_CLONES void le_row_backward(const T* __restrict__ g, const T* __restrict__ x, const T* r0,
                                        const T* r1, T wy, int64_t W, int64_t iterations, T* __restrict__ gx,
                                        T* __restrict__ gr, T* __restrict__ steps /* iterations * kChunk */) {
  T buf[kChunk];
  for (int64_t j0 = 0; j0 < W; j0 += kChunk) {
    const int64_t n = std::min(kChunk, W - j0);
    const T* rr = row_factors(r0, r1, wy, j0, n, buf);
    int64_t done = 0;
#if defined(SGLLIE_HAVE_VEC)
    if (iterations == 8)  // the method's count
      done = le_chunk_backward_registers<T, 8>(g + j0, x + j0, rr, n, gx + j0, gr + j0);
#endif
    le_chunk_backward(g + j0 + done, x + j0 + done, rr + done, n - done, iterations, gx + j0 + done, gr + j0 + done,
                      steps);
  }
}

// The rows of r (or of its width-resized form) that output row i of a plane blends.
template <typename T>
struct RowSource {
  const T* base;        // r itself (same size) or its width-resized rows
  int64_t h, W;         // rows per plane in `base`, row length
  std::vector<Lerp<T>> rows;  // empty when r has x's size
  void at(int64_t plane, int64_t i, const T** r0, const T** r1, T* wy) const {
    if (rows.empty()) {
      *r0 = base + (plane * h + i) * W;
      *r1 = nullptr;
      *wy = T(0);
      return;
    }
    const Lerp<T>& l = rows[i];
    *r0 = base + (plane * h + l.i0) * W;
    *r1 = base + (plane * h + l.i1) * W;
    *wy = l.w1;
  }
};

at::Tensor le_curve_cpu(const at::Tensor& x_, const at::Tensor& r_, int64_t iterations) {
  check_inputs(x_, r_, iterations);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous();
  at::Tensor y = new_output_like(x);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = r.size(2), w = r.size(3);
  const bool same = h == H && w == W;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::le_curve", [&] {
    const std::vector<scalar_t> wide =
        same ? std::vector<scalar_t>() : width_resized(r.data_ptr<scalar_t>(), planes * h, w, taps<scalar_t>(w, W));
    const RowSource<scalar_t> src{same ? r.data_ptr<scalar_t>() : wide.data(), h, W,
                                  same ? std::vector<Lerp<scalar_t>>() : taps<scalar_t>(h, H)};
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, planes * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const scalar_t *r0, *r1;
        scalar_t wy;
        src.at(idx / H, idx % H, &r0, &r1, &wy);
        le_row(xp + idx * W, r0, r1, wy, W, iterations, yp + idx * W);
      }
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> le_curve_backward_cpu(const at::Tensor& grad_, const at::Tensor& x_,
                                                         const at::Tensor& r_, int64_t iterations) {
  check_inputs(x_, r_, iterations);
  TORCH_CHECK(grad_.sizes() == x_.sizes(), "sgllie_C::le_curve_backward: grad must have x's shape");
  const at::Tensor grad = grad_.contiguous().to(x_.scalar_type()), x = x_.contiguous(), r = r_.contiguous();
  at::Tensor gx = new_output_like(x);
  at::Tensor gr = new_output_like(r);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = r.size(2), w = r.size(3);
  const bool same = h == H && w == W;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::le_curve_backward", [&] {
    const std::vector<Lerp<scalar_t>> cols = same ? std::vector<Lerp<scalar_t>>() : taps<scalar_t>(w, W);
    const std::vector<scalar_t> wide =
        same ? std::vector<scalar_t>() : width_resized(r.data_ptr<scalar_t>(), planes * h, w, cols);
    const RowSource<scalar_t> src{same ? r.data_ptr<scalar_t>() : wide.data(), h, W,
                                  same ? std::vector<Lerp<scalar_t>>() : taps<scalar_t>(h, H)};
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* grp = gr.data_ptr<scalar_t>();
    // Upsampled r: each output row's factor gradient, folded back to r's width (the adjoint of
    // the width resize), is kept per row; a second pass folds the rows in order, per plane.
    std::vector<scalar_t> folded(same ? 0 : planes * H * w);
    at::parallel_for(0, planes * H, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> steps(iterations * kChunk), grow(same ? 0 : W);
      for (int64_t idx = begin; idx < end; ++idx) {
        const scalar_t *r0, *r1;
        scalar_t wy;
        src.at(idx / H, idx % H, &r0, &r1, &wy);
        scalar_t* gr_row = same ? grp + idx * W : grow.data();
        le_row_backward(gp + idx * W, xp + idx * W, r0, r1, wy, W, iterations, gxp + idx * W, gr_row,
                        steps.data());
        if (same) continue;
        scalar_t* f = folded.data() + idx * w;
        std::fill(f, f + w, scalar_t(0));
        for (int64_t j = 0; j < W; ++j) {
          f[cols[j].i0] += (scalar_t(1) - cols[j].w1) * gr_row[j];
          f[cols[j].i1] += cols[j].w1 * gr_row[j];
        }
      }
    });
    if (same) return;
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* out = grp + plane * h * w;
        std::fill(out, out + h * w, scalar_t(0));
        for (int64_t i = 0; i < H; ++i) {  // rows in order: the same sums whatever the threads
          const Lerp<scalar_t>& l = src.rows[i];
          const scalar_t* f = folded.data() + (plane * H + i) * w;
          scalar_t* g0 = out + l.i0 * w;
          scalar_t* g1 = out + l.i1 * w;
          for (int64_t j = 0; j < w; ++j) {
            g0[j] += (scalar_t(1) - l.w1) * f[j];
            g1[j] += l.w1 * f[j];
          }
        }
      }
    });
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgllie_C, CPU, m) {
  m.impl("le_curve", &le_curve_cpu);
  m.impl("le_curve_backward", &le_curve_backward_cpu);
}

}  // namespace sgllie
