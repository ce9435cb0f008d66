// sgllie._C: the schemas of every compiled kernel, in one place. The kernels register per device
// (csrc/cpu/*.cpp for CPU); sgllie/ops/_cpu.py exposes them as the `cpu` backend behind the
// public sgllie:: custom ops, which own autograd, fake kernels and backend choice.
#include <Python.h>
#include <torch/library.h>

// An empty Python module: importing sgllie._C loads this library and runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sgllie's compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(sgllie_C, m) {
  m.def("dsconv2d(Tensor x, Tensor? x2, Tensor dw_weight, Tensor dw_bias, Tensor pw_weight, Tensor pw_bias,"
        " bool relu) -> Tensor");
  m.def("dsconv2d_backward(Tensor grad, Tensor x, Tensor? x2, Tensor dw_weight, Tensor dw_bias,"
        " Tensor pw_weight, Tensor pw_bias, bool relu) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
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
