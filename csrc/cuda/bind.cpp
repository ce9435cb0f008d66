// The CUDA kernels (csrc/cuda/*.cu, raw pointers) bound to the sgllie_C schemas for the CUDA
// dispatch key: input checks, outputs and workspaces from torch's allocator, the current stream.
// The tests compile this same file with SGLLIE_CUDA_EMULATION, binding the host-emulated kernels to
// CPU tensors under another library name (tests/cuda_emu/).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "launchers.h"

#if defined(SGLLIE_CUDA_EMULATION)
#define SGLLIE_BIND_KEY CPU
#else
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#define SGLLIE_BIND_LIBRARY sgllie_C
#define SGLLIE_BIND_KEY CUDA
#endif

namespace sgllie::cuda {
namespace {

template <typename T>
struct Type {
  using type = T;
};

// f(Type<T>{}) for the kernels' storage type of `dtype`.
template <typename F>
void dispatch(at::ScalarType dtype, const char* op, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(Type<float>{});
    case at::kDouble: return f(Type<double>{});
    case at::kHalf: return f(Type<__half>{});
    case at::kBFloat16: return f(Type<__nv_bfloat16>{});
    default: TORCH_CHECK(false, "sgllie_C::", op, " (CUDA): float32, float64, float16 or bfloat16, got ", dtype);
  }
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

struct Context {
  cudaStream_t stream = nullptr;
#if !defined(SGLLIE_CUDA_EMULATION)
  c10::cuda::OptionalCUDAGuard guard;
  explicit Context(const at::Tensor& t) : guard(t.device()) { stream = c10::cuda::getCurrentCUDAStream(); }
#else
  explicit Context(const at::Tensor&) {}
#endif
};

void check_launch(cudaError_t status, const char* op) {
#if defined(SGLLIE_CUDA_EMULATION)
  TORCH_CHECK(status == cudaSuccess, "sgllie_C::", op, ": launch failed (", static_cast<int>(status), ")");
#else
  TORCH_CHECK(status == cudaSuccess, "sgllie_C::", op, ": CUDA launch failed: ", cudaGetErrorString(status));
#endif
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

int as_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= INT32_MAX, "sgllie_C (CUDA): ", what, " ", v, " does not fit the kernels' 32-bit sizes");
  return static_cast<int>(v);
}

// ------------------------------------------------------------------------------------ dsconv2d
DsconvShape dsconv_shape(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& pw_weight, const char* op) {
  const int64_t c2 = x2.defined() ? x2.size(1) : 0;
  TORCH_CHECK(x.size(1) + c2 <= kMaxDsconvChannels, "sgllie_C::", op, " (CUDA): at most ", kMaxDsconvChannels,
              " input channels, got ", x.size(1) + c2);
  return {as_int(x.size(0), "batch"), as_int(x.size(1), "channels"), as_int(c2, "channels"),
          as_int(pw_weight.size(0), "channels"), as_int(x.size(2), "height"), as_int(x.size(3), "width")};
}

Activation activation_of(int64_t a) {
  TORCH_CHECK(a >= 0 && a <= 2, "sgllie_C::dsconv2d: activation 0 (none), 1 (relu) or 2 (tanh), got ", a);
  return static_cast<Activation>(a);
}

at::Tensor dsconv2d_op(const at::Tensor& x_, const std::optional<at::Tensor>& x2_, const at::Tensor& dw_weight_,
                    const at::Tensor& dw_bias_, const at::Tensor& pw_weight_, const at::Tensor& pw_bias_,
                    int64_t activation) {
  const Context ctx(x_);
  const at::Tensor x = x_.contiguous(), x2 = x2_ ? x2_->contiguous() : at::Tensor();
  const at::Tensor dw_weight = dw_weight_.contiguous(), dw_bias = dw_bias_.contiguous(),
                   pw_weight = pw_weight_.contiguous(), pw_bias = pw_bias_.contiguous();
  const DsconvShape s = dsconv_shape(x, x2, pw_weight, "dsconv2d");
  at::Tensor y = at::empty({x.size(0), pw_weight.size(0), x.size(2), x.size(3)}, x.options());
  if (y.numel() == 0) return y;
  dispatch(x.scalar_type(), "dsconv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(dsconv2d_forward<T>(ptr<T>(x), ptr<T>(x2), ptr<T>(dw_weight), ptr<T>(dw_bias), ptr<T>(pw_weight),
                                     ptr<T>(pw_bias), ptr<T>(y), s, activation_of(activation), ctx.stream),
                 "dsconv2d");
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dsconv2d_backward_op(
    const at::Tensor& grad_, const at::Tensor& x_, const std::optional<at::Tensor>& x2_, const at::Tensor& dw_weight_,
    const at::Tensor& dw_bias_, const at::Tensor& pw_weight_, const at::Tensor& pw_bias_, int64_t activation) {
  const Context ctx(x_);
  const at::Tensor x = x_.contiguous(), x2 = x2_ ? x2_->contiguous() : at::Tensor();
  const at::Tensor grad = grad_.to(x.scalar_type()).contiguous();
  const at::Tensor dw_weight = dw_weight_.contiguous(), dw_bias = dw_bias_.contiguous(),
                   pw_weight = pw_weight_.contiguous(), pw_bias = pw_bias_.contiguous();
  const DsconvShape s = dsconv_shape(x, x2, pw_weight, "dsconv2d_backward");
  at::Tensor gx = at::empty_like(x), gx2 = x2.defined() ? at::empty_like(x2) : at::empty({0}, x.options());
  at::Tensor gdw = at::empty_like(dw_weight), gdb = at::empty_like(dw_bias), gpw = at::empty_like(pw_weight),
             gpb = at::empty_like(pw_bias);
  if (x.numel() == 0) return {gx, gx2, gdw.zero_(), gdb.zero_(), gpw.zero_(), gpb.zero_()};
  dispatch(x.scalar_type(), "dsconv2d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    at::Tensor ws = workspace(dsconv2d_backward_workspace<T>(s), x);
    check_launch(dsconv2d_backward<T>(ptr<T>(grad), ptr<T>(x), ptr<T>(x2), ptr<T>(dw_weight), ptr<T>(dw_bias),
                                      ptr<T>(pw_weight), ptr<T>(pw_bias), ptr<T>(gx), ptr<T>(gx2), ptr<T>(gdw),
                                      ptr<T>(gdb), ptr<T>(gpw), ptr<T>(gpb), ws.data_ptr(), s,
                                      activation_of(activation), ctx.stream),
                 "dsconv2d_backward");
  });
  return {gx, gx2, gdw, gdb, gpw, gpb};
}

// ------------------------------------------------------------------------------------ le_curve
CurveShape curve_shape(const at::Tensor& x, const at::Tensor& r) {
  return {as_int(x.size(0) * x.size(1), "planes"), as_int(x.size(2), "height"), as_int(x.size(3), "width"),
          as_int(r.size(2), "height"), as_int(r.size(3), "width")};
}

at::Tensor le_curve_op(const at::Tensor& x_, const at::Tensor& r_, int64_t iterations) {
  const Context ctx(x_);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  dispatch(x.scalar_type(), "le_curve", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(le_curve_forward<T>(ptr<T>(x), ptr<T>(r), ptr<T>(y), curve_shape(x, r), as_int(iterations, "iterations"),
                                     ctx.stream),
                 "le_curve");
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> le_curve_backward_op(const at::Tensor& grad_, const at::Tensor& x_,
                                                     const at::Tensor& r_, int64_t iterations) {
  const Context ctx(x_);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous(), grad = grad_.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(x), gr = at::empty_like(r);
  if (x.numel() == 0) return {gx, gr.zero_()};
  dispatch(x.scalar_type(), "le_curve_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const CurveShape s = curve_shape(x, r);
    at::Tensor ws = workspace(le_curve_backward_workspace<T>(s), x);
    check_launch(le_curve_backward<T>(ptr<T>(grad), ptr<T>(x), ptr<T>(r), ptr<T>(gx), ptr<T>(gr), ws.data_ptr(), s,
                                      as_int(iterations, "iterations"), ctx.stream),
                 "le_curve_backward");
  });
  return {gx, gr};
}

// ------------------------------------------------------------------------------------ losses
at::Tensor tv_loss_op(const at::Tensor& r_) {
  const Context ctx(r_);
  const at::Tensor r = r_.contiguous();
  at::Tensor out = at::empty({}, r.options());
  dispatch(r.scalar_type(), "tv_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int n = as_int(r.size(0), "batch"), c = as_int(r.size(1), "channels"), h = as_int(r.size(2), "height"),
              w = as_int(r.size(3), "width");
    at::Tensor ws = workspace(tv_loss_workspace<T>(n, c, h, w), r);
    check_launch(tv_loss_forward<T>(ptr<T>(r), ptr<T>(out), ws.data_ptr(), n, c, h, w, ctx.stream), "tv_loss");
  });
  return out;
}

at::Tensor tv_loss_backward_op(const at::Tensor& grad_, const at::Tensor& r_) {
  const Context ctx(r_);
  const at::Tensor r = r_.contiguous(), grad = grad_.to(r.scalar_type()).contiguous();
  at::Tensor gr = at::empty_like(r);
  dispatch(r.scalar_type(), "tv_loss_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(tv_loss_backward<T>(ptr<T>(grad), ptr<T>(r), ptr<T>(gr), as_int(r.size(0), "batch"),
                                     as_int(r.size(1), "channels"), as_int(r.size(2), "height"),
                                     as_int(r.size(3), "width"), ctx.stream),
                 "tv_loss_backward");
  });
  return gr;
}

LossShape loss_shape(const at::Tensor& y, int64_t patch, int64_t exposure_patch, const char* op) {
  TORCH_CHECK(y.dim() == 4 && y.size(1) == 3, "sgllie_C::", op, " (CUDA): y of shape (N, 3, H, W)");
  const LossShape s{as_int(y.size(0), "batch"), as_int(y.size(2), "height"), as_int(y.size(3), "width"),
                    as_int(patch, "patch"), as_int(exposure_patch, "exposure patch")};
  TORCH_CHECK(s.patch >= 1 && s.exposure_patch >= 1 && s.h >= s.patch && s.w >= s.patch &&
                  s.h >= s.exposure_patch && s.w >= s.exposure_patch,
              "sgllie_C::", op, " (CUDA): patches must fit the image");
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> zero_reference_loss_op(const at::Tensor& y_,
                                                                              const at::Tensor& i_, int64_t patch,
                                                                              double level, int64_t exposure_patch) {
  const Context ctx(y_);
  const at::Tensor y = y_.contiguous(), i = i_.contiguous();
  const LossShape s = loss_shape(y, patch, exposure_patch, "zero_reference_loss");
  TORCH_CHECK(zero_reference_loss_supported(s), "sgllie_C::zero_reference_loss (CUDA): lcm(patch, exposure_patch) "
              "must be at most 256, got patches ", patch, " and ", exposure_patch);
  at::Tensor spa = at::empty({}, y.options()), exp = at::empty({}, y.options()), col = at::empty({}, y.options());
  at::Tensor pooled = at::empty({static_cast<int64_t>(zero_reference_loss_pooled_size(s))}, y.options().dtype(at::kDouble));
  dispatch(y.scalar_type(), "zero_reference_loss", [&](auto tag) {
    using T = typename decltype(tag)::type;
    at::Tensor ws = workspace(zero_reference_loss_workspace<T>(s), y);
    check_launch(zero_reference_loss_forward<T>(ptr<T>(y), ptr<T>(i), ptr<T>(spa), ptr<T>(exp), ptr<T>(col),
                                                ptr<double>(pooled), ws.data_ptr(), s, level,
                                                ctx.stream),
                 "zero_reference_loss");
  });
  return {spa, exp, col, pooled};
}

std::tuple<at::Tensor, at::Tensor> zero_reference_loss_backward_op(const at::Tensor& g_spa, const at::Tensor& g_exp,
                                                                const at::Tensor& g_col, const at::Tensor& pooled_,
                                                                const at::Tensor& y, bool need_grad_i, int64_t patch,
                                                                int64_t exposure_patch) {
  const Context ctx(y);
  const LossShape s = loss_shape(y, patch, exposure_patch, "zero_reference_loss_backward");
  const at::Tensor pooled = pooled_.to(at::kDouble).contiguous();
  TORCH_CHECK(pooled.numel() == static_cast<int64_t>(zero_reference_loss_pooled_size(s)),
              "sgllie_C::zero_reference_loss_backward: pooled_grads does not match y's shape");
  const auto scalar = [&](const at::Tensor& g) { return g.to(y.scalar_type()).contiguous(); };
  const at::Tensor gs = scalar(g_spa), ge = scalar(g_exp), gc = scalar(g_col);
  at::Tensor gy = at::empty(y.sizes(), y.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor gi = need_grad_i ? at::empty_like(gy) : at::empty({0}, y.options());
  dispatch(y.scalar_type(), "zero_reference_loss_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    check_launch(zero_reference_loss_backward<T>(ptr<T>(gs), ptr<T>(ge), ptr<T>(gc), ptr<double>(pooled), ptr<T>(gy),
                                                 need_grad_i ? ptr<T>(gi) : nullptr, s, ctx.stream),
                 "zero_reference_loss_backward");
  });
  return {gy, gi};
}

}  // namespace
}  // namespace sgllie::cuda

TORCH_LIBRARY_IMPL(SGLLIE_BIND_LIBRARY, SGLLIE_BIND_KEY, m) {
  using namespace sgllie::cuda;
  m.impl("dsconv2d", &dsconv2d_op);
  m.impl("dsconv2d_backward", &dsconv2d_backward_op);
  m.impl("le_curve", &le_curve_op);
  m.impl("le_curve_backward", &le_curve_backward_op);
  m.impl("zero_reference_loss", &zero_reference_loss_op);
  m.impl("zero_reference_loss_backward", &zero_reference_loss_backward_op);
  m.impl("tv_loss", &tv_loss_op);
  m.impl("tv_loss_backward", &tv_loss_backward_op);
}
