// SGZ's three image-space losses (spatial consistency, exposure, colour) on the CPU in one pass over
// y and i: per band of rows, the patch-pooled grey maps and per-channel sums; then the small maps
// give the three scalars. Backward recomputes the maps (one read) and writes dL/dy, dL/di in one
// pass. Sums are in double, per band, added in order: deterministic whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "sgllie/math.h"

namespace sgllie {
namespace {

struct Geometry {
  int64_t n, H, W, p, e;    // batch, size, spa patch, exposure patch
  int64_t ph, pw, eh, ew;   // pooled sizes (remainder rows/columns dropped)
  int64_t band, bands;      // rows per parallel task (a multiple of both patches), tasks per image
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

// Pooled grey means of y (spa and exposure) and i (spa), and per-channel sums of y.
struct Maps {
  std::vector<double> py, pi, pe, csum;  // (n, ph, pw), (n, ph, pw), (n, eh, ew), (n, 3)
};

template <typename T>
Maps pooled_maps(const T* y, const T* i, const Geometry& g) {
  Maps m{std::vector<double>(g.n * g.ph * g.pw), std::vector<double>(g.n * g.ph * g.pw),
         std::vector<double>(g.n * g.eh * g.ew), std::vector<double>(g.n * 3)};
  std::vector<double> band_csum(g.n * g.bands * 3);
  const int64_t plane = g.H * g.W;
  at::parallel_for(0, g.n * g.bands, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.bands, row0 = (task % g.bands) * g.band;
      const int64_t row1 = std::min(row0 + g.band, g.H);
      const T* yb = y + b * 3 * plane;
      const T* ib = i + b * 3 * plane;
      double cs[3] = {0, 0, 0};
      for (int64_t r = row0; r < row1; ++r) {
        const bool spa_row = r < g.ph * g.p, exp_row = r < g.eh * g.e;
        double* py = m.py.data() + (b * g.ph + r / g.p) * g.pw;
        double* pi = m.pi.data() + (b * g.ph + r / g.p) * g.pw;
        double* pe = m.pe.data() + (b * g.eh + r / g.e) * g.ew;
        for (int64_t c = 0; c < g.W; ++c) {
          const int64_t k = r * g.W + c;
          const double y0 = yb[k], y1 = yb[plane + k], y2 = yb[2 * plane + k];
          cs[0] += y0;
          cs[1] += y1;
          cs[2] += y2;
          const double gy = (y0 + y1 + y2) / 3.0;
          if (spa_row && c < g.pw * g.p) {
            py[c / g.p] += gy;
            pi[c / g.p] += (double(ib[k]) + double(ib[plane + k]) + double(ib[2 * plane + k])) / 3.0;
          }
          if (exp_row && c < g.ew * g.e) pe[c / g.e] += gy;
        }
      }
      for (int c = 0; c < 3; ++c) band_csum[task * 3 + c] = cs[c];
    }
  });
  for (int64_t task = 0; task < g.n * g.bands; ++task)
    for (int c = 0; c < 3; ++c) m.csum[(task / g.bands) * 3 + c] += band_csum[task * 3 + c];
  const double sp = 1.0 / double(g.p * g.p), se = 1.0 / double(g.e * g.e);
  for (auto& v : m.py) v *= sp;
  for (auto& v : m.pi) v *= sp;
  for (auto& v : m.pe) v *= se;
  return m;
}

// map[b, r + dy, c + dx], zero outside (the reference's conv padding).
inline double at_or_zero(const double* map, int64_t h, int64_t w, int64_t r, int64_t c) {
  return (r < 0 || r >= h || c < 0 || c >= w) ? 0.0 : map[r * w + c];
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> zero_reference_loss_cpu(
    const at::Tensor& y_, const at::Tensor& i_, int64_t patch, double level, int64_t exposure_patch) {
  check_inputs(y_, i_, patch, exposure_patch);
  const at::Tensor y = y_.contiguous(), i = i_.contiguous();
  const Geometry g = geometry(y, patch, exposure_patch);
  Maps m;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sgllie_C::zero_reference_loss", [&] {
    m = pooled_maps(y.data_ptr<scalar_t>(), i.data_ptr<scalar_t>(), g);
  });
  double spa = 0, exp = 0, col = 0;
  for (int64_t b = 0; b < g.n; ++b) {
    const double* py = m.py.data() + b * g.ph * g.pw;
    const double* pi = m.pi.data() + b * g.ph * g.pw;
    for (int64_t r = 0; r < g.ph; ++r)
      for (int64_t c = 0; c < g.pw; ++c)
        for (const Neighbour& d : kSpaNeighbours) {
          const double dy = py[r * g.pw + c] - at_or_zero(py, g.ph, g.pw, r + d.dy, c + d.dx);
          const double di = pi[r * g.pw + c] - at_or_zero(pi, g.ph, g.pw, r + d.dy, c + d.dx);
          spa += d.weight * (dy - di) * (dy - di);
        }
    double mean[3], k, dk[3];
    for (int c = 0; c < 3; ++c) mean[c] = m.csum[b * 3 + c] / double(g.H * g.W);
    colour(mean, &k, dk);
    col += k;
  }
  for (double v : m.pe) exp += (v - level) * (v - level);
  const auto opts = y.options();
  return {at::scalar_tensor(spa / double(g.n * g.ph * g.pw), opts),
          at::scalar_tensor(exp / double(g.n * g.eh * g.ew), opts), at::scalar_tensor(col / double(g.n), opts)};
}

std::tuple<at::Tensor, at::Tensor> zero_reference_loss_backward_cpu(
    const at::Tensor& g_spa, const at::Tensor& g_exp, const at::Tensor& g_col, const at::Tensor& y_,
    const at::Tensor& i_, int64_t patch, double level, int64_t exposure_patch) {
  check_inputs(y_, i_, patch, exposure_patch);
  const at::Tensor y = y_.contiguous(), i = i_.contiguous();
  const Geometry g = geometry(y, patch, exposure_patch);
  at::Tensor gy = at::empty_like(y), gi = at::empty_like(i);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sgllie_C::zero_reference_loss_backward", [&] {
    const Maps m = pooled_maps(y.data_ptr<scalar_t>(), i.data_ptr<scalar_t>(), g);
    // gradients of the small maps, already divided by the pixels each pooled value averages
    const double spa_scale = 2.0 * g_spa.item<double>() / double(g.n * g.ph * g.pw) / double(3 * g.p * g.p);
    std::vector<double> gdelta(m.py.size(), 0.0), gexp(m.pe.size()), gcol(g.n * 3);
    for (int64_t b = 0; b < g.n; ++b) {
      const int64_t off = b * g.ph * g.pw;
      std::vector<double> delta(g.ph * g.pw);
      for (int64_t k = 0; k < g.ph * g.pw; ++k) delta[k] = m.py[off + k] - m.pi[off + k];
      for (int64_t r = 0; r < g.ph; ++r)
        for (int64_t c = 0; c < g.pw; ++c) {
          double acc = 0;
          for (const Neighbour& d : kSpaNeighbours) {  // e_d[p] - e_d[p - d], e_d = delta - shifted delta
            acc += d.weight * (delta[r * g.pw + c] - at_or_zero(delta.data(), g.ph, g.pw, r + d.dy, c + d.dx));
            if (r - d.dy >= 0 && r - d.dy < g.ph && c - d.dx >= 0 && c - d.dx < g.pw)
              acc -= d.weight * (delta[(r - d.dy) * g.pw + c - d.dx] - delta[r * g.pw + c]);
          }
          gdelta[off + r * g.pw + c] = acc * spa_scale;
        }
      double mean[3], k, dk[3];
      for (int c = 0; c < 3; ++c) mean[c] = m.csum[b * 3 + c] / double(g.H * g.W);
      colour(mean, &k, dk);
      for (int c = 0; c < 3; ++c) gcol[b * 3 + c] = g_col.item<double>() * dk[c] / double(g.n * g.H * g.W);
    }
    const double exp_scale = 2.0 * g_exp.item<double>() / double(g.n * g.eh * g.ew) / double(3 * g.e * g.e);
    for (size_t k = 0; k < m.pe.size(); ++k) gexp[k] = (m.pe[k] - level) * exp_scale;

    scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gip = gi.data_ptr<scalar_t>();
    at::parallel_for(0, g.n * 3 * g.H, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t r = row % g.H, ch = (row / g.H) % 3, b = row / (3 * g.H);
        const bool spa_row = r < g.ph * g.p, exp_row = r < g.eh * g.e;
        const double* gd = gdelta.data() + (b * g.ph + r / g.p) * g.pw;
        const double* ge = gexp.data() + (b * g.eh + r / g.e) * g.ew;
        const double base = gcol[b * 3 + ch];
        scalar_t* oy = gyp + row * g.W;
        scalar_t* oi = gip + row * g.W;
        for (int64_t c = 0; c < g.W; ++c) {
          const double s = (spa_row && c < g.pw * g.p) ? gd[c / g.p] : 0.0;
          const double e = (exp_row && c < g.ew * g.e) ? ge[c / g.e] : 0.0;
          oy[c] = static_cast<scalar_t>(base + s + e);
          oi[c] = static_cast<scalar_t>(-s);
        }
      }
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
