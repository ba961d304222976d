// The specification of every CPU kernel: plain loops, float64 arithmetic,
// one thread. The fast paths (layer_norm.cpp, gelu.cpp) are tested against
// these and against NumPy; select them at run time with
// ssl_core.set_cpu_isa("reference") or SSL_CORE_CPU_ISA=reference.
#include <cmath>
#include <cstring>
#include <vector>

#include "ssl_core/kernels.h"

namespace ssl_core::cpu::reference {

void layer_norm_forward(RowsView y, float* mean, float* rstd, ConstRowsView x, const float* weight,
                        const float* bias, float eps) {
  const int64_t N = x.rows, C = x.cols;
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x.row(i);
    double sum = 0;
    for (int64_t j = 0; j < C; ++j) sum += xr[j];
    const double m = sum / C;
    double squares = 0;
    for (int64_t j = 0; j < C; ++j) squares += (xr[j] - m) * (xr[j] - m);
    const double rs = 1.0 / std::sqrt(squares / C + eps);
    for (int64_t j = 0; j < C; ++j)
      y.row(i)[j] = static_cast<float>((xr[j] - m) * rs * weight[j] + bias[j]);
    mean[i] = static_cast<float>(m);
    rstd[i] = static_cast<float>(rs);
  }
}

void layer_norm_backward(RowsView dx, float* dweight, float* dbias, ConstRowsView dy,
                         ConstRowsView x, const float* weight, const float* mean, const float* rstd,
                         bool accumulate) {
  const int64_t N = x.rows, C = x.cols;
  std::vector<double> dw(C, 0.0), db(C, 0.0), xhat(C);
  for (int64_t i = 0; i < N; ++i) {
    const float *xr = x.row(i), *dyr = dy.row(i);
    double mean_g = 0, mean_g_xhat = 0;
    for (int64_t j = 0; j < C; ++j) {
      xhat[j] = (xr[j] - static_cast<double>(mean[i])) * rstd[i];
      const double g = static_cast<double>(dyr[j]) * weight[j];
      mean_g += g / C;
      mean_g_xhat += g * xhat[j] / C;
      dw[j] += static_cast<double>(dyr[j]) * xhat[j];
      db[j] += dyr[j];
    }
    for (int64_t j = 0; j < C; ++j) {
      const double g = static_cast<double>(dyr[j]) * weight[j];
      dx.row(i)[j] = static_cast<float>(rstd[i] * (g - mean_g - xhat[j] * mean_g_xhat));
    }
  }
  for (int64_t j = 0; j < C; ++j) {
    dweight[j] = static_cast<float>(accumulate ? dweight[j] + dw[j] : dw[j]);
    dbias[j] = static_cast<float>(accumulate ? dbias[j] + db[j] : db[j]);
  }
}

namespace {

constexpr double kSqrt2OverPi = 0.79788456080286535588;

double gelu_value(double x, GeluApproximation approximate) {
  if (approximate == GeluApproximation::tanh)
    return 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x)));
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}

double gelu_derivative(double x, GeluApproximation approximate) {
  if (approximate == GeluApproximation::tanh) {
    const double t = std::tanh(kSqrt2OverPi * (x + 0.044715 * x * x * x));
    const double du_dx = kSqrt2OverPi * (1.0 + 3 * 0.044715 * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx;
  }
  const double pdf = std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  return 0.5 * std::erfc(-x / std::sqrt(2.0)) + x * pdf;
}

// The formulas meet inf * 0 at x = ±inf; these are their limits.
double gelu_limit(double x, double value, double at_plus_inf, double at_minus_inf) {
  if (std::isinf(x)) return x > 0 ? at_plus_inf : at_minus_inf;
  return value;
}

}  // namespace

void gelu_forward(RowsView y, ConstRowsView x, const float* bias, GeluApproximation approximate) {
  for (int64_t i = 0; i < x.rows; ++i)
    for (int64_t j = 0; j < x.cols; ++j) {
      const double v = static_cast<double>(x.row(i)[j]) + (bias ? bias[j] : 0.0);
      y.row(i)[j] = static_cast<float>(gelu_limit(v, gelu_value(v, approximate), v, -0.0));
    }
}

void gelu_backward(RowsView dx, ConstRowsView dy, ConstRowsView x, const float* bias,
                   GeluApproximation approximate) {
  for (int64_t i = 0; i < x.rows; ++i)
    for (int64_t j = 0; j < x.cols; ++j) {
      const double v = static_cast<double>(x.row(i)[j]) + (bias ? bias[j] : 0.0);
      const double d = gelu_limit(v, gelu_derivative(v, approximate), 1.0, 0.0);
      dx.row(i)[j] = static_cast<float>(dy.row(i)[j] * d);
    }
}

void linear_forward(RowsView y, ConstRowsView x, ConstRowsView weight, const float* bias) {
  for (int64_t m = 0; m < x.rows; ++m)
    for (int64_t n = 0; n < weight.rows; ++n) {
      double sum = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < x.cols; ++k) sum += static_cast<double>(x.row(m)[k]) * weight.row(n)[k];
      y.row(m)[n] = static_cast<float>(sum);
    }
}

// bfloat16 is the high 16 bits of a float32.
static float from_bfloat16(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof value);
  return value;
}

void linear_forward_bf16(RowsView y, ConstRowsView x, RowsViewT<const uint16_t> weight, const float* bias) {
  for (int64_t m = 0; m < x.rows; ++m)
    for (int64_t n = 0; n < weight.rows; ++n) {
      double sum = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < x.cols; ++k)
        sum += static_cast<double>(x.row(m)[k]) * from_bfloat16(weight.row(n)[k]);
      y.row(m)[n] = static_cast<float>(sum);
    }
}

}  // namespace ssl_core::cpu::reference
