// Total-variation loss of the factor map on the CPU, forward and backward, each one pass.
// The forward sums per row in double and adds the rows in order: the same result whatever the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sgllie/cpu_output.h"
#include "sgllie/cpu_simd.h"

#include <vector>

namespace sgllie {
namespace {

void check_input(const at::Tensor& r) {
  TORCH_CHECK(r.dim() == 4 && r.size(2) >= 2 && r.size(3) >= 2,
              "sgllie_C::tv_loss: r must be 4-D with H, W >= 2");
  TORCH_CHECK(r.device().is_cpu(), "sgllie_C::tv_loss: CPU tensor expected");
}

// Sum of (b[j] - a[j])^2 over j < n: lane by lane in T (vectorised, same order every run), then
// double for the running sums.
template <typename T>
SGLLIE_SIMD_INLINE double squared_differences(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += (b[j] - a[j]) * (b[j] - a[j]);
  return static_cast<double>(s);
}

// Row sums of the squared differences to the right (sw) and, except on a plane's last row, below (sh).
template <typename T>
SGLLIE_SIMD_CLONES void tv_row(const T* row, int64_t W, bool has_below, double* sh, double* sw) {
  *sw = squared_differences(row, row + 1, W - 1);
  *sh = has_below ? squared_differences(row, row + W, W) : 0.0;
}

at::Tensor tv_loss_cpu(const at::Tensor& r_) {
  check_input(r_);
  const at::Tensor r = r_.contiguous();
  const int64_t n = r.size(0), rows = r.size(0) * r.size(1) * r.size(2), H = r.size(2), W = r.size(3);
  std::vector<double> sum_h(rows), sum_w(rows);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "sgllie_C::tv_loss", [&] {
    const scalar_t* p = r.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx)
        tv_row(p + idx * W, W, idx % H != H - 1, &sum_h[idx], &sum_w[idx]);
    });
  });
  double th = 0, tw = 0;
  for (int64_t idx = 0; idx < rows; ++idx) {  // rows in order: the same sum whatever the threads
    th += sum_h[idx];
    tw += sum_w[idx];
  }
  const double loss = 2.0 * (th / ((H - 1) * W) + tw / (H * (W - 1))) / n;
  return at::scalar_tensor(loss, r.options());
}

// dL/dr of row i of a plane: sh (v - above) - sh (below - v) + sw (v - left) - sw (right - v), the
// terms whose neighbour lies outside the plane dropped. Interior columns branch-free.
template <typename T>
SGLLIE_SIMD_CLONES void tv_backward_row(const T* row, int64_t W, bool has_above, bool has_below, T sh, T sw,
                                        T* __restrict__ o) {
  const T* above = has_above ? row - W : row;  // a missing neighbour = v: its term vanishes
  const T* below = has_below ? row + W : row;
  for (int64_t j = 0; j < W; ++j) o[j] = sh * (row[j] - above[j]) - sh * (below[j] - row[j]);
  for (int64_t j = 1; j + 1 < W; ++j) o[j] += sw * (row[j] - row[j - 1]) - sw * (row[j + 1] - row[j]);
  o[0] -= sw * (row[1] - row[0]);
  o[W - 1] += sw * (row[W - 1] - row[W - 2]);
}

at::Tensor tv_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& r_) {
  check_input(r_);
  const at::Tensor r = r_.contiguous();
  at::Tensor g = new_output_like(r);
  const int64_t n = r.size(0), rows = r.size(0) * r.size(1) * r.size(2), H = r.size(2), W = r.size(3);
  const double gv = grad.item<double>();
  const double ch = 4.0 * gv / ((H - 1) * W * n), cw = 4.0 * gv / (H * (W - 1) * n);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "sgllie_C::tv_loss_backward", [&] {
    const scalar_t* p = r.data_ptr<scalar_t>();
    scalar_t* out = g.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx)
        tv_backward_row(p + idx * W, W, idx % H > 0, idx % H < H - 1, static_cast<scalar_t>(ch),
                        static_cast<scalar_t>(cw), out + idx * W);
    });
  });
  return g;
}

}  // namespace

TORCH_LIBRARY_IMPL(sgllie_C, CPU, m) {
  m.impl("tv_loss", &tv_loss_cpu);
  m.impl("tv_loss_backward", &tv_loss_backward_cpu);
}

}  // namespace sgllie
