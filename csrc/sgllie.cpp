// sgllie._C: the schemas of every compiled kernel (csrc/include/sgllie/schemas.h). The kernels
// register per device: csrc/cpu/*.cpp for CPU, csrc/cuda/bind.cpp for CUDA. sgllie/ops/_cpu.py and
// _cuda.py expose them as backends behind the public sgllie:: custom ops, which own autograd, fake
// kernels and backend choice.
#include <Python.h>

#include "sgllie/schemas.h"

// An empty Python module: importing sgllie._C loads this library and runs the registrations.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "sgllie's compiled kernels", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(sgllie_C, m) { sgllie::define_schemas(m); }
