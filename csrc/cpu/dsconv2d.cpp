// Depthwise-separable conv on the CPU, forward: per output row, the 3x3 depthwise rows of every
// input channel (read from x and, for the model's skips, x2: the concatenation is never built)
// stay in a small buffer, and the 1x1 pointwise conv, bias and ReLU are applied to it in place.
// One read of the inputs (rows re-read from cache), one write of the output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace sgllie {
namespace {

at::Tensor dsconv2d_cpu(const at::Tensor& x_, const std::optional<at::Tensor>& x2_, const at::Tensor& dw_weight,
                        const at::Tensor& dw_bias, const at::Tensor& pw_weight, const at::Tensor& pw_bias,
                        bool relu) {
  const at::Tensor x = x_.contiguous();
  const at::Tensor x2 = x2_.has_value() ? x2_->contiguous() : at::Tensor();
  const int64_t n = x.size(0), c1 = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t c2 = x2.defined() ? x2.size(1) : 0, C = c1 + c2, O = pw_weight.size(0);
  TORCH_CHECK(dw_weight.numel() == C * 9 && dw_bias.numel() == C && pw_weight.numel() == O * C &&
                  pw_bias.numel() == O,
              "sgllie_C::dsconv2d: weight shapes do not match the input channels");
  TORCH_CHECK(!x2.defined() || (x2.size(0) == n && x2.size(2) == H && x2.size(3) == W),
              "sgllie_C::dsconv2d: x2 must match x outside the channel dimension");
  const at::Tensor dw = dw_weight.contiguous(), db = dw_bias.contiguous();
  const at::Tensor pw = pw_weight.contiguous(), pb = pw_bias.contiguous();
  at::Tensor y = at::empty({n, O, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::dsconv2d", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* x2p = x2.defined() ? x2.data_ptr<scalar_t>() : nullptr;
    const scalar_t* dwp = dw.data_ptr<scalar_t>();
    const scalar_t* dbp = db.data_ptr<scalar_t>();
    const scalar_t* pwp = pw.data_ptr<scalar_t>();
    const scalar_t* pbp = pb.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n * H, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> z(C * W);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / H, r = idx % H;
        for (int64_t c = 0; c < C; ++c) {  // depthwise 3x3, zero padding
          const scalar_t* plane = c < c1 ? xp + (b * c1 + c) * H * W : x2p + (b * c2 + c - c1) * H * W;
          const scalar_t* k = dwp + c * 9;
          scalar_t* __restrict__ zr = z.data() + c * W;
          std::fill(zr, zr + W, dbp[c]);
          for (int64_t dy = -1; dy <= 1; ++dy) {
            if (r + dy < 0 || r + dy >= H) continue;
            const scalar_t* __restrict__ row = plane + (r + dy) * W;
            const scalar_t k0 = k[(dy + 1) * 3], k1 = k[(dy + 1) * 3 + 1], k2 = k[(dy + 1) * 3 + 2];
            for (int64_t j = 0; j < W; ++j) zr[j] += k1 * row[j];
            for (int64_t j = 1; j < W; ++j) zr[j] += k0 * row[j - 1];
            for (int64_t j = 0; j + 1 < W; ++j) zr[j] += k2 * row[j + 1];
          }
        }
        for (int64_t o = 0; o < O; ++o) {  // pointwise 1x1: out row = bias + sum_c w[o, c] z[c]
          scalar_t* __restrict__ out = yp + ((b * O + o) * H + r) * W;
          std::fill(out, out + W, pbp[o]);
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t w = pwp[o * C + c];
            const scalar_t* __restrict__ zr = z.data() + c * W;
            for (int64_t j = 0; j < W; ++j) out[j] += w * zr[j];
          }
          if (relu)
            for (int64_t j = 0; j < W; ++j) out[j] = out[j] > scalar_t(0) ? out[j] : scalar_t(0);
        }
      }
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(sgllie_C, CPU, m) { m.impl("dsconv2d", &dsconv2d_cpu); }

}  // namespace sgllie
