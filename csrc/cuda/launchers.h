// The CUDA kernels' entry points: raw pointers, contiguous NCHW tensors, a stream, no torch headers.
// Implemented in csrc/cuda/<op>.cu for T in {float, double, __half, __nv_bfloat16}; called by
// csrc/cuda/bind.cpp (the torch binding), and by the tests' host-emulation build.
// Each returns the launch status (cudaGetLastError after its launches).
#pragma once

#include "sgllie/cuda_launch.h"

namespace sgllie::cuda {

// ---- dsconv2d: depthwise 3x3 (padding 1) + pointwise 1x1, both with bias, then an activation.
// Input channels: x's c1 then x2's c2 (x2 may be null with c2 = 0); c1 + c2 <= kMaxDsconvChannels.
enum Activation { kNone = 0, kRelu = 1, kTanh = 2 };
constexpr int kMaxDsconvChannels = 64;

struct DsconvShape {
  int n, c1, c2, o, h, w;
};

template <typename T>
cudaError_t dsconv2d_forward(const T* x, const T* x2, const T* dw_weight, const T* dw_bias,
                             const T* pw_weight, const T* pw_bias, T* y, DsconvShape s, Activation act,
                             cudaStream_t stream);

// Bytes of scratch dsconv2d_backward needs (device memory, any contents, 16-byte aligned).
template <typename T>
size_t dsconv2d_backward_workspace(DsconvShape s);

// grad_x2 may be null when x2 is. Parameter gradients are written, not accumulated.
template <typename T>
cudaError_t dsconv2d_backward(const T* grad, const T* x, const T* x2, const T* dw_weight, const T* dw_bias,
                              const T* pw_weight, const T* pw_bias, T* grad_x, T* grad_x2,
                              T* grad_dw_weight, T* grad_dw_bias, T* grad_pw_weight, T* grad_pw_bias,
                              void* workspace, DsconvShape s, Activation act, cudaStream_t stream);

// ---- le_curve: `iterations` steps of x + r (x^2 - x); r (n, c, rh, rw) upsampled to (h, w) with
// align_corners=True when smaller.
struct CurveShape {
  int planes, h, w, rh, rw;  // planes = n * c
};

template <typename T>
cudaError_t le_curve_forward(const T* x, const T* r, T* y, CurveShape s, int iterations, cudaStream_t stream);

template <typename T>
size_t le_curve_backward_workspace(CurveShape s);

template <typename T>
cudaError_t le_curve_backward(const T* grad, const T* x, const T* r, T* grad_x, T* grad_r, void* workspace,
                              CurveShape s, int iterations, cudaStream_t stream);

// ---- tv_loss: out is one element of T; grad (backward) one element of T.
template <typename T>
size_t tv_loss_workspace(int n, int c, int h, int w);

template <typename T>
cudaError_t tv_loss_forward(const T* r, T* out, void* workspace, int n, int c, int h, int w, cudaStream_t stream);

template <typename T>
cudaError_t tv_loss_backward(const T* grad, const T* r, T* grad_r, int n, int c, int h, int w,
                             cudaStream_t stream);

// ---- zero_reference_loss: spa, exp, col (one element of T each) and pooled_grads (double, layout
// of sgllie/ops/reference.py zero_reference_loss_forward), in one pass over y and i.
struct LossShape {
  int n, h, w, patch, exposure_patch;  // 3 channels
};

size_t zero_reference_loss_pooled_size(LossShape s);  // elements of pooled_grads
// One pass needs lcm(patch, exposure_patch) <= 256; the binding falls back otherwise.
bool zero_reference_loss_supported(LossShape s);

template <typename T>
size_t zero_reference_loss_workspace(LossShape s);

template <typename T>
cudaError_t zero_reference_loss_forward(const T* y, const T* i, T* spa, T* exp, T* col, double* pooled_grads,
                                        void* workspace, LossShape s, double level, cudaStream_t stream);

// grad_i may be null (not needed). g_spa, g_exp, g_col: one element of T each.
template <typename T>
cudaError_t zero_reference_loss_backward(const T* g_spa, const T* g_exp, const T* g_col,
                                         const double* pooled_grads, T* grad_y, T* grad_i, LossShape s,
                                         cudaStream_t stream);

}  // namespace sgllie::cuda
