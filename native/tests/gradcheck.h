// gradcheck.h: finite-difference gradient checks in float64.
//
// Kernels are templates instantiated for double in tests, so central differences with
// h = 1e-6 have truncation error O(h²) ≈ 1e-12 and rounding error ≈ eps·|L|/h ≈ 1e-10
// relative: an analytic gradient that agrees to ~1e-6 relative is right, and a wrong term
// (a missing factor, a dropped branch) shows up as O(1) error.
//
// Two checks per input tensor:
//   1. coordinate-wise central differences on a random subset of coordinates (all if small);
//   2. a directional check over all coordinates at once: (L(x + h v) - L(x - h v)) / 2h against
//      <grad, v> for a random direction v, which catches errors in coordinates the subset missed.
// The loss is usually <out, w> for a fixed random w, so that dL/dout = w drives the backward.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

#include "harness.h"

namespace qs_test {

// `x` is perturbed in place (and restored); `loss` recomputes the forward from the current x;
// `analytic` is dL/dx from the backward under test.
inline bool check_gradient(const char* label, std::vector<double>& x, const std::vector<double>& analytic,
                           const std::function<double()>& loss, Rng& rng, size_t max_coords = 48,
                           double h = 1e-6, double rtol = 1e-6, double atol = 1e-8) {
  bool ok = true;
  size_t n = x.size();
  if (analytic.size() != n) {
    fail(__FILE__, __LINE__, "%s: analytic gradient has %zu elements, input has %zu", label, analytic.size(), n);
    return false;
  }
  // 1. coordinates
  std::vector<size_t> coords;
  if (n <= max_coords) {
    for (size_t i = 0; i < n; i++) coords.push_back(i);
  } else {
    for (size_t c = 0; c < max_coords; c++) coords.push_back(rng.next_u64() % n);
  }
  double max_abs = 0, max_rel = 0;
  size_t bad = 0, first_bad = 0;
  double first_num = 0, first_ana = 0;
  for (size_t i : coords) {
    double saved = x[i];
    x[i] = saved + h;
    double lp = loss();
    x[i] = saved - h;
    double lm = loss();
    x[i] = saved;
    double numeric = (lp - lm) / (2 * h);
    double err = std::fabs(numeric - analytic[i]);
    double scale = std::max(std::fabs(numeric), std::fabs(analytic[i]));
    max_abs = std::max(max_abs, err);
    if (scale > atol) max_rel = std::max(max_rel, err / scale);
    if (!(err <= atol + rtol * scale)) {
      if (!bad) { first_bad = i; first_num = numeric; first_ana = analytic[i]; }
      bad++;
    }
  }
  // 2. one random direction over all coordinates
  std::vector<double> v(n), saved = x;
  double dot = 0, vnorm = 0;
  for (size_t i = 0; i < n; i++) { v[i] = rng.normal(); dot += analytic[i] * v[i]; vnorm += v[i] * v[i]; }
  for (size_t i = 0; i < n; i++) x[i] = saved[i] + h * v[i];
  double lp = loss();
  for (size_t i = 0; i < n; i++) x[i] = saved[i] - h * v[i];
  double lm = loss();
  x = saved;
  double dir_numeric = (lp - lm) / (2 * h);
  double gnorm = 0;
  for (double g : analytic) gnorm += g * g;
  // <g, v> can cancel to near zero; judge its error against |g|·|v|, the size of its terms.
  double dir_scale = std::sqrt(gnorm * vnorm);
  double dir_err = std::fabs(dir_numeric - dot);
  bool dir_ok = dir_err <= atol + rtol * std::max(dir_scale, 1e-30) * 10;
  ok = bad == 0 && dir_ok;
  fprintf(stdout, "    grad %-34s n=%-7zu coords=%-3zu max_abs=%.2e max_rel=%.2e dir_err=%.2e  %s\n", label, n,
          coords.size(), max_abs, max_rel, dir_err / std::max(dir_scale, 1e-30), ok ? "OK" : "NOT OK");
  if (bad)
    fail(__FILE__, __LINE__, "%s: %zu coordinates disagree; first at %zu: numeric %.12g analytic %.12g", label, bad,
         first_bad, first_num, first_ana);
  if (!dir_ok)
    fail(__FILE__, __LINE__, "%s: directional derivative %.12g vs <grad,v> %.12g", label, dir_numeric, dot);
  return ok;
}

// <a, b> in double: the usual scalar loss L = <out, w>.
template <typename T>
double dot(const std::vector<T>& a, const std::vector<T>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += (double)a[i] * (double)b[i];
  return s;
}

}  // namespace qs_test
