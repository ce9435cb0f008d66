// Total-variation loss of the factor map on the CPU, forward and backward, each one pass.
// The forward sums per row in double and adds the rows in order: the same result whatever the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sgllie/cpu_output.h"

#include <vector>

namespace sgllie {
namespace {

void check_input(const at::Tensor& r) {
  TORCH_CHECK(r.dim() == 4 && r.size(2) >= 2 && r.size(3) >= 2,
              "sgllie_C::tv_loss: r must be 4-D with H, W >= 2");
  TORCH_CHECK(r.device().is_cpu(), "sgllie_C::tv_loss: CPU tensor expected");
}

at::Tensor tv_loss_cpu(const at::Tensor& r_) {
  check_input(r_);
  const at::Tensor r = r_.contiguous();
  const int64_t n = r.size(0), rows = r.size(0) * r.size(1) * r.size(2), H = r.size(2), W = r.size(3);
  std::vector<double> sum_h(rows), sum_w(rows);
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "sgllie_C::tv_loss", [&] {
    const scalar_t* p = r.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const scalar_t* row = p + idx * W;
        double sw = 0, sh = 0;
        for (int64_t j = 0; j + 1 < W; ++j) {
          const double d = static_cast<double>(row[j + 1]) - row[j];
          sw += d * d;
        }
        if (idx % H != H - 1) {  // the last row of a plane has no row below it
          for (int64_t j = 0; j < W; ++j) {
            const double d = static_cast<double>(row[W + j]) - row[j];
            sh += d * d;
          }
        }
        sum_h[idx] = sh;
        sum_w[idx] = sw;
      }
    });
  });
  double th = 0, tw = 0;
  for (int64_t idx = 0; idx < rows; ++idx) {
    th += sum_h[idx];
    tw += sum_w[idx];
  }
  const double loss = 2.0 * (th / ((H - 1) * W) + tw / (H * (W - 1))) / n;
  return at::scalar_tensor(loss, r.options());
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
    const scalar_t sh = static_cast<scalar_t>(ch), sw = static_cast<scalar_t>(cw);
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t i = idx % H;
        const scalar_t* row = p + idx * W;
        scalar_t* o = out + idx * W;
        for (int64_t j = 0; j < W; ++j) {
          const scalar_t v = row[j];
          scalar_t acc = 0;
          if (i > 0) acc += sh * (v - row[j - W]);
          if (i < H - 1) acc -= sh * (row[j + W] - v);
          if (j > 0) acc += sw * (v - row[j - 1]);
          if (j < W - 1) acc -= sw * (row[j + 1] - v);
          o[j] = acc;
        }
      }
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
