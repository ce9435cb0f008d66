// SGZ's three image-space losses (spatial consistency, exposure, colour) on the CPU in one pass over
// y and i: per band of rows, the patch-pooled grey maps and per-channel sums; then the small maps
// give the three scalars and their gradients with respect to each patch and channel
// (pooled_grads). The backward only spreads those over the pixels: one write of dL/dy (and dL/di
// when asked), no read of y or i. Sums are in double, per band, added in order: deterministic
// whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "sgllie/cpu_output.h"
#include "sgllie/cpu_simd.h"
#include "sgllie/math.h"

namespace sgllie {
namespace {

struct Geometry {
  int64_t n, H, W, p, e;    // batch, size, spa patch, exposure patch
  int64_t ph, pw, eh, ew;   // pooled sizes (remainder rows/columns dropped)
  int64_t band, bands;      // rows per parallel task (a multiple of both patches), tasks per image
  int64_t spa_size() const { return n * ph * pw; }
  int64_t exp_size() const { return n * eh * ew; }
  int64_t pooled_size() const { return spa_size() + exp_size() + n * 3; }
};

Geometry geometry(const at::Tensor& y, int64_t patch, int64_t exposure_patch) {
  Geometry g{y.size(0), y.size(2), y.size(3), patch, exposure_patch};
  g.ph = g.H / g.p;
  g.pw = g.W / g.p;
  g.eh = g.H / g.e;
  g.ew = g.W / g.e;
  g.band = std::lcm(g.p, g.e);
  g.bands = (g.H + g.band - 1) / g.band;
  return g;
}

// Sums of the pooled grey maps of y (spa and exposure patches) and i (spa), and of y's channels.
struct Maps {
  std::vector<double> py, pi, pe, csum;  // (n, ph, pw), (n, ph, pw), (n, eh, ew), (n, 3)
};

// Per-row scratch of a band: grey sums of y and i accumulated over a patch's rows.
template <typename T>
struct BandScratch {
  std::vector<T> grey, acc_y, acc_i, acc_e;
  explicit BandScratch(int64_t W) : grey(W), acc_y(W, T(0)), acc_i(W, T(0)), acc_e(W, T(0)) {}
};

template <typename T>
SGLLIE_SIMD_INLINE double sum_double(const T* __restrict__ v, int64_t len) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < len; ++c) s += static_cast<double>(v[c]);
  return s;
}

// out[k] = sum of acc[k * p .. k * p + p) for k < count, then acc = 0.
template <typename T>
SGLLIE_SIMD_INLINE void pool_columns(T* __restrict__ acc, int64_t p, int64_t count, double* __restrict__ out) {
  for (int64_t k = 0; k < count; ++k) out[k] = sum_double(acc + k * p, p);
  std::fill(acc, acc + count * p, T(0));
}

// One band of rows [row0, row1) of image b: its rows of the pooled maps and its channel sums.
template <typename T>
SGLLIE_SIMD_CLONES void pool_band(const T* y, const T* i, const Geometry& g, int64_t b, int64_t row0,
                                  int64_t row1, Maps& m, double* channel_sums, BandScratch<T>& s) {
  const int64_t plane = g.H * g.W, W = g.W;
  T* __restrict__ grey = s.grey.data();
  T* __restrict__ acc_y = s.acc_y.data();
  T* __restrict__ acc_i = s.acc_i.data();
  T* __restrict__ acc_e = s.acc_e.data();
  for (int64_t r = row0; r < row1; ++r) {
    const T* __restrict__ y0 = y + b * 3 * plane + r * W;
    const T* __restrict__ i0 = i + b * 3 * plane + r * W;
    for (int c = 0; c < 3; ++c) channel_sums[c] += sum_double(y0 + c * plane, W);
    const bool in_spa = r < g.ph * g.p, in_exp = r < g.eh * g.e;
    if (!in_spa && !in_exp) continue;
    for (int64_t c = 0; c < W; ++c) grey[c] = y0[c] + y0[plane + c] + y0[2 * plane + c];
    if (in_spa) {
      for (int64_t c = 0; c < W; ++c) {
        acc_y[c] += grey[c];
        acc_i[c] += i0[c] + i0[plane + c] + i0[2 * plane + c];
      }
      if ((r + 1) % g.p == 0) {
        const int64_t k = (b * g.ph + r / g.p) * g.pw;
        pool_columns(acc_y, g.p, g.pw, m.py.data() + k);
        pool_columns(acc_i, g.p, g.pw, m.pi.data() + k);
      }
    }
    if (in_exp) {
      for (int64_t c = 0; c < W; ++c) acc_e[c] += grey[c];
      if ((r + 1) % g.e == 0) pool_columns(acc_e, g.e, g.ew, m.pe.data() + (b * g.eh + r / g.e) * g.ew);
    }
  }
}

template <typename T>
Maps pooled_maps(const T* y, const T* i, const Geometry& g) {
  Maps m{std::vector<double>(g.spa_size()), std::vector<double>(g.spa_size()),
         std::vector<double>(g.exp_size()), std::vector<double>(g.n * 3)};
  std::vector<double> band_csum(g.n * g.bands * 3, 0.0);
  at::parallel_for(0, g.n * g.bands, 1, [&](int64_t begin, int64_t end) {
    BandScratch<T> scratch(g.W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.bands, row0 = (task % g.bands) * g.band;
      pool_band(y, i, g, b, row0, std::min(row0 + g.band, g.H), m, band_csum.data() + task * 3, scratch);
    }
  });
  for (int64_t task = 0; task < g.n * g.bands; ++task)
    for (int c = 0; c < 3; ++c) m.csum[(task / g.bands) * 3 + c] += band_csum[task * 3 + c];
  const double sp = 1.0 / double(3 * g.p * g.p), se = 1.0 / double(3 * g.e * g.e);
  for (auto& v : m.py) v *= sp;
  for (auto& v : m.pi) v *= sp;
  for (auto& v : m.pe) v *= se;
  return m;
}

// An (h, w) map inside a zero border of 1 (the reference's conv padding): neighbours need no
// bounds checks, so the loops over the small maps are branch-free.
struct Padded {
  int64_t h, w;
  std::vector<double> v;
  Padded(int64_t h_, int64_t w_) : h(h_), w(w_), v((h_ + 2) * (w_ + 2), 0.0) {}
  double& at(int64_t r, int64_t c) { return v[(r + 1) * (w + 2) + c + 1]; }
};

// e_d = m - m shifted by d, for the 8 neighbours d, each inside a zero border.
std::vector<Padded> neighbour_differences(Padded& m) {
  std::vector<Padded> e(8, Padded(m.h, m.w));
  for (int k = 0; k < 8; ++k)
    for (int64_t r = 0; r < m.h; ++r)
      for (int64_t c = 0; c < m.w; ++c)
        e[k].at(r, c) = m.at(r, c) - m.at(r + kSpaNeighbours[k].dy, c + kSpaNeighbours[k].dx);
  return e;
}

// The three channel means' colour-constancy value k and dk/dmean (zero where k = 0).
void colour(const double* mean, double* k, double* dk) {
  const double a = mean[0] - mean[1], b = mean[0] - mean[2], c = mean[2] - mean[1];
  *k = std::sqrt(a * a * a * a + b * b * b * b + c * c * c * c);
  const double s = *k > 0 ? 1.0 / (2.0 * *k) : 0.0;
  dk[0] = s * 4 * (a * a * a + b * b * b);
  dk[1] = s * -4 * (a * a * a + c * c * c);
  dk[2] = s * 4 * (c * c * c - b * b * b);
}

void check_inputs(const at::Tensor& y, const at::Tensor& i, int64_t patch, int64_t exposure_patch) {
  TORCH_CHECK(y.dim() == 4 && y.size(1) == 3 && y.sizes() == i.sizes(),
              "sgllie_C::zero_reference_loss: y and i must be (N, 3, H, W) of the same shape");
  TORCH_CHECK(patch >= 1 && exposure_patch >= 1 && y.size(2) >= std::max(patch, exposure_patch) &&
                  y.size(3) >= std::max(patch, exposure_patch),
              "sgllie_C::zero_reference_loss: images smaller than a patch");
  TORCH_CHECK(y.scalar_type() == i.scalar_type() && y.device().is_cpu() && i.device().is_cpu(),
              "sgllie_C::zero_reference_loss: CPU tensors of one dtype expected");
}

// spa of image b, and d spa / d delta (delta = pooled y - pooled i) per patch into gdelta.
double spatial_consistency(const Maps& m, const Geometry& g, int64_t b, double* gdelta) {
  Padded delta(g.ph, g.pw);
  for (int64_t r = 0; r < g.ph; ++r)
    for (int64_t c = 0; c < g.pw; ++c) {
      const int64_t k = (b * g.ph + r) * g.pw + c;
      delta.at(r, c) = m.py[k] - m.pi[k];
    }
  // e_d = delta - delta shifted (of y minus of i: the shifts are linear), weighted squares summed
  std::vector<Padded> e = neighbour_differences(delta);
  double sum = 0;
  for (int k = 0; k < 8; ++k)
    for (double d : e[k].v) sum += kSpaNeighbours[k].weight * d * d;  // the zero border adds nothing
  // d/ddelta[p] = 2 sum_d w_d (e_d[p] - e_d[p - d]), e_d zero outside the map
  for (int64_t r = 0; r < g.ph; ++r)
    for (int64_t c = 0; c < g.pw; ++c) {
      double acc = 0;
      for (int k = 0; k < 8; ++k) {
        const Neighbour& d = kSpaNeighbours[k];
        acc += d.weight * (e[k].at(r, c) - e[k].at(r - d.dy, c - d.dx));
      }
      gdelta[(b * g.ph + r) * g.pw + c] = 2 * acc;
    }
  return sum;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> zero_reference_loss_cpu(
    const at::Tensor& y_, const at::Tensor& i_, int64_t patch, double level, int64_t exposure_patch) {
  check_inputs(y_, i_, patch, exposure_patch);
  const at::Tensor y = y_.contiguous(), i = i_.contiguous();
  const Geometry g = geometry(y, patch, exposure_patch);
  Maps m;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sgllie_C::zero_reference_loss", [&] {
    m = pooled_maps(y.data_ptr<scalar_t>(), i.data_ptr<scalar_t>(), g);
  });
  // pooled_grads: d loss / d (each pixel of a spa patch | exposure patch | channel), per image
  at::Tensor pooled = at::empty({g.pooled_size()}, y.options().dtype(at::kDouble));
  double* gdelta = pooled.data_ptr<double>();
  double* gexp = gdelta + g.spa_size();
  double* gcol = gexp + g.exp_size();
  std::vector<double> spa_per_image(g.n);
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) spa_per_image[b] = spatial_consistency(m, g, b, gdelta);
  });
  const double spa_pixel = 1.0 / double(g.spa_size()) / double(3 * g.p * g.p);
  for (int64_t k = 0; k < g.spa_size(); ++k) gdelta[k] *= spa_pixel;
  double spa = 0, exp = 0, col = 0;
  for (int64_t b = 0; b < g.n; ++b) {
    spa += spa_per_image[b];
    double mean[3], k, dk[3];
    for (int c = 0; c < 3; ++c) mean[c] = m.csum[b * 3 + c] / double(g.H * g.W);
    colour(mean, &k, dk);
    col += k;
    for (int c = 0; c < 3; ++c) gcol[b * 3 + c] = dk[c] / double(g.n * g.H * g.W);
  }
  const double exp_pixel = 2.0 / double(g.exp_size()) / double(3 * g.e * g.e);
  for (int64_t k = 0; k < g.exp_size(); ++k) {
    exp += (m.pe[k] - level) * (m.pe[k] - level);
    gexp[k] = (m.pe[k] - level) * exp_pixel;
  }
  const auto opts = y.options();
  return {at::scalar_tensor(spa / double(g.spa_size()), opts), at::scalar_tensor(exp / double(g.exp_size()), opts),
          at::scalar_tensor(col / double(g.n), opts), pooled};
}

// Row r of image b: dL/dy for the three channels (and dL/di), from the patch gradients.
template <typename T>
SGLLIE_SIMD_CLONES void spread_row(const double* gd, const double* ge, const double* gc, double g_spa,
                                   double g_exp, const Geometry& g, int64_t b, int64_t r, T* gy, T* gi,
                                   T* __restrict__ spa_row, T* __restrict__ exp_row) {
  const int64_t plane = g.H * g.W, W = g.W;
  std::fill(spa_row, spa_row + W, T(0));
  std::fill(exp_row, exp_row + W, T(0));
  if (r < g.ph * g.p)
    for (int64_t k = 0; k < g.pw; ++k)
      std::fill(spa_row + k * g.p, spa_row + (k + 1) * g.p, static_cast<T>(g_spa * gd[(b * g.ph + r / g.p) * g.pw + k]));
  if (r < g.eh * g.e)
    for (int64_t k = 0; k < g.ew; ++k)
      std::fill(exp_row + k * g.e, exp_row + (k + 1) * g.e, static_cast<T>(g_exp * ge[(b * g.eh + r / g.e) * g.ew + k]));
  for (int64_t ch = 0; ch < 3; ++ch) {
    const T base = static_cast<T>(gc[b * 3 + ch]);
    T* __restrict__ oy = gy + (b * 3 + ch) * plane + r * W;
    for (int64_t c = 0; c < W; ++c) oy[c] = base + spa_row[c] + exp_row[c];
    if (gi == nullptr) continue;
    T* __restrict__ oi = gi + (b * 3 + ch) * plane + r * W;
    for (int64_t c = 0; c < W; ++c) oi[c] = -spa_row[c];
  }
}

std::tuple<at::Tensor, at::Tensor> zero_reference_loss_backward_cpu(
    const at::Tensor& g_spa, const at::Tensor& g_exp, const at::Tensor& g_col, const at::Tensor& pooled_,
    const at::Tensor& y, bool need_grad_i, int64_t patch, int64_t exposure_patch) {
  TORCH_CHECK(y.dim() == 4 && y.size(1) == 3, "sgllie_C::zero_reference_loss_backward: y must be (N, 3, H, W)");
  const Geometry g = geometry(y, patch, exposure_patch);
  const at::Tensor pooled = pooled_.contiguous().to(at::kDouble);
  TORCH_CHECK(pooled.numel() == g.pooled_size(),
              "sgllie_C::zero_reference_loss_backward: pooled_grads does not match y and the patches");
  at::Tensor gy = new_output(y.sizes(), y.options());
  at::Tensor gi = need_grad_i ? new_output(y.sizes(), y.options()) : at::empty({0}, y.options());
  const double gs = g_spa.item<double>(), ge = g_exp.item<double>(), gc = g_col.item<double>();
  const double* gdelta = pooled.data_ptr<double>();
  const double* gexp = gdelta + g.spa_size();
  std::vector<double> gcol(pooled.data_ptr<double>() + g.spa_size() + g.exp_size(),
                           pooled.data_ptr<double>() + g.pooled_size());
  for (double& v : gcol) v *= gc;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sgllie_C::zero_reference_loss_backward", [&] {
    scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gip = need_grad_i ? gi.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, g.n * g.H, 16, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> spa_row(g.W), exp_row(g.W);
      for (int64_t row = begin; row < end; ++row)
        spread_row(gdelta, gexp, gcol.data(), gs, ge, g, row / g.H, row % g.H, gyp, gip, spa_row.data(),
                   exp_row.data());
    });
  });
  return {gy, gi};
}

}  // namespace

TORCH_LIBRARY_IMPL(sgllie_C, CPU, m) {
  m.impl("zero_reference_loss", &zero_reference_loss_cpu);
  m.impl("zero_reference_loss_backward", &zero_reference_loss_backward_cpu);
}

}  // namespace sgllie
