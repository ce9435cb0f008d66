// dsconv2d on the GPU: depthwise 3x3 + pointwise 1x1 (+ activation) fused, so the C-channel
// intermediate z never goes to memory in the forward, and in the backward only as gz (acc precision).
//
// Forward: a block per 32-wide tile of TH rows, one pixel per thread (a warp per row, so global loads
// and stores are 32-wide coalesced). Input halos are staged in shared memory a few channels at a time,
// so each input element is read from memory about once; the depthwise runs per (channel, column) down
// the column (3 new halo loads per output row instead of 9, weights in registers). z of every channel
// of the tile stays in shared memory (32 KB: TH follows from the channel bucket, C <= 32 or <= 64, and
// sizeof(acc)), and the pointwise is a small GEMM over C: each thread reads its own z column
// (conflict-free) and a staged, transposed slice of pw_weight as vector broadcasts, with OG output
// channels in registers (OG = 4 when O <= 4: SGZ's last layer has O = 3).
//
// Backward: a fixed number of persistent blocks (min(tiles, kMaxBwdBlocks): a function of the shape
// only) walk the tiles. Per tile they recompute z and pre, form gpre one OG-slice of outputs at a time
// (shared), accumulate gz per pixel (shared, each column by its own thread), and reduce the parameter
// gradients over the tile's pixels from shared memory: pw_weight/pw_bias one (slice, input channel)
// per thread, dw weight/bias one (channel, tap) per thread against a re-staged input halo. Each block
// keeps running partial sums in its own slice of the workspace (every entry owned by one thread and
// updated in tile order: no atomics, and O is unbounded, which rules out registers or static shared
// memory for them); a second kernel sums the blocks' partials in block order, in double. gz goes to
// the workspace because grad_x needs gz of neighbouring tiles: a third kernel applies the transposed
// depthwise from a shared gz halo.
//
// Static shared memory only, <= 48 KB per kernel for every T (static_asserts below). Every thread
// reaches every __syncthreads: out-of-image pixels are masked, their gpre is 0, so they add nothing.
#include "launchers.h"

namespace sgllie::cuda {
namespace {

// Loop unrolling hints for nvcc (the host emulation build ignores them).
#if defined(__CUDACC__)
#define DS_PRAGMA(x) _Pragma(#x)
#define DS_UNROLL(n) DS_PRAGMA(unroll n)
#else
#define DS_UNROLL(n)
#endif

constexpr int kTileW = 32;          // pixels per tile row = threads per row (one warp)
constexpr int kHaloW = kTileW + 2;  // a tile row plus the 3x3 halo
constexpr int kSharedBudget = 48 * 1024;
// Backward blocks: a function of the shape only (determinism). Overridable so a test can make every
// block walk several tiles on small images.
#ifndef SGLLIE_DSCONV_MAX_BWD_BLOCKS
#define SGLLIE_DSCONV_MAX_BWD_BLOCKS 1024
#endif
constexpr int kMaxBwdBlocks = SGLLIE_DSCONV_MAX_BWD_BLOCKS;
constexpr int kInputRows = 8;        // rows per block of the grad-input kernel
constexpr int kReduceThreads = 256;

// ------------------------------------------------------------------------ activation
__device__ __forceinline__ float act_tanh(float v) { return tanhf(v); }
__device__ __forceinline__ double act_tanh(double v) { return tanh(v); }

template <typename A>
__device__ __forceinline__ A activate(A v, Activation act) {
  if (act == kRelu) return v < A(0) ? A(0) : v;
  if (act == kTanh) return act_tanh(v);
  return v;
}

// grad * act'(pre): relu -> pre > 0, tanh -> 1 - tanh(pre)^2.
template <typename A>
__device__ __forceinline__ A activation_grad(A g, A pre, Activation act) {
  if (act == kRelu) return pre > A(0) ? g : A(0);
  if (act == kTanh) {
    const A t = act_tanh(pre);
    return g * (A(1) - t * t);
  }
  return g;
}

// ------------------------------------------------------------------------ shared pieces
// The input: x's c1 channels then x2's c2.
template <typename T>
struct Src {
  const T* x;
  const T* x2;
  int c1, c2, h, w;

  __device__ __forceinline__ const T* plane(int n, int c) const {
    const long long hw = static_cast<long long>(h) * w;
    return c < c1 ? x + (static_cast<long long>(n) * c1 + c) * hw
                  : x2 + (static_cast<long long>(n) * c2 + (c - c1)) * hw;
  }
};

struct Tile {
  int n, y0, x0;
};

__device__ __forceinline__ Tile tile_of(long long t, int tiles_x, int tiles_y, int th) {
  const int tx = static_cast<int>(t % tiles_x);
  const long long r = t / tiles_x;
  return Tile{static_cast<int>(r / tiles_y), static_cast<int>(r % tiles_y) * th, tx * kTileW};
}

// Channels [c0, c0 + CC) of the input around the tile (zero outside the image and past C).
template <typename T, int TH, int CC, int NT>
__device__ __forceinline__ void load_halo(acc_t<T> (&halo)[CC][TH + 2][kHaloW], const Src<T>& in, const Tile& t,
                                          int c0, int C, int tid) {
  constexpr int kPlane = (TH + 2) * kHaloW;
  for (int i = tid; i < CC * kPlane; i += NT) {
    const int cc = i / kPlane, r = i % kPlane / kHaloW, col = i % kHaloW;
    const int c = c0 + cc, yy = t.y0 - 1 + r, xx = t.x0 - 1 + col;
    acc_t<T> v = 0;
    if (c < C && yy >= 0 && yy < in.h && xx >= 0 && xx < in.w)
      v = load(in.plane(t.n, c) + static_cast<long long>(yy) * in.w + xx);
    halo[cc][r][col] = v;
  }
}

template <typename A, int CM>
struct alignas(16) DwSlice {  // per channel the 3x3 weights then the bias at [9]: 3 vector loads
  A v[CM][12];
};

// z of every channel of the tile into zs[c * ZS + pixel]. A thread takes a (channel, column) and
// slides down the column's TH rows: (TH + 2) x 3 halo loads for TH x 9 taps, weights from registers.
// The halo buffer is reused per channel chunk, between barriers of its own; the caller provides a
// barrier before the zs reads.
template <typename T, int TH, int CC, int NT, int ZS, int CM>
__device__ __forceinline__ void depthwise_tile(acc_t<T> (&halo)[CC][TH + 2][kHaloW], acc_t<T>* zs,
                                               const DwSlice<acc_t<T>, CM>& dw, const Src<T>& in, const Tile& t,
                                               int C, int tid) {
  using A = acc_t<T>;
  for (int c0 = 0; c0 < C; c0 += CC) {
    __syncthreads();  // the halo buffer is free (and the staged weights visible)
    load_halo<T, TH, CC, NT>(halo, in, t, c0, C, tid);
    __syncthreads();
    for (int u = tid; u < CC * kTileW; u += NT) {
      const int cc = u / kTileW, lx = u % kTileW, c = c0 + cc;
      if (c >= C) continue;
      A w[12];
      DS_UNROLL()
      for (int j = 0; j < 12; ++j) w[j] = dw.v[c][j];
      A rows[3][3];
      DS_UNROLL()
      for (int r = 0; r < 2; ++r)
        DS_UNROLL()
        for (int kx = 0; kx < 3; ++kx) rows[r + 1][kx] = halo[cc][r][lx + kx];
      DS_UNROLL()
      for (int r = 0; r < TH; ++r) {
        DS_UNROLL()
        for (int kx = 0; kx < 3; ++kx) {
          rows[0][kx] = rows[1][kx];
          rows[1][kx] = rows[2][kx];
          rows[2][kx] = halo[cc][r + 2][lx + kx];
        }
        A z = w[9];
        DS_UNROLL()
        for (int ky = 0; ky < 3; ++ky)
          DS_UNROLL()
          for (int kx = 0; kx < 3; ++kx) z += w[ky * 3 + kx] * rows[ky][kx];
        zs[c * ZS + r * kTileW + lx] = z;
      }
    }
  }
}

template <typename A, int CM, int OG>
struct alignas(16) WeightSlice {  // pw_weight[o0 + k][c] at v[c][k], for vector broadcast loads
  A v[CM][OG];
  A bias[OG];
};

// Stage pw_weight/pw_bias for outputs [o0, o0 + OG) (zero past O).
template <typename T, int CM, int OG, int NT>
__device__ __forceinline__ void stage_weights(WeightSlice<acc_t<T>, CM, OG>& ws, const T* pw_weight,
                                              const T* pw_bias, int o0, int O, int C, int tid) {
  for (int i = tid; i < C * OG; i += NT) {
    const int c = i / OG, k = i % OG;
    ws.v[c][k] = o0 + k < O ? load(pw_weight + static_cast<long long>(o0 + k) * C + c) : acc_t<T>(0);
  }
  if (tid < OG) ws.bias[tid] = o0 + tid < O ? load(pw_bias + o0 + tid) : acc_t<T>(0);
}

// pre[k] = bias + sum_c w[o0 + k][c] z[c], the sum in channel order.
template <typename A, int CM, int OG>
__device__ __forceinline__ void pointwise(const WeightSlice<A, CM, OG>& ws, const A* zs, int zstride, int C,
                                          A (&pre)[OG]) {
  DS_UNROLL()
  for (int k = 0; k < OG; ++k) pre[k] = ws.bias[k];
  DS_UNROLL(4)
  for (int c = 0; c < C; ++c) {
    const A z = zs[c * zstride];
    DS_UNROLL()
    for (int k = 0; k < OG; ++k) pre[k] += ws.v[c][k] * z;
  }
}

template <typename T>
struct DwParams {
  const T* weight;
  const T* bias;
};

template <typename T, int CM, int NT>
__device__ __forceinline__ void stage_dw(DwSlice<acc_t<T>, CM>& dws, DwParams<T> dw, int C, int tid) {
  for (int i = tid; i < C * 12; i += NT) {
    const int c = i / 12, j = i % 12;
    dws.v[c][j] = j < 9 ? load(dw.weight + c * 9 + j) : j == 9 ? load(dw.bias + c) : acc_t<T>(0);
  }
}

// ------------------------------------------------------------------------ forward
template <typename T, int CM, int OG>
struct FwdCfg {
  using A = acc_t<T>;
  static constexpr int P = 32768 / (CM * static_cast<int>(sizeof(A)));  // z of the tile: 32 KB
  static constexpr int TH = P / kTileW;
  static constexpr int CC = sizeof(A) == 4 ? 8 : 4;  // halo channels per chunk
  // resident blocks per SM the register allocation aims at (shared memory allows about 4; fewer
  // registers than this spills)
  static constexpr int kMinBlocks = P >= 256 ? 3 : 2;
  static constexpr int kShared = static_cast<int>(sizeof(A)) * (CM * P + CC * (TH + 2) * kHaloW) +
                                 static_cast<int>(sizeof(WeightSlice<A, CM, OG>) + sizeof(DwSlice<A, CM>));
  static_assert(P % kTileW == 0 && P <= 256, "tile of at most 256 threads");
  static_assert(kShared <= kSharedBudget, "forward static shared memory over 48 KB");
};

template <typename T>
struct FwdArgs {
  Src<T> in;
  DwParams<T> dw;
  const T* pw_weight;
  const T* pw_bias;
  T* y;
  int C, O, tiles_x, tiles_y;
  Activation act;
};

template <typename T, int CM, int OG>
__global__ void __launch_bounds__(FwdCfg<T, CM, OG>::P, FwdCfg<T, CM, OG>::kMinBlocks) dsconv2d_fwd_kernel(FwdArgs<T> a) {
  using A = acc_t<T>;
  using Cfg = FwdCfg<T, CM, OG>;
  constexpr int P = Cfg::P, TH = Cfg::TH, CC = Cfg::CC;
  __shared__ A zs[CM][P];
  __shared__ A halo[CC][TH + 2][kHaloW];
  __shared__ DwSlice<A, CM> dws;
  __shared__ WeightSlice<A, CM, OG> ws;

  const int tid = threadIdx.x, lx = tid % kTileW, ly = tid / kTileW;
  const Tile t = tile_of(blockIdx.x, a.tiles_x, a.tiles_y, TH);
  const int py = t.y0 + ly, px = t.x0 + lx;
  const bool inside = py < a.in.h && px < a.in.w;
  const long long hw = static_cast<long long>(a.in.h) * a.in.w, pix = static_cast<long long>(py) * a.in.w + px;

  stage_dw<T, CM, P>(dws, a.dw, a.C, tid);
  depthwise_tile<T, TH, CC, P, P, CM>(halo, &zs[0][0], dws, a.in, t, a.C, tid);

  for (int o0 = 0; o0 < a.O; o0 += OG) {
    __syncthreads();  // previous slice consumed
    stage_weights<T, CM, OG, P>(ws, a.pw_weight, a.pw_bias, o0, a.O, a.C, tid);
    __syncthreads();
    A pre[OG];
    pointwise(ws, &zs[0][tid], P, a.C, pre);
    if (inside) {
      T* out = a.y + (static_cast<long long>(t.n) * a.O + o0) * hw + pix;
      DS_UNROLL()
      for (int k = 0; k < OG; ++k)
        if (o0 + k < a.O) out[k * hw] = cast<T>(activate(pre[k], a.act));
    }
  }
}

// ------------------------------------------------------------------------ backward
template <typename T, int CM>
struct BwdCfg {
  using A = acc_t<T>;
  static constexpr int kA = static_cast<int>(sizeof(A));
  static constexpr int OG = 8;                           // output slice
  static constexpr int P = 16384 / (CM * kA);            // z and gz of the tile: 2 x 16 KB
  static constexpr int TH = P / kTileW;
  static constexpr int ZS = P + 1;                       // padded rows: column reads conflict-free
  static constexpr int GS = OG + 16 / kA;                // gpre row stride (16-byte rows, fewer conflicts)
  static constexpr int kFixed = kA * (2 * CM * ZS + P * GS) +
                                 static_cast<int>(sizeof(WeightSlice<A, CM, OG>) + sizeof(DwSlice<A, CM>));
  static constexpr int kHaloMax = (kSharedBudget - kFixed) / (kA * (TH + 2) * kHaloW);
  static constexpr int CC = P / 10 < kHaloMax ? P / 10 : kHaloMax;  // (channel, tap) units <= threads
  static constexpr int kShared = kFixed + kA * CC * (TH + 2) * kHaloW;
  static_assert(P % kTileW == 0 && P <= 256, "tile of at most 256 threads");
  static_assert(CC >= 1 && kShared <= kSharedBudget, "backward static shared memory over 48 KB");
};

template <typename T>
struct BwdArgs {
  Src<T> in;
  DwParams<T> dw;
  const T* grad;
  const T* pw_weight;
  const T* pw_bias;
  acc_t<T>* gz;    // (n, C, h, w)
  acc_t<T>* part;  // (blocks, E): pw_weight (O*C), pw_bias (O), dw_weight (9C), dw_bias (C)
  long long tiles;
  int C, O, tiles_x, tiles_y;
  Activation act;
};

template <typename A, int P, int GS>
struct alignas(16) GradSlice {  // gpre of the output slice at v[pixel][k], for vector broadcast loads
  A v[P][GS];
};

template <typename A>
__device__ __forceinline__ void accumulate(A* p, A v, bool first) {
  *p = first ? v : *p + v;
}

template <typename T, int CM>
__global__ void __launch_bounds__(BwdCfg<T, CM>::P) dsconv2d_bwd_params_kernel(BwdArgs<T> a) {
  using A = acc_t<T>;
  using Cfg = BwdCfg<T, CM>;
  constexpr int P = Cfg::P, TH = Cfg::TH, CC = Cfg::CC, OG = Cfg::OG, ZS = Cfg::ZS, GS = Cfg::GS;
  __shared__ A zs[CM][ZS];
  __shared__ A gzs[CM][ZS];
  __shared__ GradSlice<A, P, GS> gp;
  __shared__ A halo[CC][TH + 2][kHaloW];
  __shared__ DwSlice<A, CM> dws;
  __shared__ WeightSlice<A, CM, OG> ws;

  const int tid = threadIdx.x, lx = tid % kTileW, ly = tid / kTileW;
  const int C = a.C, O = a.O;
  const long long hw = static_cast<long long>(a.in.h) * a.in.w;
  const long long E = static_cast<long long>(O) * C + O + 10LL * C;
  A* part = a.part + blockIdx.x * E;
  A* part_pb = part + static_cast<long long>(O) * C;
  A* part_dw = part_pb + O;
  A* part_db = part_dw + 9LL * C;

  stage_dw<T, CM, P>(dws, a.dw, C, tid);
  for (long long ti = blockIdx.x; ti < a.tiles; ti += gridDim.x) {
    const bool first = ti == blockIdx.x;
    const Tile t = tile_of(ti, a.tiles_x, a.tiles_y, TH);
    const int py = t.y0 + ly, px = t.x0 + lx;
    const bool inside = py < a.in.h && px < a.in.w;
    const long long pix = static_cast<long long>(py) * a.in.w + px;

    depthwise_tile<T, TH, CC, P, ZS, CM>(halo, &zs[0][0], dws, a.in, t, C, tid);

    for (int o0 = 0; o0 < O; o0 += OG) {
      __syncthreads();  // zs complete; previous slice's weights and gpre consumed
      stage_weights<T, CM, OG, P>(ws, a.pw_weight, a.pw_bias, o0, O, C, tid);
      __syncthreads();
      A g[OG];
      pointwise(ws, &zs[0][tid], ZS, C, g);
      const T* grad = a.grad + (static_cast<long long>(t.n) * O + o0) * hw + pix;
      DS_UNROLL()
      for (int k = 0; k < OG; ++k) {
        g[k] = inside && o0 + k < O ? activation_grad(load(grad + k * hw), g[k], a.act) : A(0);
        gp.v[tid][k] = g[k];
      }
      // gz[c] += sum_k w[o0 + k][c] gpre[k]: this thread's column only
      DS_UNROLL(4)
      for (int c = 0; c < C; ++c) {
        A s = o0 == 0 ? A(0) : gzs[c][tid];
        DS_UNROLL()
        for (int k = 0; k < OG; ++k) s += ws.v[c][k] * g[k];
        gzs[c][tid] = s;
      }
      __syncthreads();
      // grad_pw_weight[o0 + k][u] = sum_p gpre[k](p) z[u](p); unit 0 also grad_pw_bias
      for (int u = tid; u < C; u += P) {
        A s[OG], b[OG];
        DS_UNROLL()
        for (int k = 0; k < OG; ++k) s[k] = b[k] = A(0);
        DS_UNROLL(4)
        for (int p = 0; p < P; ++p) {
          const A z = zs[u][p];
          DS_UNROLL()
          for (int k = 0; k < OG; ++k) {
            const A gv = gp.v[p][k];
            s[k] += gv * z;
            b[k] += gv;
          }
        }
        DS_UNROLL()
        for (int k = 0; k < OG; ++k)
          if (o0 + k < O) {
            accumulate(part + static_cast<long long>(o0 + k) * C + u, s[k], first);
            if (u == 0) accumulate(part_pb + o0 + k, b[k], first);
          }
      }
    }
    // gzs is complete (barrier after the last slice's update): out to the workspace for grad_x
    if (inside) {
      A* gz = a.gz + static_cast<long long>(t.n) * C * hw + pix;
      for (int c = 0; c < C; ++c) gz[c * hw] = gzs[c][tid];
    }
    // grad_dw_weight[c][k] = sum_p gz[c](p) in_c(p + k - 1); grad_dw_bias[c] = sum_p gz[c](p)
    for (int c0 = 0; c0 < C; c0 += CC) {
      __syncthreads();  // halo free
      load_halo<T, TH, CC, P>(halo, a.in, t, c0, C, tid);
      __syncthreads();
      for (int u = tid; u < CC * 10; u += P) {
        const int cc = u / 10, k = u % 10, c = c0 + cc;
        if (c >= C) continue;
        A s = 0;
        if (k < 9) {
          const int ky = k / 3, kx = k % 3;
          for (int r = 0; r < TH; ++r)
            DS_UNROLL(8)
            for (int q = 0; q < kTileW; ++q) s += gzs[c][r * kTileW + q] * halo[cc][r + ky][q + kx];
          accumulate(part_dw + c * 9 + k, s, first);
        } else {
          DS_UNROLL(8)
          for (int p = 0; p < P; ++p) s += gzs[c][p];
          accumulate(part_db + c, s, first);
        }
      }
    }
    __syncthreads();  // gzs and the halo are reused by the next tile
  }
}

// The blocks' partial sums in block order, in double; written as T to the four parameter gradients
// (their concatenation is the partials' entry order).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) dsconv2d_bwd_reduce_kernel(const acc_t<T>* part, int blocks,
                                                                             long long E, int O, int C,
                                                                             T* g_pw_weight, T* g_pw_bias,
                                                                             T* g_dw_weight, T* g_dw_bias) {
  const long long e = static_cast<long long>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (e >= E) return;
  double s = 0;
  for (int b = 0; b < blocks; ++b) s += static_cast<double>(part[b * E + e]);
  const T v = cast<T>(static_cast<acc_t<T>>(s));
  const long long pw = static_cast<long long>(O) * C;
  if (e < pw)
    g_pw_weight[e] = v;
  else if (e < pw + O)
    g_pw_bias[e - pw] = v;
  else if (e < pw + O + 9LL * C)
    g_dw_weight[e - pw - O] = v;
  else
    g_dw_bias[e - pw - O - 9LL * C] = v;
}

// grad_in_c(q) = sum_{ky,kx} dw[c][ky][kx] gz[c](q - (ky - 1, kx - 1)): a block per 32 x kInputRows
// tile of one (n, c) plane, gz's halo staged in shared.
template <typename T>
__global__ void __launch_bounds__(kTileW* kInputRows) dsconv2d_bwd_input_kernel(const acc_t<T>* gz,
                                                                                const T* dw_weight, T* gx, T* gx2,
                                                                                int C, int c1, int h, int w,
                                                                                int tiles_x, int tiles_y) {
  using A = acc_t<T>;
  constexpr int NT = kTileW * kInputRows;
  __shared__ A hh[kInputRows + 2][kHaloW];
  const int tid = threadIdx.x, lx = tid % kTileW, ly = tid / kTileW;
  const long long tiles = static_cast<long long>(tiles_x) * tiles_y;
  const long long plane = blockIdx.x / tiles;
  const Tile t = tile_of(blockIdx.x % tiles, tiles_x, tiles_y, kInputRows);
  const int n = static_cast<int>(plane / C), c = static_cast<int>(plane % C);
  const long long hw = static_cast<long long>(h) * w;
  const A* src = gz + plane * hw;
  for (int i = tid; i < (kInputRows + 2) * kHaloW; i += NT) {
    const int r = i / kHaloW, col = i % kHaloW, yy = t.y0 - 1 + r, xx = t.x0 - 1 + col;
    hh[r][col] = yy >= 0 && yy < h && xx >= 0 && xx < w ? src[static_cast<long long>(yy) * w + xx] : A(0);
  }
  A k[9];
  DS_UNROLL()
  for (int j = 0; j < 9; ++j) k[j] = load(dw_weight + c * 9 + j);
  __syncthreads();
  const int py = t.y0 + ly, px = t.x0 + lx;
  if (py >= h || px >= w) return;  // after the only barrier
  A s = 0;
  DS_UNROLL()
  for (int ky = 0; ky < 3; ++ky)
    DS_UNROLL()
    for (int kx = 0; kx < 3; ++kx) s += k[ky * 3 + kx] * hh[ly + 2 - ky][lx + 2 - kx];
  const long long pix = static_cast<long long>(py) * w + px;
  if (c < c1)
    gx[(static_cast<long long>(n) * c1 + c) * hw + pix] = cast<T>(s);
  else
    gx2[(static_cast<long long>(n) * (C - c1) + (c - c1)) * hw + pix] = cast<T>(s);
}

// ------------------------------------------------------------------------ host side
size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

bool valid(const DsconvShape& s) {
  const int C = s.c1 + s.c2;
  return s.c1 >= 1 && s.c2 >= 0 && C <= kMaxDsconvChannels && s.o >= 1 && s.n >= 0 && s.h >= 0 && s.w >= 0;
}

int ceil_div(int a, int b) { return (a + b - 1) / b; }

template <typename T, int CM, int OG>
cudaError_t launch_fwd(const FwdArgs<T>& a, int n, cudaStream_t stream) {
  using Cfg = FwdCfg<T, CM, OG>;
  (void)stream;  // unused by the host emulation's launch
  FwdArgs<T> args = a;
  args.tiles_x = ceil_div(a.in.w, kTileW);
  args.tiles_y = ceil_div(a.in.h, Cfg::TH);
  const long long tiles = static_cast<long long>(n) * args.tiles_x * args.tiles_y;
  SGLLIE_LAUNCH(dim3(static_cast<unsigned>(tiles)), dim3(Cfg::P), stream, dsconv2d_fwd_kernel<T, CM, OG>)(args);
  return SGLLIE_LAUNCH_STATUS();
}

template <typename T, int CM>
cudaError_t launch_fwd_og(const FwdArgs<T>& a, int n, cudaStream_t stream) {
  constexpr int kWide = sizeof(acc_t<T>) == 4 ? 16 : 8;
  return a.O <= 4 ? launch_fwd<T, CM, 4>(a, n, stream) : launch_fwd<T, CM, kWide>(a, n, stream);
}

// The backward's grid: tiles and blocks, a function of the shape only.
struct BwdGrid {
  int tiles_x, tiles_y;
  long long tiles;
  int blocks;
  long long entries;  // partial sums per block
};

template <typename T>
BwdGrid bwd_grid(const DsconvShape& s) {
  const int C = s.c1 + s.c2;
  const int th = C <= 32 ? BwdCfg<T, 32>::TH : BwdCfg<T, 64>::TH;
  BwdGrid g{};
  g.tiles_x = ceil_div(s.w, kTileW);
  g.tiles_y = ceil_div(s.h, th);
  g.tiles = static_cast<long long>(s.n) * g.tiles_x * g.tiles_y;
  g.blocks = static_cast<int>(g.tiles < kMaxBwdBlocks ? g.tiles : kMaxBwdBlocks);
  g.entries = static_cast<long long>(s.o) * C + s.o + 10LL * C;
  return g;
}

}  // namespace

template <typename T>
cudaError_t dsconv2d_forward(const T* x, const T* x2, const T* dw_weight, const T* dw_bias, const T* pw_weight,
                             const T* pw_bias, T* y, DsconvShape s, Activation act, cudaStream_t stream) {
  if (!valid(s)) return cudaErrorInvalidValue;
  if (s.n == 0 || s.h == 0 || s.w == 0) return cudaSuccess;
  const FwdArgs<T> a{Src<T>{x, x2, s.c1, s.c2, s.h, s.w}, DwParams<T>{dw_weight, dw_bias}, pw_weight, pw_bias, y,
                     s.c1 + s.c2, s.o, 0, 0, act};
  return a.C <= 32 ? launch_fwd_og<T, 32>(a, s.n, stream) : launch_fwd_og<T, 64>(a, s.n, stream);
}

template <typename T>
size_t dsconv2d_backward_workspace(DsconvShape s) {
  if (!valid(s)) return 0;
  const BwdGrid g = bwd_grid<T>(s);
  const size_t gz = static_cast<size_t>(s.n) * (s.c1 + s.c2) * s.h * s.w;
  return align16(gz * sizeof(acc_t<T>)) + align16(static_cast<size_t>(g.blocks) * g.entries * sizeof(acc_t<T>));
}

template <typename T>
cudaError_t dsconv2d_backward(const T* grad, const T* x, const T* x2, const T* dw_weight, const T* dw_bias,
                              const T* pw_weight, const T* pw_bias, T* grad_x, T* grad_x2, T* grad_dw_weight,
                              T* grad_dw_bias, T* grad_pw_weight, T* grad_pw_bias, void* workspace,
                              DsconvShape s, Activation act, cudaStream_t stream) {
  using A = acc_t<T>;
  (void)stream;  // unused by the host emulation's launch
  if (!valid(s)) return cudaErrorInvalidValue;
  const int C = s.c1 + s.c2;
  const BwdGrid g = bwd_grid<T>(s);
  A* gz = static_cast<A*>(workspace);
  A* part = reinterpret_cast<A*>(static_cast<char*>(workspace) +
                                 align16(static_cast<size_t>(s.n) * C * s.h * s.w * sizeof(A)));
  if (g.tiles > 0) {
    const BwdArgs<T> a{Src<T>{x, x2, s.c1, s.c2, s.h, s.w}, DwParams<T>{dw_weight, dw_bias}, grad, pw_weight,
                       pw_bias, gz, part, g.tiles, C, s.o, g.tiles_x, g.tiles_y, act};
    if (C <= 32)
      SGLLIE_LAUNCH(dim3(g.blocks), dim3(BwdCfg<T, 32>::P), stream, dsconv2d_bwd_params_kernel<T, 32>)(a);
    else
      SGLLIE_LAUNCH(dim3(g.blocks), dim3(BwdCfg<T, 64>::P), stream, dsconv2d_bwd_params_kernel<T, 64>)(a);
  }
  // with no pixels the parameter gradients are zeros (blocks = 0)
  SGLLIE_LAUNCH(dim3(blocks_for(g.entries, kReduceThreads)), dim3(kReduceThreads), stream,
                dsconv2d_bwd_reduce_kernel<T>)(part, g.blocks, g.entries, s.o, C, grad_pw_weight, grad_pw_bias,
                                               grad_dw_weight, grad_dw_bias);
  if (g.tiles > 0) {
    const int tx = ceil_div(s.w, kTileW), ty = ceil_div(s.h, kInputRows);
    const long long blocks = static_cast<long long>(s.n) * C * tx * ty;
    SGLLIE_LAUNCH(dim3(static_cast<unsigned>(blocks)), dim3(kTileW * kInputRows), stream,
                  dsconv2d_bwd_input_kernel<T>)(gz, dw_weight, grad_x, grad_x2, C, s.c1, s.h, s.w, tx, ty);
  }
  return SGLLIE_LAUNCH_STATUS();
}

#define SGLLIE_INSTANTIATE(T)                                                                                  \
  template cudaError_t dsconv2d_forward<T>(const T*, const T*, const T*, const T*, const T*, const T*, T*,     \
                                           DsconvShape, Activation, cudaStream_t);                            \
  template size_t dsconv2d_backward_workspace<T>(DsconvShape);                                                 \
  template cudaError_t dsconv2d_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*,        \
                                            const T*, T*, T*, T*, T*, T*, T*, void*, DsconvShape, Activation, \
                                            cudaStream_t);
SGLLIE_FOR_EACH_STORAGE_TYPE(SGLLIE_INSTANTIATE)
#undef SGLLIE_INSTANTIATE
#undef DS_UNROLL
#undef DS_PRAGMA

}  // namespace sgllie::cuda
