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

// Sum of row[c0 .. c0 + len) in double.
template <typename T>
inline double span_sum(const T* row, int64_t c0, int64_t len) {
  double s = 0;
  for (int64_t c = c0; c < c0 + len; ++c) s += row[c];
  return s;
}

template <typename T>
Maps pooled_maps(const T* y, const T* i, const Geometry& g) {
  Maps m{std::vector<double>(g.n * g.ph * g.pw), std::vector<double>(g.n * g.ph * g.pw),
         std::vector<double>(g.n * g.eh * g.ew), std::vector<double>(g.n * 3)};
  std::vector<double> band_csum(g.n * g.bands * 3);
  const int64_t plane = g.H * g.W;
  at::parallel_for(0, g.n * g.bands, 1, [&](int64_t begin, int64_t end) {
    // channel sums of y, grey rows of y and i: simple loops the compiler vectorises
    std::vector<T> grey_y(g.W), grey_i(g.W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.bands, row0 = (task % g.bands) * g.band;
      const int64_t row1 = std::min(row0 + g.band, g.H);
      double cs[3] = {0, 0, 0};
      for (int64_t r = row0; r < row1; ++r) {
        const T* y0 = y + b * 3 * plane + r * g.W;
        const T* i0 = i + b * 3 * plane + r * g.W;
        for (int c = 0; c < 3; ++c) cs[c] += span_sum(y0 + c * plane, 0, g.W);
        if (r >= g.ph * g.p && r >= g.eh * g.e) continue;  // in neither pooled map
        for (int64_t c = 0; c < g.W; ++c) grey_y[c] = (y0[c] + y0[plane + c] + y0[2 * plane + c]) / T(3);
        if (r < g.ph * g.p) {
          for (int64_t c = 0; c < g.W; ++c) grey_i[c] = (i0[c] + i0[plane + c] + i0[2 * plane + c]) / T(3);
          double* py = m.py.data() + (b * g.ph + r / g.p) * g.pw;
          double* pi = m.pi.data() + (b * g.ph + r / g.p) * g.pw;
          for (int64_t pc = 0; pc < g.pw; ++pc) {
            py[pc] += span_sum(grey_y.data(), pc * g.p, g.p);
            pi[pc] += span_sum(grey_i.data(), pc * g.p, g.p);
          }
        }
        if (r < g.eh * g.e) {
          double* pe = m.pe.data() + (b * g.eh + r / g.e) * g.ew;
          for (int64_t ec = 0; ec < g.ew; ++ec) pe[ec] += span_sum(grey_y.data(), ec * g.e, g.e);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> zero_reference_loss_cpu(
    const at::Tensor& y_, const at::Tensor& i_, int64_t patch, double level, int64_t exposure_patch) {
  check_inputs(y_, i_, patch, exposure_patch);
  const at::Tensor y = y_.contiguous(), i = i_.contiguous();
  const Geometry g = geometry(y, patch, exposure_patch);
  Maps m;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sgllie_C::zero_reference_loss", [&] {
    m = pooled_maps(y.data_ptr<scalar_t>(), i.data_ptr<scalar_t>(), g);
  });
  std::vector<double> spa_per_image(g.n);
  at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      Padded py(g.ph, g.pw), pi(g.ph, g.pw);
      for (int64_t r = 0; r < g.ph; ++r)
        for (int64_t c = 0; c < g.pw; ++c) {
          py.at(r, c) = m.py[(b * g.ph + r) * g.pw + c];
          pi.at(r, c) = m.pi[(b * g.ph + r) * g.pw + c];
        }
      const std::vector<Padded> ey = neighbour_differences(py), ei = neighbour_differences(pi);
      double sum = 0;
      for (int k = 0; k < 8; ++k)
        for (size_t j = 0; j < ey[k].v.size(); ++j) {  // the zero border adds nothing
          const double d = ey[k].v[j] - ei[k].v[j];
          sum += kSpaNeighbours[k].weight * d * d;
        }
      spa_per_image[b] = sum;
    }
  });
  double spa = 0, exp = 0, col = 0;
  for (int64_t b = 0; b < g.n; ++b) {
    spa += spa_per_image[b];
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
    std::vector<double> gdelta(m.py.size()), gexp(m.pe.size()), gcol(g.n * 3);
    const double gc = g_col.item<double>();
    at::parallel_for(0, g.n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        Padded delta(g.ph, g.pw);
        for (int64_t r = 0; r < g.ph; ++r)
          for (int64_t c = 0; c < g.pw; ++c) {
            const int64_t k = (b * g.ph + r) * g.pw + c;
            delta.at(r, c) = m.py[k] - m.pi[k];
          }
        // dL/ddelta[p] = sum_d w_d (e_d[p] - e_d[p - d]), e_d zero outside the map
        std::vector<Padded> e = neighbour_differences(delta);
        for (int64_t r = 0; r < g.ph; ++r)
          for (int64_t c = 0; c < g.pw; ++c) {
            double acc = 0;
            for (int k = 0; k < 8; ++k) {
              const Neighbour& d = kSpaNeighbours[k];
              acc += d.weight * (e[k].at(r, c) - e[k].at(r - d.dy, c - d.dx));
            }
            gdelta[(b * g.ph + r) * g.pw + c] = acc * spa_scale;
          }
      }
    });
    for (int64_t b = 0; b < g.n; ++b) {
      double mean[3], k, dk[3];
      for (int c = 0; c < 3; ++c) mean[c] = m.csum[b * 3 + c] / double(g.H * g.W);
      colour(mean, &k, dk);
      for (int c = 0; c < 3; ++c) gcol[b * 3 + c] = gc * dk[c] / double(g.n * g.H * g.W);
    }
    const double exp_scale = 2.0 * g_exp.item<double>() / double(g.n * g.eh * g.ew) / double(3 * g.e * g.e);
    for (size_t k = 0; k < m.pe.size(); ++k) gexp[k] = (m.pe[k] - level) * exp_scale;

    scalar_t* gyp = gy.data_ptr<scalar_t>();
    scalar_t* gip = gi.data_ptr<scalar_t>();
    const int64_t plane = g.H * g.W;
    at::parallel_for(0, g.n * g.H, 16, [&](int64_t begin, int64_t end) {
      // per image row: the spa and exposure gradients spread over their patches' columns once,
      // then one vectorisable write per channel
      std::vector<scalar_t> spa_row(g.W), exp_row(g.W);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t r = row % g.H, b = row / g.H;
        std::fill(spa_row.begin(), spa_row.end(), scalar_t(0));
        std::fill(exp_row.begin(), exp_row.end(), scalar_t(0));
        if (r < g.ph * g.p) {
          const double* gd = gdelta.data() + (b * g.ph + r / g.p) * g.pw;
          for (int64_t c = 0; c < g.pw * g.p; ++c) spa_row[c] = static_cast<scalar_t>(gd[c / g.p]);
        }
        if (r < g.eh * g.e) {
          const double* ge = gexp.data() + (b * g.eh + r / g.e) * g.ew;
          for (int64_t c = 0; c < g.ew * g.e; ++c) exp_row[c] = static_cast<scalar_t>(ge[c / g.e]);
        }
        const scalar_t* __restrict__ sr = spa_row.data();
        const scalar_t* __restrict__ er = exp_row.data();
        for (int64_t ch = 0; ch < 3; ++ch) {
          const scalar_t base = static_cast<scalar_t>(gcol[b * 3 + ch]);
          scalar_t* __restrict__ oy = gyp + b * 3 * plane + ch * plane + r * g.W;
          scalar_t* __restrict__ oi = gip + b * 3 * plane + ch * plane + r * g.W;
          for (int64_t c = 0; c < g.W; ++c) {
            oy[c] = base + sr[c] + er[c];
            oi[c] = -sr[c];
          }
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
