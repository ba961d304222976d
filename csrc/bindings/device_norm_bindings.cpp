// Python entry points of the CUDA LayerNorm, GELU and AdamW kernels
// (csrc/cuda/layer_norm.cu, gelu.cu, adamw.cu): outputs first, then inputs,
// then scalars, then the stream. Every array is checked (dtype, shape,
// layout, writability, overlap) with the CPU bindings' rules and messages
// before the launcher runs with the GIL released. Compiled into
// ssl_core._C.cuda and, against the emulator, ssl_core._simt.
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device_arrays.h"
#include "ssl_core/cuda_kernels.h"

namespace ssl_core::bindings {
namespace {

std::string number(double value) { return py::str(py::float_(value)).cast<std::string>(); }

// The shape of `obj`'s array interface (for comparisons with another array).
std::vector<int64_t> shape_of(py::handle obj, const char* name) { return device_array(obj, name).shape; }

// A rows view shaped exactly like `shape` (the input's).
RowsView rows_like(py::handle obj, const char* name, const std::vector<int64_t>& shape, const char* like,
                   bool writable) {
  const std::vector<int64_t> actual = shape_of(obj, name);
  if (actual != shape)
    throw py::value_error(std::string(name) + " must have the shape of " + like + ", " + shape_string(shape) +
                          ", got " + shape_string(actual));
  return device_rows(obj, name, shape.empty() ? -1 : shape.back(), writable);
}

// A 1-d contiguous float32 array of n elements (n < 0: of any length, which
// is stored in n).
float* flat_floats(py::handle obj, const char* name, int64_t& n, bool writable) {
  if (n < 0) {
    const std::vector<int64_t> shape = shape_of(obj, name);
    if (shape.size() != 1)
      throw py::value_error(std::string(name) + " must be a contiguous 1-d float32 array, got shape " +
                            shape_string(shape));
    n = shape[0];
  }
  return device_floats(obj, name, n, /*optional=*/false, writable);
}

std::vector<int64_t> leading(std::vector<int64_t> shape) {
  shape.pop_back();
  return shape;
}

void require_features(const std::vector<int64_t>& x_shape) {
  if (x_shape.empty() || x_shape.back() < 1)
    throw py::value_error("x must have at least one feature in its last axis, got shape " + shape_string(x_shape));
}

// ---------------------------------------------------------------------------
// LayerNorm
// ---------------------------------------------------------------------------

void layer_norm_forward(py::handle y_obj, py::handle mean_obj, py::handle rstd_obj, py::handle x_obj,
                        py::handle weight_obj, py::handle bias_obj, double eps, uintptr_t stream) {
  const std::vector<int64_t> x_shape = shape_of(x_obj, "x");
  require_features(x_shape);
  const RowsView x = device_rows(x_obj, "x");
  const int64_t C = x.cols;
  if (!std::isfinite(eps) || eps < 0) throw py::value_error("eps must be a finite number >= 0, got " + number(eps));
  const float* weight = device_floats(weight_obj, "weight", C, /*optional=*/true);
  const float* bias = device_floats(bias_obj, "bias", C, /*optional=*/true);
  const RowsView y = rows_like(y_obj, "y", x_shape, "x", /*writable=*/true);
  float* mean = device_contiguous(mean_obj, "mean", leading(x_shape), true);
  float* rstd = device_contiguous(rstd_obj, "rstd", leading(x_shape), true);
  require_disjoint({{"y", footprint(y)}, {"mean", footprint(mean, x.rows)}, {"rstd", footprint(rstd, x.rows)}},
                   {{"x", footprint(x)}, {"weight", footprint(weight, C)}, {"bias", footprint(bias, C)}},
                   /*allow_in_place=*/true);
  py::gil_scoped_release release;
  cuda::layer_norm_forward(y, mean, rstd, as_const(x), weight, bias, static_cast<float>(eps),
                           stream_handle(stream));
}

void layer_norm_backward(py::handle dx_obj, py::handle dweight_obj, py::handle dbias_obj, py::handle dy_obj,
                         py::handle x_obj, py::handle weight_obj, py::handle mean_obj, py::handle rstd_obj,
                         bool accumulate, uintptr_t stream) {
  const std::vector<int64_t> x_shape = shape_of(x_obj, "x");
  require_features(x_shape);
  const RowsView x = device_rows(x_obj, "x");
  const int64_t C = x.cols;
  const RowsView dy = rows_like(dy_obj, "dy", x_shape, "x", false);
  const float* weight = device_floats(weight_obj, "weight", C, /*optional=*/true);
  const float* mean = device_contiguous(mean_obj, "mean", leading(x_shape), false);
  const float* rstd = device_contiguous(rstd_obj, "rstd", leading(x_shape), false);
  const RowsView dx = rows_like(dx_obj, "dx", x_shape, "x", /*writable=*/true);
  float* dweight = device_floats(dweight_obj, "dweight", C, /*optional=*/false, /*writable=*/true);
  float* dbias = device_floats(dbias_obj, "dbias", C, /*optional=*/false, /*writable=*/true);
  require_disjoint({{"dx", footprint(dx)}, {"dweight", footprint(dweight, C)}, {"dbias", footprint(dbias, C)}},
                   {{"dy", footprint(dy)}, {"x", footprint(x)}, {"mean", footprint(mean, x.rows)},
                    {"rstd", footprint(rstd, x.rows)}, {"weight", footprint(weight, C)}},
                   /*allow_in_place=*/true);
  py::gil_scoped_release release;
  cuda::layer_norm_backward(dx, dweight, dbias, as_const(dy), as_const(x), weight, mean, rstd, accumulate,
                            stream_handle(stream));
}

// ---------------------------------------------------------------------------
// GELU
// ---------------------------------------------------------------------------

cuda::GeluApproximation parse_approximate(py::handle obj) {
  if (!py::isinstance<py::str>(obj))
    throw py::type_error("approximate must be the string 'none' or 'tanh', got " +
                         std::string(py::str(py::repr(obj))));
  const std::string approximate = obj.cast<std::string>();
  if (approximate == "none") return cuda::GeluApproximation::none;
  if (approximate == "tanh") return cuda::GeluApproximation::tanh;
  throw py::value_error("approximate must be 'none' or 'tanh', got '" + approximate + "'");
}

void gelu_forward(py::handle y_obj, py::handle x_obj, py::handle bias_obj, py::handle approximate,
                  uintptr_t stream) {
  const auto kind = parse_approximate(approximate);
  const std::vector<int64_t> x_shape = shape_of(x_obj, "x");
  const RowsView x = device_rows(x_obj, "x");
  const float* bias = device_floats(bias_obj, "bias", x.cols, /*optional=*/true);
  const RowsView y = rows_like(y_obj, "y", x_shape, "x", /*writable=*/true);
  require_disjoint({{"y", footprint(y)}}, {{"x", footprint(x)}, {"bias", footprint(bias, x.cols)}},
                   /*allow_in_place=*/true);
  py::gil_scoped_release release;
  cuda::gelu_forward(y, as_const(x), bias, kind, stream_handle(stream));
}

void gelu_backward(py::handle dx_obj, py::handle dy_obj, py::handle x_obj, py::handle bias_obj,
                   py::handle approximate, uintptr_t stream) {
  const auto kind = parse_approximate(approximate);
  const std::vector<int64_t> x_shape = shape_of(x_obj, "x");
  const RowsView x = device_rows(x_obj, "x");
  const RowsView dy = rows_like(dy_obj, "dy", x_shape, "x", false);
  const float* bias = device_floats(bias_obj, "bias", x.cols, /*optional=*/true);
  const RowsView dx = rows_like(dx_obj, "dx", x_shape, "x", /*writable=*/true);
  require_disjoint({{"dx", footprint(dx)}},
                   {{"dy", footprint(dy)}, {"x", footprint(x)}, {"bias", footprint(bias, x.cols)}},
                   /*allow_in_place=*/true);
  py::gil_scoped_release release;
  cuda::gelu_backward(dx, as_const(dy), as_const(x), bias, kind, stream_handle(stream));
}

// ---------------------------------------------------------------------------
// AdamW
// ---------------------------------------------------------------------------

void adamw_update(py::handle params_obj, py::handle m_obj, py::handle v_obj, py::handle grads_obj, double lr,
                  double beta1, double beta2, double eps, double weight_decay, double grad_scale, int64_t step,
                  uintptr_t stream) {
  int64_t n = -1;
  float* params = flat_floats(params_obj, "params", n, true);
  float* m = flat_floats(m_obj, "m", n, true);
  float* v = flat_floats(v_obj, "v", n, true);
  const float* grads = flat_floats(grads_obj, "grads", n, false);
  require_disjoint({{"params", footprint(params, n)}, {"m", footprint(m, n)}, {"v", footprint(v, n)}},
                   {{"grads", footprint(grads, n)}});
  // The checks of ssl_core.train.AdamW (and of the CPU binding for step).
  if (!(std::isfinite(lr) && lr >= 0)) throw py::value_error("lr must be a finite number >= 0, got " + number(lr));
  if (!(beta1 >= 0 && beta1 < 1)) throw py::value_error("beta1 must be in [0, 1), got " + number(beta1));
  if (!(beta2 >= 0 && beta2 < 1)) throw py::value_error("beta2 must be in [0, 1), got " + number(beta2));
  if (!(std::isfinite(eps) && eps > 0)) throw py::value_error("eps must be a finite number > 0, got " + number(eps));
  if (!(std::isfinite(weight_decay) && weight_decay >= 0))
    throw py::value_error("weight_decay must be a finite number >= 0, got " + number(weight_decay));
  if (!std::isfinite(grad_scale)) throw py::value_error("grad_scale must be finite, got " + number(grad_scale));
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
  const AdamWOptions options{static_cast<float>(lr),  static_cast<float>(beta1),
                             static_cast<float>(beta2), static_cast<float>(eps),
                             static_cast<float>(weight_decay), static_cast<float>(grad_scale), step};
  py::gil_scoped_release release;
  cuda::adamw_update(params, m, v, grads, n, options, stream_handle(stream));
}

}  // namespace

void bind_device_norm(py::module_& m) {
  m.def("layer_norm_forward", &layer_norm_forward, py::arg("y"), py::arg("mean"), py::arg("rstd"), py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("stream") = 0,
        "LayerNorm of x (..., C) over its last axis into y (..., C), mean and rstd (...); weight and bias (C,) "
        "or None. See ssl_core.ops.layer_norm_forward.");
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dx"), py::arg("dweight"), py::arg("dbias"),
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"),
        py::arg("accumulate") = false, py::arg("stream") = 0,
        "dx (..., C), dweight and dbias (C,) (added to when accumulate). See ssl_core.ops.layer_norm_backward.");
  m.def("gelu_forward", &gelu_forward, py::arg("y"), py::arg("x"), py::arg("bias"), py::arg("approximate"),
        py::arg("stream") = 0, "y = GELU(x + bias), approximate 'none' or 'tanh'. See ssl_core.ops.gelu.");
  m.def("gelu_backward", &gelu_backward, py::arg("dx"), py::arg("dy"), py::arg("x"), py::arg("bias"),
        py::arg("approximate"), py::arg("stream") = 0,
        "dx = dy * GELU'(x + bias). See ssl_core.ops.gelu_backward.");
  m.def("adamw_update", &adamw_update, py::arg("params"), py::arg("m"), py::arg("v"), py::arg("grads"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("grad_scale"), py::arg("step"), py::arg("stream") = 0,
        "One AdamW step on the flat params, m, v (n,) in place. See ssl_core.train.AdamW.");
}

}  // namespace ssl_core::bindings
