// zero_reference_loss on the GPU: one pass over y and i, then small kernels over the pooled maps.
//
// Pass 1 (`pool`): a block covers a tile L rows tall and a multiple of L columns wide, where
// L = lcm(patch, exposure_patch), so every spa and exposure patch lies inside one block. Each
// thread walks down one column, summing grey values over the rows of the current patch row; at
// each patch boundary the block adds the column sums of each patch in shared memory (in a fixed
// order) and writes the pooled maps. Colour sums are per-block partials. Pass 2 (`grads`) turns the
// pooled maps into the losses' per-patch gradients (the layout of pooled_grads) and per-block loss
// partials; pass 3 (`finish`, one block) sums every partial in order, in double, and writes the three
// losses and the colour gradients. Deterministic, no atomics. The backward spreads pooled_grads over
// the pixels without reading y or i.
#include "block_reduce.cuh"
#include "launchers.h"
#include "sgllie/math.h"

namespace sgllie::cuda {
namespace {

constexpr int kThreads = 256;

int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

struct Plan {
  int hp, wp, he, we;     // spa and exposure patch grids (full patches only)
  int lcm, tile_w;        // tile: lcm rows x tile_w columns (a multiple of lcm, at most kThreads)
  int col_blocks, bands;  // pass-1 grid per image
  long long spa_cells, exp_cells;
  int grad_blocks;        // pass-2 grid
};

Plan plan(LossShape s) {
  Plan p;
  p.hp = s.h / s.patch; p.wp = s.w / s.patch;
  p.he = s.h / s.exposure_patch; p.we = s.w / s.exposure_patch;
  p.lcm = s.patch / gcd(s.patch, s.exposure_patch) * s.exposure_patch;
  p.tile_w = kThreads / p.lcm * p.lcm;
  p.col_blocks = (s.w + p.tile_w - 1) / p.tile_w;
  p.bands = (s.h + p.lcm - 1) / p.lcm;
  p.spa_cells = static_cast<long long>(s.n) * p.hp * p.wp;
  p.exp_cells = static_cast<long long>(s.n) * p.he * p.we;
  p.grad_blocks = static_cast<int>(blocks_for(p.spa_cells + p.exp_cells, kThreads));
  return p;
}

size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// Workspace: the pooled grey difference of spa (double), colour partials (acc), loss partials (double).
template <typename T>
struct Workspace {
  double* delta;
  acc_t<T>* colour;
  double* losses;
  static size_t bytes(const Plan& p, int n, size_t* off_colour = nullptr, size_t* off_losses = nullptr) {
    const size_t a = align16(p.spa_cells * sizeof(double));
    const size_t b = align16(static_cast<size_t>(n) * p.bands * p.col_blocks * 3 * sizeof(acc_t<T>));
    if (off_colour) *off_colour = a;
    if (off_losses) *off_losses = a + b;
    return a + b + align16(2 * static_cast<size_t>(p.grad_blocks) * sizeof(double));
  }
  Workspace(void* base, const Plan& p, int n) {
    size_t oc, ol;
    bytes(p, n, &oc, &ol);
    delta = static_cast<double*>(base);
    colour = reinterpret_cast<acc_t<T>*>(static_cast<char*>(base) + oc);
    losses = reinterpret_cast<double*>(static_cast<char*>(base) + ol);
  }
};

// grid: (col_blocks, bands, n). Writes delta (pooled grey of y minus i, spa patches), the exposure
// patch means of y (into pooled_grads' exposure slots, turned into gradients by pass 2) and colour partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) pool(const T* __restrict__ y, const T* __restrict__ im, LossShape s,
                                                 Plan p, double* __restrict__ delta, double* __restrict__ exposure,
                                                 acc_t<T>* __restrict__ colour) {
  using A = acc_t<T>;
  __shared__ A column_sums[kThreads];
  const int t = threadIdx.x, img = blockIdx.z;
  const int x = blockIdx.x * p.tile_w + t;
  const bool valid = t < p.tile_w && x < s.w;
  const long long plane = static_cast<long long>(s.h) * s.w;
  const T* y0 = y + img * 3 * plane;
  const T* i0 = im + img * 3 * plane;
  A sum_c[3] = {0, 0, 0}, spa = 0, exp = 0;
  const int row_end = min(s.h, static_cast<int>(blockIdx.y + 1) * p.lcm);
  for (int row = blockIdx.y * p.lcm; row < row_end; ++row) {  // the same rows for every thread
    if (valid) {
      const long long o = static_cast<long long>(row) * s.w + x;
      A gy = 0, gi = 0;
      for (int c = 0; c < 3; ++c) {
        const A v = load(y0 + c * plane + o);
        sum_c[c] += v;
        gy += v;
        gi += load(i0 + c * plane + o);
      }
      spa += gy - gi;
      exp += gy;
    }
    for (int which = 0; which < 2; ++which) {  // spa, then exposure: a patch row ends at this row
      const int size = which == 0 ? s.patch : s.exposure_patch;
      if ((row + 1) % size != 0) continue;  // uniform across the block
      A& v = which == 0 ? spa : exp;
      column_sums[t] = v;
      v = 0;
      __syncthreads();
      const int cells_per_tile = p.tile_w / size, cols = which == 0 ? p.wp : p.we;
      const int cell = blockIdx.x * cells_per_tile + t;
      if (t < cells_per_tile && cell < cols) {
        A sum = 0;
        for (int k = 0; k < size; ++k) sum += column_sums[t * size + k];
        const long long out = (static_cast<long long>(img) * (which == 0 ? p.hp : p.he) + row / size) * cols + cell;
        (which == 0 ? delta : exposure)[out] = static_cast<double>(sum) / (3.0 * size * size);
      }
      __syncthreads();
    }
  }
  for (int c = 0; c < 3; ++c) {
    const A total = block_sum<kThreads>(sum_c[c]);
    if (t == 0) colour[((static_cast<long long>(img) * p.bands + blockIdx.y) * p.col_blocks + blockIdx.x) * 3 + c] = total;
  }
}

// One thread per spa patch, then per exposure patch: the patch's gradient (into pooled_grads) and its
// share of the loss (per-block partials).
__global__ void __launch_bounds__(kThreads) grads(const double* __restrict__ delta, double* __restrict__ pooled,
                                                  double* __restrict__ losses, LossShape s, Plan p, double level) {
  const long long e = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x;
  double spa = 0, exp = 0;
  if (e < p.spa_cells) {
    const int b = static_cast<int>(e % p.wp), a = static_cast<int>(e / p.wp % p.hp);
    const double* d = delta + (e - (static_cast<long long>(a) * p.wp + b));  // this image's map
    auto at = [&](int aa, int bb) { return aa >= 0 && aa < p.hp && bb >= 0 && bb < p.wp ? d[aa * p.wp + bb] : 0.0; };
    const double here = d[a * p.wp + b];
    double g = 0;
    for (const Neighbour& nb : kSpaNeighbours) {
      const double e_here = here - at(a + nb.dy, b + nb.dx);  // e at this patch
      spa += nb.weight * e_here * e_here;
      // e at the patch whose neighbour this one is (zero outside the grid, as the reference pads)
      const int pa = a - nb.dy, pb = b - nb.dx;
      const double e_back = pa >= 0 && pa < p.hp && pb >= 0 && pb < p.wp ? at(pa, pb) - here : 0.0;
      g += nb.weight * (e_here - e_back);
    }
    pooled[e] = g * (2.0 / p.spa_cells / (3.0 * s.patch * s.patch));
  } else if (e < p.spa_cells + p.exp_cells) {
    const double m = pooled[e] - level;  // pass 1 left the patch mean here
    exp = m * m;
    pooled[e] = m * (2.0 / p.exp_cells / (3.0 * s.exposure_patch * s.exposure_patch));
  }
  store_block_pair<kThreads>(spa, exp, losses);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) finish(const acc_t<T>* __restrict__ colour,
                                                   const double* __restrict__ losses, double* __restrict__ gcol,
                                                   T* __restrict__ spa_out, T* __restrict__ exp_out,
                                                   T* __restrict__ col_out, LossShape s, Plan p) {
  double spa, exp, col = 0;
  sum_block_pairs<kThreads>(losses, p.grad_blocks, spa, exp);
  const int per_image = p.bands * p.col_blocks;
  const double pixels = static_cast<double>(s.h) * s.w;
  for (int img = threadIdx.x; img < s.n; img += kThreads) {
    double m[3] = {0, 0, 0};
    for (int k = 0; k < per_image; ++k)
      for (int c = 0; c < 3; ++c) m[c] += colour[(static_cast<long long>(img) * per_image + k) * 3 + c];
    for (int c = 0; c < 3; ++c) m[c] /= pixels;
    const double a = m[0] - m[1], b = m[0] - m[2], c = m[2] - m[1];
    const double k = sqrt(a * a * a * a + b * b * b * b + c * c * c * c);
    col += k;
    // dk/dm = (dS/dm) / (2k); at k = 0 the subgradient 0, as the reference
    const double scale = k > 0 ? 1.0 / (2.0 * k * s.n) / pixels : 0.0;
    const double a3 = 4 * a * a * a, b3 = 4 * b * b * b, c3 = 4 * c * c * c;
    gcol[img * 3 + 0] = (a3 + b3) * scale;
    gcol[img * 3 + 1] = (-a3 - c3) * scale;
    gcol[img * 3 + 2] = (c3 - b3) * scale;
  }
  col = block_sum<kThreads>(col);
  if (threadIdx.x == 0) {
    *spa_out = cast<T>(static_cast<acc_t<T>>(spa / p.spa_cells));
    *exp_out = cast<T>(static_cast<acc_t<T>>(exp / p.exp_cells));
    *col_out = cast<T>(static_cast<acc_t<T>>(col / s.n));
  }
}

// One thread per pixel (all three channels): the patch gradients spread back, in double as the reference.
template <typename T>
__global__ void __launch_bounds__(kThreads) spread(const T* __restrict__ g_spa, const T* __restrict__ g_exp,
                                                   const T* __restrict__ g_col, const double* __restrict__ pooled,
                                                   T* __restrict__ gy, T* __restrict__ gi, LossShape s, Plan p) {
  const long long pixel = blockIdx.x * static_cast<long long>(kThreads) + threadIdx.x;
  const long long plane = static_cast<long long>(s.h) * s.w;
  if (pixel >= s.n * plane) return;
  const int img = static_cast<int>(pixel / plane), row = static_cast<int>(pixel / s.w % s.h),
            col = static_cast<int>(pixel % s.w);
  double spa = 0, exp = 0;
  const int a = row / s.patch, b = col / s.patch;
  if (a < p.hp && b < p.wp) spa = pooled[(static_cast<long long>(img) * p.hp + a) * p.wp + b] * static_cast<double>(load(g_spa));
  const int ea = row / s.exposure_patch, eb = col / s.exposure_patch;
  if (ea < p.he && eb < p.we) exp = pooled[p.spa_cells + (static_cast<long long>(img) * p.he + ea) * p.we + eb];
  const double rest = spa + exp * static_cast<double>(load(g_exp));
  const double* gcol = pooled + p.spa_cells + p.exp_cells + img * 3;
  const double gc = static_cast<double>(load(g_col));
  const long long base = img * 3 * plane + pixel % plane;
  for (int c = 0; c < 3; ++c) {
    gy[base + c * plane] = cast<T>(static_cast<acc_t<T>>(rest + gcol[c] * gc));
    if (gi != nullptr) gi[base + c * plane] = cast<T>(static_cast<acc_t<T>>(-spa));
  }
}

}  // namespace

size_t zero_reference_loss_pooled_size(LossShape s) {
  const Plan p = plan(s);
  return static_cast<size_t>(p.spa_cells + p.exp_cells) + 3 * static_cast<size_t>(s.n);
}

template <typename T>
size_t zero_reference_loss_workspace(LossShape s) {
  return Workspace<T>::bytes(plan(s), s.n);
}

template <typename T>
cudaError_t zero_reference_loss_forward(const T* y, const T* i, T* spa, T* exp, T* col, double* pooled_grads,
                                        void* workspace, LossShape s, double level, cudaStream_t stream) {
  const Plan p = plan(s);
  if (p.lcm > kThreads) return cudaErrorInvalidValue;  // the binding sends these shapes elsewhere
  Workspace<T> ws(workspace, p, s.n);
  SGLLIE_LAUNCH(dim3(p.col_blocks, p.bands, s.n), dim3(kThreads), stream, pool<T>)(
      y, i, s, p, ws.delta, pooled_grads + p.spa_cells, ws.colour);
  SGLLIE_LAUNCH(dim3(p.grad_blocks), dim3(kThreads), stream, grads)(ws.delta, pooled_grads, ws.losses, s, p, level);
  SGLLIE_LAUNCH(dim3(1), dim3(kThreads), stream, finish<T>)(
      ws.colour, ws.losses, pooled_grads + p.spa_cells + p.exp_cells, spa, exp, col, s, p);
  return SGLLIE_LAUNCH_STATUS();
}

template <typename T>
cudaError_t zero_reference_loss_backward(const T* g_spa, const T* g_exp, const T* g_col, const double* pooled_grads,
                                         T* grad_y, T* grad_i, LossShape s, cudaStream_t stream) {
  const Plan p = plan(s);
  SGLLIE_LAUNCH(dim3(blocks_for(static_cast<long long>(s.n) * s.h * s.w, kThreads)), dim3(kThreads), stream,
                spread<T>)(g_spa, g_exp, g_col, pooled_grads, grad_y, grad_i, s, p);
  return SGLLIE_LAUNCH_STATUS();
}

bool zero_reference_loss_supported(LossShape s) { return plan(s).lcm <= kThreads; }

#define SGLLIE_INSTANTIATE(T)                                                                                  \
  template size_t zero_reference_loss_workspace<T>(LossShape);                                                \
  template cudaError_t zero_reference_loss_forward<T>(const T*, const T*, T*, T*, T*, double*, void*, LossShape, \
                                                      double, cudaStream_t);                                  \
  template cudaError_t zero_reference_loss_backward<T>(const T*, const T*, const T*, const double*, T*, T*,     \
                                                       LossShape, cudaStream_t);
SGLLIE_FOR_EACH_STORAGE_TYPE(SGLLIE_INSTANTIATE)
#undef SGLLIE_INSTANTIATE

}  // namespace sgllie::cuda
