// LE curve on the CPU: 8 steps of x + r (x^2 - x) per pixel with the align_corners=True bilinear
// upsample of a smaller r fused in. One read of x and r, one write of y; rows run in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "sgllie/math.h"

namespace sgllie {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& r, int64_t iterations) {
  TORCH_CHECK(iterations >= 1, "sgllie_C::le_curve: iterations must be >= 1");
  TORCH_CHECK(x.dim() == 4 && r.dim() == 4, "sgllie_C::le_curve: x and r must be 4-D");
  TORCH_CHECK(x.size(0) == r.size(0) && x.size(1) == r.size(1) && r.size(2) <= x.size(2) &&
                  r.size(3) <= x.size(3),
              "sgllie_C::le_curve: r must have x's batch and channels and at most its size");
  TORCH_CHECK(x.scalar_type() == r.scalar_type(), "sgllie_C::le_curve: x and r dtypes differ");
  TORCH_CHECK(x.device().is_cpu() && r.device().is_cpu(), "sgllie_C::le_curve: CPU tensors expected");
}

// Column taps from r's width to x's width, shared by every row and plane.
template <typename T>
std::vector<Lerp<T>> column_taps(int64_t w, int64_t W) {
  std::vector<Lerp<T>> taps(W);
  for (int64_t j = 0; j < W; ++j) taps[j] = align_corners_lerp<T>(static_cast<int>(j), w, W);
  return taps;
}

// Row i of the upsampled r of one plane into `out` (W values); `tmp` holds w values.
template <typename T>
void upsampled_row(const T* plane, int64_t h, int64_t w, int64_t H, int64_t i,
                   const std::vector<Lerp<T>>& cols, T* tmp, T* out) {
  const Lerp<T> row = align_corners_lerp<T>(static_cast<int>(i), h, H);
  const T* r0 = plane + row.i0 * w;
  const T* r1 = plane + row.i1 * w;
  const T wy = row.w1;
  for (int64_t j = 0; j < w; ++j) tmp[j] = (T(1) - wy) * r0[j] + wy * r1[j];
  for (size_t j = 0; j < cols.size(); ++j) {
    const T wx = cols[j].w1;
    out[j] = (T(1) - wx) * tmp[cols[j].i0] + wx * tmp[cols[j].i1];
  }
}

at::Tensor le_curve_cpu(const at::Tensor& x_, const at::Tensor& r_, int64_t iterations) {
  check_inputs(x_, r_, iterations);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = r.size(2), w = r.size(3);
  const bool same = h == H && w == W;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::le_curve", [&] {
    const std::vector<Lerp<scalar_t>> cols = column_taps<scalar_t>(w, W);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, planes * H, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> rrow(same ? 0 : W), tmp(same ? 0 : w);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t plane = idx / H, i = idx % H;
        const scalar_t* __restrict__ xr = xp + idx * W;
        scalar_t* __restrict__ yr = yp + idx * W;
        const scalar_t* __restrict__ rr = rp + idx * W;
        if (!same) {
          upsampled_row(rp + plane * h * w, h, w, H, i, cols, tmp.data(), rrow.data());
          rr = rrow.data();
        }
        // step by step over the whole row: each pass is a simple loop the compiler vectorises,
        // and the row stays in cache between passes
        for (int64_t j = 0; j < W; ++j) yr[j] = le_step(xr[j], rr[j]);
        for (int64_t k = 1; k < iterations; ++k)
          for (int64_t j = 0; j < W; ++j) yr[j] = le_step(yr[j], rr[j]);
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
  at::Tensor gx = at::empty_like(x);
  at::Tensor gr = at::zeros_like(r);
  const int64_t planes = x.size(0) * x.size(1), H = x.size(2), W = x.size(3);
  const int64_t h = r.size(2), w = r.size(3);
  const bool same = h == H && w == W;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::le_curve_backward", [&] {
    const std::vector<Lerp<scalar_t>> cols = column_taps<scalar_t>(w, W);
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* grp = gr.data_ptr<scalar_t>();
    // Planes in parallel: the upsample's adjoint scatters every row of a plane into shared rows
    // of the small r, so one plane belongs to one thread (no atomics, deterministic).
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> steps(iterations * W), rrow(W), grow(W), tmp(w);
      for (int64_t plane = begin; plane < end; ++plane) {
        for (int64_t i = 0; i < H; ++i) {
          const int64_t off = (plane * H + i) * W;
          const scalar_t* rr = rp + off;
          if (!same) {
            upsampled_row(rp + plane * h * w, h, w, H, i, cols, tmp.data(), rrow.data());
            rr = rrow.data();
          }
          // forward again, keeping the input of every step
          std::copy(xp + off, xp + off + W, steps.begin());
          for (int64_t k = 1; k < iterations; ++k) {
            const scalar_t* prev = steps.data() + (k - 1) * W;
            scalar_t* cur = steps.data() + k * W;
            for (int64_t j = 0; j < W; ++j) cur[j] = le_step(prev[j], rr[j]);
          }
          scalar_t* g = gxp + off;
          std::copy(gp + off, gp + off + W, g);
          std::fill(grow.begin(), grow.end(), scalar_t(0));
          for (int64_t k = iterations - 1; k >= 0; --k) {
            const scalar_t* xk = steps.data() + k * W;
            for (int64_t j = 0; j < W; ++j) {
              grow[j] += g[j] * le_step_dr(xk[j]);
              g[j] *= le_step_dx(xk[j], rr[j]);
            }
          }
          if (same) {
            std::copy(grow.begin(), grow.end(), grp + off);
            continue;
          }
          // adjoint of upsampled_row: columns, then rows
          std::fill(tmp.begin(), tmp.end(), scalar_t(0));
          for (int64_t j = 0; j < W; ++j) {
            const scalar_t wx = cols[j].w1;
            tmp[cols[j].i0] += (scalar_t(1) - wx) * grow[j];
            tmp[cols[j].i1] += wx * grow[j];
          }
          const Lerp<scalar_t> row = align_corners_lerp<scalar_t>(static_cast<int>(i), h, H);
          const scalar_t wy = row.w1;
          scalar_t* g0 = grp + (plane * h + row.i0) * w;
          scalar_t* g1 = grp + (plane * h + row.i1) * w;
          for (int64_t j = 0; j < w; ++j) {
            g0[j] += (scalar_t(1) - wy) * tmp[j];
            g1[j] += wy * tmp[j];
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
