// Per-element math shared by the CPU kernels (csrc/cpu) and, later, the CUDA kernels (csrc/cuda),
// so the CPU tests also pin the arithmetic the GPU runs. No torch headers here.
#pragma once

#if defined(__CUDACC__)
#define SGLLIE_HD __host__ __device__ __forceinline__
#define SGLLIE_CONSTANT __constant__  // tables the kernels read: constant memory on the GPU
#else
#define SGLLIE_HD inline
#define SGLLIE_CONSTANT
#endif

namespace sgllie {

// One step of the LE curve: x + r * (x^2 - x).
template <typename T>
SGLLIE_HD T le_step(T x, T r) {
  return x + r * (x * x - x);
}

// Derivatives of one step: d/dx = 1 + r (2x - 1), d/dr = x^2 - x.
template <typename T>
SGLLIE_HD T le_step_dx(T x, T r) {
  return 1 + r * (x + x - 1);  // scalar literals, so T may also be a CPU vector type
}
template <typename T>
SGLLIE_HD T le_step_dr(T x) {
  return x * x - x;
}

// Linear interpolation taps of output index `out` when resizing `in_size` -> `out_size` samples
// with align_corners=True (the reference's UpsamplingBilinear2d), computed in T as PyTorch does.
template <typename T>
struct Lerp {
  int i0, i1;
  T w1;  // weight of i1; i0 gets 1 - w1
};

template <typename T>
SGLLIE_HD Lerp<T> align_corners_lerp(int out, int in_size, int out_size) {
  const T scale = out_size > 1 ? static_cast<T>(in_size - 1) / static_cast<T>(out_size - 1) : T(0);
  const T src = scale * static_cast<T>(out);
  const int i0 = static_cast<int>(src);
  const int i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  return Lerp<T>{i0, i1, src - static_cast<T>(i0)};
}

// Spatial-consistency neighbours (dy, dx, weight): 4 axial at 1, 4 diagonal at 0.5, as the reference.
struct Neighbour {
  int dy, dx;
  float weight;
};
SGLLIE_CONSTANT constexpr Neighbour kSpaNeighbours[8] = {{0, -1, 1.f},  {0, 1, 1.f},   {-1, 0, 1.f}, {1, 0, 1.f},
                                         {-1, -1, .5f}, {-1, 1, .5f},  {1, -1, .5f}, {1, 1, .5f}};

}  // namespace sgllie
