// Depthwise-separable conv on the CPU, forward: per output row, the 3x3 depthwise rows of every
// input channel (read from x and, for the model's skips, x2: the concatenation is never built)
// stay in a small buffer, and the 1x1 pointwise conv, bias and ReLU are applied to it in place.
// One read of the inputs (rows re-read from cache), one write of the output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sgllie/cpu_output.h"
#include "sgllie/cpu_simd.h"

#include <vector>

namespace sgllie {
namespace {

// The input channels of one image, read from x (first c1) and x2 (next c2): the concatenation the
// model's skips need, never built.
template <typename T>
struct Inputs {
  const T* x;
  const T* x2;
  int64_t c1, c2, H, W;
  const T* plane(int64_t b, int64_t c) const {
    return c < c1 ? x + (b * c1 + c) * H * W : x2 + (b * c2 + c - c1) * H * W;
  }
};

// One pixel j of a depthwise 3x3 row (zero padding), rows[0..2] the rows above, at and below r
// (null outside the image).
template <typename T>
SGLLIE_SIMD_INLINE T depthwise_pixel(const T* const rows[3], const T* k, T bias, int64_t j, int64_t W) {
  T acc = bias;
  for (int dy = 0; dy < 3; ++dy) {
    if (rows[dy] == nullptr) continue;
    if (j > 0) acc += k[dy * 3] * rows[dy][j - 1];
    acc += k[dy * 3 + 1] * rows[dy][j];
    if (j + 1 < W) acc += k[dy * 3 + 2] * rows[dy][j + 1];
  }
  return acc;
}

#if defined(SGLLIE_HAVE_VEC)
// Pixels [1, W - 1) of a depthwise row from the kRows input rows inside the image (rows[q], taps
// k[q]), a vector at a time: the 3 * kRows taps stay in registers, and the three column taps
// accumulate in separate registers (short dependency chains). W >= one vector + 2.
template <typename T, int kRows>
SGLLIE_SIMD_INLINE void depthwise_interior(const T* const* rows, const T* const* k, T bias, int64_t W,
                                           T* __restrict__ zr) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kL = sizeof(V) / sizeof(T);
  const V zero = V{} * T(0);
  V kv[kRows][3];
  for (int q = 0; q < kRows; ++q)
    for (int t = 0; t < 3; ++t) kv[q][t] = zero + k[q][t];
  const auto tile = [&](int64_t j) SGLLIE_SIMD_INLINE_LAMBDA {
    V a0 = zero + bias, a1 = zero, a2 = zero;
    for (int q = 0; q < kRows; ++q) {
      a0 += kv[q][0] * vload(rows[q] + j - 1);
      a1 += kv[q][1] * vload(rows[q] + j);
      a2 += kv[q][2] * vload(rows[q] + j + 1);
    }
    vstore(zr + j, a0 + a1 + a2);
  };
  int64_t j = 1;
  for (; j + kL + 1 <= W; j += kL) tile(j);
  if (j < W - 1) tile(W - 1 - kL);  // the ragged end, overlapping (same values)
}
#endif

// z[c, :] = depthwise 3x3 (zero padding) + bias of row r, for every channel c: the interior a
// vector at a time, the two border pixels (and rows narrower than a vector) one by one.
template <typename T>
SGLLIE_SIMD_CLONES void depthwise_rows(const Inputs<T>& in, int64_t b, int64_t r, const T* dw, const T* db, T* z) {
  const int64_t W = in.W;
  for (int64_t c = 0; c < in.c1 + in.c2; ++c) {
    const T* plane = in.plane(b, c);
    const T* k = dw + c * 9;
    const T* rows[3];
    for (int dy = 0; dy < 3; ++dy) rows[dy] = r + dy - 1 >= 0 && r + dy - 1 < in.H ? plane + (r + dy - 1) * W : nullptr;
    T* __restrict__ zr = z + c * W;
#if defined(SGLLIE_HAVE_VEC)
    if (W >= static_cast<int64_t>(32 / sizeof(T)) + 2) {
      const T* inside[3];
      const T* taps[3];
      int n = 0;
      for (int dy = 0; dy < 3; ++dy)
        if (rows[dy] != nullptr) {
          inside[n] = rows[dy];
          taps[n++] = k + dy * 3;
        }
      if (n == 3) depthwise_interior<T, 3>(inside, taps, db[c], W, zr);
      else if (n == 2) depthwise_interior<T, 2>(inside, taps, db[c], W, zr);
      else depthwise_interior<T, 1>(inside, taps, db[c], W, zr);
      zr[0] = depthwise_pixel(rows, k, db[c], 0, W);
      zr[W - 1] = depthwise_pixel(rows, k, db[c], W - 1, W);
      continue;
    }
#endif
    for (int64_t j = 0; j < W; ++j) zr[j] = depthwise_pixel(rows, k, db[c], j, W);
  }
}

#if defined(SGLLIE_HAVE_VEC)
// Output channels [0, kO) x pixels [j, j + 2 vectors) of the 1x1 conv of one row (see
// pointwise_block), accumulated in registers over the input channels: one load of z feeds kO
// multiply-adds, so the loop runs at FMA speed rather than at load/store speed (the compiler does
// not find this blocking by itself).
template <typename T, int kO>
SGLLIE_SIMD_INLINE void pointwise_tile(const T* __restrict__ z, const T* __restrict__ w, const T* __restrict__ bias,
                                       int64_t C, int64_t W, bool relu, T* __restrict__ out, int64_t stride, int64_t j) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kL = sizeof(V) / sizeof(T);  // lanes
  const V zero = V{} * T(0);
  V a0[kO], a1[kO];
  for (int k = 0; k < kO; ++k) a0[k] = a1[k] = zero + bias[k];
  for (int64_t c = 0; c < C; ++c) {
    const V z0 = vload(z + c * W + j), z1 = vload(z + c * W + j + kL);
    for (int k = 0; k < kO; ++k) {
      const T wk = w[k * C + c];
      a0[k] += wk * z0;
      a1[k] += wk * z1;
    }
  }
  for (int k = 0; k < kO; ++k) {
    if (relu) {
      a0[k] = a0[k] < zero ? zero : a0[k];
      a1[k] = a1[k] < zero ? zero : a1[k];
    }
    vstore(out + k * stride + j, a0[k]);
    vstore(out + k * stride + j + kL, a1[k]);
  }
}
#endif

// Output channels [0, kO) of the 1x1 conv of one row: out[k * stride + j] = bias[k] +
// sum_c w[k * C + c] z[c * W + j], then ReLU if asked.
template <typename T, int kO>
SGLLIE_SIMD_INLINE void pointwise_block(const T* __restrict__ z, const T* __restrict__ w, const T* __restrict__ bias,
                                        int64_t C, int64_t W, bool relu, T* __restrict__ out, int64_t stride) {
  int64_t j0 = 0;
#if defined(SGLLIE_HAVE_VEC)
  constexpr int64_t kTile = 2 * 32 / sizeof(T);
  for (; j0 + kTile <= W; j0 += kTile) pointwise_tile<T, kO>(z, w, bias, C, W, relu, out, stride, j0);
  if (j0 < W && W >= kTile) {  // the ragged end: one more tile ending at W, overlapping (same values)
    pointwise_tile<T, kO>(z, w, bias, C, W, relu, out, stride, W - kTile);
    j0 = W;
  }
#endif
  for (; j0 < W; ++j0)
    for (int k = 0; k < kO; ++k) {
      T a = bias[k];
      for (int64_t c = 0; c < C; ++c) a += w[k * C + c] * z[c * W + j0];
      out[k * stride + j0] = relu && a < T(0) ? T(0) : a;
    }
}

// The 1x1 conv of one row for every output channel o (row o at out + o * stride), + bias, ReLU.
template <typename T>
SGLLIE_SIMD_CLONES void pointwise_rows(const T* z, const T* w, const T* bias, int64_t C, int64_t O, int64_t W,
                                       bool relu, T* out, int64_t stride) {
  int64_t o = 0;
  for (; o + 4 <= O; o += 4) pointwise_block<T, 4>(z, w + o * C, bias + o, C, W, relu, out + o * stride, stride);
  for (; o < O; ++o) pointwise_block<T, 1>(z, w + o * C, bias + o, C, W, relu, out + o * stride, stride);
}

// The schema's activation (0 none, 1 relu, 2 tanh): the CPU kernels apply none or ReLU; the cpu
// backend applies SGZ's tanh (one 3-channel layer) as its own pass.
bool cpu_relu(int64_t activation) {
  TORCH_CHECK(activation == 0 || activation == 1, "sgllie_C::dsconv2d on CPU: activation 0 (none) or 1 (relu), got ",
              activation);
  return activation == 1;
}

at::Tensor dsconv2d_cpu(const at::Tensor& x_, const std::optional<at::Tensor>& x2_, const at::Tensor& dw_weight,
                        const at::Tensor& dw_bias, const at::Tensor& pw_weight, const at::Tensor& pw_bias,
                        int64_t activation) {
  const bool relu = cpu_relu(activation);
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
  at::Tensor y = new_output({n, O, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::dsconv2d", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* x2p = x2.defined() ? x2.data_ptr<scalar_t>() : nullptr;
    const scalar_t* dwp = dw.data_ptr<scalar_t>();
    const scalar_t* dbp = db.data_ptr<scalar_t>();
    const scalar_t* pwp = pw.data_ptr<scalar_t>();
    const scalar_t* pbp = pb.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const Inputs<scalar_t> in{xp, x2p, c1, c2, H, W};
    at::parallel_for(0, n * H, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> z(C * W);
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t b = idx / H, r = idx % H;
        depthwise_rows(in, b, r, dwp, dbp, z.data());
        pointwise_rows(z.data(), pwp, pbp, C, O, W, relu, yp + (b * O * H + r) * W, H * W);
      }
    });
  });
  return y;
}

// Sum of a[j] * b[j] (or of a[j] when b is null): in T within the row, lane by lane (vectorised, and
// the same order on every run), returned in double for the caller's running sums.
template <typename T>
SGLLIE_SIMD_INLINE double row_dot(const T* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j] * b[j];
  return static_cast<double>(s);
}

template <typename T>
SGLLIE_SIMD_INLINE double row_sum(const T* __restrict__ a, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += a[j];
  return static_cast<double>(s);
}

// Weight-gradient sums of one block of the backward: pointwise weights and biases, depthwise
// weights and biases (laid out in that order in one buffer).
struct ParamGrads {
  double *pw, *pb, *dw, *db;
};

// Pass 1 of the backward for row r of image b: recompute z (and the ReLU mask), add this row's
// parameter gradients to `acc`, and write gz = W^T g for the row. z, g and y are scratch rows.
template <typename T>
SGLLIE_SIMD_CLONES void backward_row(const Inputs<T>& in, int64_t b, int64_t r, const T* dw, const T* db,
                                     const T* pw, const T* pb, const T* grad, int64_t O, bool relu,
                                     ParamGrads acc, T* __restrict__ z, T* __restrict__ g, T* __restrict__ y,
                                     T* gz) {
  const int64_t C = in.c1 + in.c2, H = in.H, W = in.W;
  depthwise_rows(in, b, r, dw, db, z);
  if (relu) pointwise_rows(z, pw, pb, C, O, W, false, y, W);  // the mask needs the pre-activation
  for (int64_t o = 0; o < O; ++o) {
    T* __restrict__ go = g + o * W;
    std::copy(grad + ((b * O + o) * H + r) * W, grad + ((b * O + o) * H + r + 1) * W, go);
    if (relu)
      for (int64_t j = 0; j < W; ++j) go[j] = y[o * W + j] > T(0) ? go[j] : T(0);
    acc.pb[o] += row_sum(go, W);
    for (int64_t c = 0; c < C; ++c) acc.pw[o * C + c] += row_dot(go, z + c * W, W);
  }
  for (int64_t c = 0; c < C; ++c) {  // gz = W^T g, then the depthwise parameter gradients
    T* __restrict__ gzr = gz + ((b * C + c) * H + r) * W;
    std::fill(gzr, gzr + W, T(0));
    for (int64_t o = 0; o < O; ++o) {
      const T w = pw[o * C + c];
      const T* __restrict__ go = g + o * W;
      for (int64_t j = 0; j < W; ++j) gzr[j] += w * go[j];
    }
    acc.db[c] += row_sum(gzr, W);
    const T* plane = in.plane(b, c);
    for (int64_t dy = -1; dy <= 1; ++dy) {
      if (r + dy < 0 || r + dy >= H) continue;
      const T* row = plane + (r + dy) * W;
      double* k = acc.dw + c * 9 + (dy + 1) * 3;
      k[0] += row_dot(gzr + 1, row, W - 1);  // dx = -1: gz[j] x[j - 1]
      k[1] += row_dot(gzr, row, W);
      k[2] += row_dot(gzr, row + 1, W - 1);  // dx = +1: gz[j] x[j + 1]
    }
  }
}

// Pass 2 for one row of one channel: out[j] = sum_{dy, dx} k[dy, dx] gz[r - dy, j - dx] (the
// transposed depthwise conv).
template <typename T>
SGLLIE_SIMD_CLONES void depthwise_transposed_row(const T* gz_plane, const T* k, int64_t r, int64_t H, int64_t W,
                                                 T* __restrict__ out) {
  std::fill(out, out + W, T(0));
  for (int64_t dy = -1; dy <= 1; ++dy) {
    if (r - dy < 0 || r - dy >= H) continue;
    const T* __restrict__ gzr = gz_plane + (r - dy) * W;
    const T k0 = k[(dy + 1) * 3], k1 = k[(dy + 1) * 3 + 1], k2 = k[(dy + 1) * 3 + 2];
    for (int64_t j = 0; j < W; ++j) out[j] += k1 * gzr[j];
    for (int64_t j = 1; j < W; ++j) out[j] += k2 * gzr[j - 1];      // dx = +1: gz[j - 1]
    for (int64_t j = 0; j + 1 < W; ++j) out[j] += k0 * gzr[j + 1];  // dx = -1: gz[j + 1]
  }
}

// Backward in two passes over rows. Pass 1, per row: backward_row (parameter gradients and gz,
// which is kept). Pass 2: grad of the inputs = the transposed depthwise conv of gz. Parameter
// gradients are summed per row in T, per fixed block of rows in double, then the blocks in order:
// deterministic whatever the number of threads.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dsconv2d_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& x_, const std::optional<at::Tensor>& x2_,
    const at::Tensor& dw_weight, const at::Tensor& dw_bias, const at::Tensor& pw_weight,
    const at::Tensor& pw_bias, int64_t activation) {
  const bool relu = cpu_relu(activation);
  const at::Tensor x = x_.contiguous();
  const at::Tensor x2 = x2_.has_value() ? x2_->contiguous() : at::Tensor();
  const int64_t n = x.size(0), c1 = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t c2 = x2.defined() ? x2.size(1) : 0, C = c1 + c2, O = pw_weight.size(0);
  const at::Tensor grad = grad_.contiguous().to(x.scalar_type());
  TORCH_CHECK(grad.size(0) == n && grad.size(1) == O && grad.size(2) == H && grad.size(3) == W,
              "sgllie_C::dsconv2d_backward: grad has the wrong shape");
  const at::Tensor dw = dw_weight.contiguous(), db = dw_bias.contiguous();
  const at::Tensor pw = pw_weight.contiguous(), pb = pw_bias.contiguous();
  at::Tensor gz_all = new_output({n, C, H, W}, x.options());
  at::Tensor gx = new_output_like(x);
  at::Tensor gx2 = x2.defined() ? new_output_like(x2) : at::empty({0}, x.options());
  constexpr int64_t kBlock = 8;  // rows per partial sum
  const int64_t blocks = (n * H + kBlock - 1) / kBlock;
  const int64_t per_block = O * C + O + C * 9 + C;  // gpw, gpb, gdw, gdb
  std::vector<double> partial(blocks * per_block, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sgllie_C::dsconv2d_backward", [&] {
    const Inputs<scalar_t> in{x.data_ptr<scalar_t>(), x2.defined() ? x2.data_ptr<scalar_t>() : nullptr,
                              c1, c2, H, W};
    const scalar_t* dwp = dw.data_ptr<scalar_t>();
    const scalar_t* pwp = pw.data_ptr<scalar_t>();
    scalar_t* gzp = gz_all.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> z(C * W), g(O * W), y(relu ? O * W : 0);
      for (int64_t blk = begin; blk < end; ++blk) {
        double* a = partial.data() + blk * per_block;
        const ParamGrads acc{a, a + O * C, a + O * C + O, a + O * C + O + C * 9};
        for (int64_t idx = blk * kBlock; idx < std::min((blk + 1) * kBlock, n * H); ++idx)
          backward_row(in, idx / H, idx % H, dwp, db.data_ptr<scalar_t>(), pwp, pb.data_ptr<scalar_t>(),
                       grad.data_ptr<scalar_t>(), O, relu, acc, z.data(), g.data(), y.data(), gzp);
      }
    });
    scalar_t* gxp = gx.data_ptr<scalar_t>();
    scalar_t* gx2p = x2.defined() ? gx2.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n * C * H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t r = idx % H, c = (idx / H) % C, b = idx / (C * H);
        scalar_t* out = c < c1 ? gxp + ((b * c1 + c) * H + r) * W : gx2p + ((b * c2 + c - c1) * H + r) * W;
        depthwise_transposed_row(gzp + (b * C + c) * H * W, dwp + c * 9, r, H, W, out);
      }
    });
  });
  std::vector<double> total(per_block, 0.0);
  for (int64_t blk = 0; blk < blocks; ++blk)
    for (int64_t k = 0; k < per_block; ++k) total[k] += partial[blk * per_block + k];
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const auto part = [&](int64_t off, int64_t len, const at::Tensor& like) {
    // a copy: from_blob aliases `total`, which dies with this function
    return at::from_blob(total.data() + off, {len}, f64).to(like.scalar_type(), false, true).reshape(like.sizes());
  };
  return {gx, gx2, part(O * C + O, C * 9, dw_weight), part(O * C + O + C * 9, C, dw_bias),
          part(0, O * C, pw_weight), part(O * C, O, pw_bias)};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgllie_C, CPU, m) {
  m.impl("dsconv2d", &dsconv2d_cpu);
  m.impl("dsconv2d_backward", &dsconv2d_backward_cpu);
}

}  // namespace sgllie
