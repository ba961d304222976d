// Vectorized elementary functions on top of simd.h, accurate to a few float32
// ulps. Shared by every kernel that needs them (GELU now; softmax later).
#pragma once

#include "ssl_core/simd.h"

namespace ssl_core::cpu::SSL_CORE_ISA {

// e^x. Range reduction x = n*ln2 + r with |r| <= ln2/2 (ln2 split in two so
// n*ln2_hi is exact), then a degree-7 Taylor polynomial for e^r (truncation
// error < 6e-9 relative) and an exact scaling by 2^n. Overflows to +inf above
// ~88.72, underflows through the subnormals to 0 below ~-103.9, keeps NaN.
inline Vec exp(Vec x) {
  x = max(min(x, splat(89.0f)), splat(-104.0f));
  // n = round(x / ln2): adding 1.5 * 2^23 leaves no fraction bits, so the
  // fused multiply-add rounds to an integer, which subtracting it recovers
  // exactly (|x / ln2| < 151 here). Two cheap operations instead of a
  // multiply and a round, which AVX-512 runs on one port only.
  const Vec magic = splat(12582912.0f);
  const Vec n = fma(x, splat(1.44269504088896341f), magic) - magic;
  Vec r = fma(n, splat(-0.693145751953125f), x);
  r = fma(n, splat(-1.428606765330187e-06f), r);
  Vec p = splat(1.0f / 5040);
  p = fma(p, r, splat(1.0f / 720));
  p = fma(p, r, splat(1.0f / 120));
  p = fma(p, r, splat(1.0f / 24));
  p = fma(p, r, splat(1.0f / 6));
  p = fma(p, r, splat(0.5f));
  p = fma(p, r, splat(1.0f));
  p = fma(p, r, splat(1.0f));
  return ldexp(p, n);
}

// Upper tail of the standard normal distribution, Q(a) = P(Z > a) = erfc(a/√2)/2,
// for finite a >= 0, with relative error below 3e-7 wherever Q(a) > 1e-37.
// Also returns e^{-a²/2}, from which the density φ(a) = e^{-a²/2}/√(2π).
//
// Q(a) = φ(a) R(a), where Mills' ratio R(a) = t h(t) with t = 1/(1 + 0.28a)
// mapping [0, inf) onto (0, 1], where h is smooth: a degree-8 polynomial
// fitted for this project to R/t from scipy.special.erfcx in float64
// (near-minimax, max relative error 1.7e-7); the coefficients below include
// the 1/√(2π) of φ. Computing the tail directly, rather than 1 - Φ, keeps
// full relative accuracy for the small values that GELU multiplies by large
// |x|; one exp serves both Q and φ.
constexpr float kInvSqrt2Pi = 0.398942280401432678f;

inline Vec normal_upper_tail(Vec a, Vec& gaussian) {
  const Vec t = reciprocal(fma(a, splat(0.28f), splat(1.0f)));
  Vec h = splat(0.0619646329f * kInvSqrt2Pi);
  h = fma(h, t, splat(-0.234606194f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.231687237f * kInvSqrt2Pi));
  h = fma(h, t, splat(-0.0161688274f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.182421135f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.209631049f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.25839496f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.279989883f * kInvSqrt2Pi));
  h = fma(h, t, splat(0.280000048f * kInvSqrt2Pi));
  gaussian = exp(a * a * splat(-0.5f));
  return t * h * gaussian;
}

// Where |x| > 20 the formulas below would meet inf * 0 at x = ±inf (and the
// reciprocal its NaN); float32 cannot tell GELU there from its limits, so
// take `at_plus` for x > 20 and `at_minus` for x < -20.
inline Vec gelu_limits(Vec x, Vec y, Mask non_negative, Vec at_plus, Vec at_minus) {
  return select(greater(abs(x), splat(20.0f)), select(non_negative, at_plus, at_minus), y);
}

// GELU(x) = x Φ(x), exact (erf) form: x - x Q(x) for x >= 0 and x Q(-x) below.
// Max abs error vs float64 over |x| <= 10: 2.4e-7 (final rounding dominates).
inline Vec gelu_erf(Vec x) {
  Vec gaussian;
  const Vec q = normal_upper_tail(abs(x), gaussian);
  const Vec xq = x * q;
  const Mask non_negative = not_less(x, splat(0.0f));
  return gelu_limits(x, select(non_negative, x - xq, xq), non_negative, x, splat(-0.0f));
}

// d GELU / dx = Φ(x) + x φ(x).
inline Vec gelu_erf_derivative(Vec x) {
  Vec gaussian;
  const Vec q = normal_upper_tail(abs(x), gaussian);
  const Mask non_negative = not_less(x, splat(0.0f));
  const Vec cdf = select(non_negative, splat(1.0f) - q, q);
  const Vec d = fma(x * splat(kInvSqrt2Pi), gaussian, cdf);
  return gelu_limits(x, d, non_negative, splat(1.0f), splat(0.0f));
}

// GPT-2's tanh form, 0.5 x (1 + tanh(u)) with u = √(2/π)(x + 0.044715 x³),
// written as x * sigmoid(2u) so that no cancellation occurs for negative x.
constexpr float kSqrt2OverPi = 0.797884560802865355f;
constexpr float kGeluCubic = 0.044715f;

// s = sigmoid(2u) = 1 / (1 + e) with e = exp(-2u); also 1 - s = e s, computed
// that way because 1 - s itself would cancel to nothing for large x. e is
// capped at e^80 so that e s stays finite (s < 2e-35 there, as good as 0).
inline Vec sigmoid_of_2u(Vec x, Vec* one_minus_s = nullptr, Vec* du_dx = nullptr) {
  const Vec x2 = x * x;
  const Vec u = x * fma(x2, splat(kSqrt2OverPi * kGeluCubic), splat(kSqrt2OverPi));
  const Vec e = exp(min(u * splat(-2.0f), splat(80.0f)));
  const Vec s = reciprocal(splat(1.0f) + e);
  if (one_minus_s) *one_minus_s = e * s;
  if (du_dx) *du_dx = fma(x2, splat(3.0f * kSqrt2OverPi * kGeluCubic), splat(kSqrt2OverPi));
  return s;
}

inline Vec gelu_tanh(Vec x) {
  return gelu_limits(x, x * sigmoid_of_2u(x), not_less(x, splat(0.0f)), x, splat(-0.0f));
}

// d/dx [x s(x)] with s = sigmoid(2u): s + x s (1 - s) 2 du/dx.
inline Vec gelu_tanh_derivative(Vec x) {
  Vec one_minus_s, du_dx;
  const Vec s = sigmoid_of_2u(x, &one_minus_s, &du_dx);
  const Vec d = fma(x * s * one_minus_s, du_dx * splat(2.0f), s);
  return gelu_limits(x, d, not_less(x, splat(0.0f)), splat(1.0f), splat(0.0f));
}

}  // namespace ssl_core::cpu::SSL_CORE_ISA
