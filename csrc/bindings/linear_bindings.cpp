// Python entry point of the few-rows linear kernel.
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

py::array linear_forward(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle y_obj) {
  RowsArg x = rows_arg(x_obj, "x");
  RowsArg weight = rows_arg(weight_obj, "weight");
  if (weight.array.ndim() != 2)
    throw py::value_error("weight must be 2-D (out_features, in_features), got shape " +
                          shape_string(shape_of(weight.array)));
  if (weight.view.cols != x.view.cols)
    throw py::value_error("x has " + std::to_string(x.view.cols) + " features in its last axis, weight " +
                          shape_string(shape_of(weight.array)) + " expects " + std::to_string(weight.view.cols));
  std::vector<std::pair<const char*, py::array>> inputs{{"x", x.array}, {"weight", weight.array}};
  py::array bias;
  if (!bias_obj.is_none()) {
    bias = float32_array(bias_obj, "bias", {static_cast<py::ssize_t>(weight.view.rows)});
    inputs.emplace_back("bias", bias);
  }
  Shape out_shape = shape_of(x.array);
  out_shape.back() = static_cast<py::ssize_t>(weight.view.rows);
  RowsArg y = output_rows(y_obj, "y", out_shape);
  require_no_overlap({{"y", y.array}}, inputs, /*allow_in_place=*/false);
  {
    py::gil_scoped_release release;
    cpu::linear_forward(y.view, as_const(x.view), as_const(weight.view),
                        bias_obj.is_none() ? nullptr : static_cast<const float*>(bias.data()));
  }
  return y.array;
}

}  // namespace

void bind_linear(py::module_& m) {
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"),
        "y = x weight^T + bias for few rows of x. See ssl_core.ops.linear.");
}

}  // namespace ssl_core::bindings
