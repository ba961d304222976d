// Python entry point of the few-rows linear kernel: float32 weights, or
// bfloat16 weights given as their uint16 bits (NumPy has no bfloat16).
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

// A 2-D uint16 array of bfloat16 bits whose rows have a contiguous last axis.
RowsViewT<const uint16_t> bf16_rows(const py::array& a) {
  const py::ssize_t item = sizeof(uint16_t);
  if (a.shape(1) > 1 && a.strides(1) != item)
    throw py::value_error("weight (bfloat16 bits) must have a contiguous last axis; pass numpy.ascontiguousarray");
  if (a.shape(0) > 1 && (a.strides(0) % item != 0 || a.strides(0) < a.shape(1) * item))
    throw py::value_error("weight (bfloat16 bits) rows must not overlap; pass numpy.ascontiguousarray");
  return {static_cast<const uint16_t*>(a.data()), a.shape(0), a.shape(1),
          a.shape(0) > 1 ? a.strides(0) / item : a.shape(1)};
}

py::array linear_forward(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle y_obj) {
  RowsArg x = rows_arg(x_obj, "x");
  const bool bf16 = py::isinstance<py::array>(weight_obj) &&
                    py::reinterpret_borrow<py::array>(weight_obj).dtype().is(py::dtype::of<uint16_t>());
  py::array weight_array;
  RowsView weight_view;
  if (bf16) {
    weight_array = py::reinterpret_borrow<py::array>(weight_obj);
  } else {
    RowsArg w = rows_arg(weight_obj, "weight");
    weight_array = w.array;
    weight_view = w.view;
  }
  if (weight_array.ndim() != 2)
    throw py::value_error("weight must be 2-D (out_features, in_features), got shape " +
                          shape_string(shape_of(weight_array)));
  const int64_t N = weight_array.shape(0), K = weight_array.shape(1);
  if (K != x.view.cols)
    throw py::value_error("x has " + std::to_string(x.view.cols) + " features in its last axis, weight " +
                          shape_string(shape_of(weight_array)) + " expects " + std::to_string(K));
  std::vector<std::pair<const char*, py::array>> inputs{{"x", x.array}, {"weight", weight_array}};
  py::array bias;
  if (!bias_obj.is_none()) {
    bias = float32_array(bias_obj, "bias", {static_cast<py::ssize_t>(N)});
    inputs.emplace_back("bias", bias);
  }
  Shape out_shape = shape_of(x.array);
  out_shape.back() = static_cast<py::ssize_t>(N);
  RowsArg y = output_rows(y_obj, "y", out_shape);
  require_no_overlap({{"y", y.array}}, inputs, /*allow_in_place=*/false);
  const float* b = bias_obj.is_none() ? nullptr : static_cast<const float*>(bias.data());
  if (bf16) {
    const RowsViewT<const uint16_t> w = bf16_rows(weight_array);
    py::gil_scoped_release release;
    cpu::linear_forward_bf16(y.view, as_const(x.view), w, b);
  } else {
    py::gil_scoped_release release;
    cpu::linear_forward(y.view, as_const(x.view), as_const(weight_view), b);
  }
  return y.array;
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"),
        "y = x weight^T + bias for few rows of x; weight float32, or bfloat16 bits as uint16. "
        "See ssl_core.ops.linear.");
}

}  // namespace ssl_core::bindings
