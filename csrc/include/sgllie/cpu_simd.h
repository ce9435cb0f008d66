// Vector width for the CPU kernels' hot loops. The wheel must run on any x86-64, yet most CPUs
// have AVX2 + FMA (8 floats a step, not SSE2's 4): SGLLIE_SIMD_CLONES builds a function twice,
// for x86-64-v3 and the baseline, and the loader picks one per machine (GCC ifunc). Elsewhere
// (other compilers or architectures) it is empty and the baseline build is used.
#pragma once

//
// Helpers called from such a function must be inlined into each clone to get its instruction set:
// SGLLIE_SIMD_INLINE forces that.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SGLLIE_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SGLLIE_SIMD_CLONES
#endif

// Lambdas inside such a function are functions of their own: SGLLIE_SIMD_INLINE_LAMBDA (after the
// parameter list) inlines them too.
#if defined(__GNUC__)
#define SGLLIE_SIMD_INLINE inline __attribute__((always_inline))
#define SGLLIE_SIMD_INLINE_LAMBDA __attribute__((always_inline))
#else
#define SGLLIE_SIMD_INLINE inline
#define SGLLIE_SIMD_INLINE_LAMBDA
#endif

// Explicit vectors of 32 bytes (8 floats, 4 doubles) for the few loops the compiler does not
// vectorise well by itself (register-blocked accumulations). GCC and Clang vector extensions: in
// a SGLLIE_SIMD_CLONES function they become AVX2 registers, in the baseline clone pairs of SSE
// ones. Other compilers take the plain loops (SGLLIE_HAVE_VEC undefined).
#if defined(__GNUC__)
#define SGLLIE_HAVE_VEC 1
#include <cstring>

namespace sgllie {

template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename T>
SGLLIE_SIMD_INLINE typename Vec32<T>::type vload(const T* p) {
  typename Vec32<T>::type v;
  std::memcpy(&v, p, sizeof(v));  // an unaligned load
  return v;
}

template <typename T>
SGLLIE_SIMD_INLINE void vstore(T* p, typename Vec32<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

}  // namespace sgllie
#endif
