// The schema of every compiled kernel, in one place: registered as sgllie_C by csrc/sgllie.cpp, and
// under another name by the tests' host-emulation build of the CUDA kernels.
#pragma once

#include <torch/library.h>

namespace sgllie {

inline void define_schemas(torch::Library& m) {
  // dsconv2d's activation: 0 none, 1 relu, 2 tanh (csrc/cuda/launchers.h, Activation).
  m.def("dsconv2d(Tensor x, Tensor? x2, Tensor dw_weight, Tensor dw_bias, Tensor pw_weight, Tensor pw_bias,"
        " int activation) -> Tensor");
  m.def("dsconv2d_backward(Tensor grad, Tensor x, Tensor? x2, Tensor dw_weight, Tensor dw_bias,"
        " Tensor pw_weight, Tensor pw_bias, int activation) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("le_curve(Tensor x, Tensor r, int iterations) -> Tensor");
  m.def("le_curve_backward(Tensor grad, Tensor x, Tensor r, int iterations) -> (Tensor, Tensor)");
  // (spa, exp, col, pooled_grads); the backward expands pooled_grads without reading y or i
  // again (layout: sgllie/ops/reference.py, zero_reference_loss_forward)
  m.def("zero_reference_loss(Tensor y, Tensor i, int patch, float level, int exposure_patch)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("zero_reference_loss_backward(Tensor g_spa, Tensor g_exp, Tensor g_col, Tensor pooled_grads,"
        " Tensor y, bool need_grad_i, int patch, int exposure_patch) -> (Tensor, Tensor)");
  m.def("tv_loss(Tensor r) -> Tensor");
  m.def("tv_loss_backward(Tensor grad, Tensor r) -> Tensor");
}

}  // namespace sgllie
