// Python entry points of the GELU kernels.
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

cpu::GeluApproximation parse_approximate(py::handle obj) {
  if (!py::isinstance<py::str>(obj))
    throw py::type_error("approximate must be the string 'none' or 'tanh', got " +
                         std::string(py::str(py::repr(obj))));
  const std::string approximate = obj.cast<std::string>();
  if (approximate == "none") return cpu::GeluApproximation::none;
  if (approximate == "tanh") return cpu::GeluApproximation::tanh;
  throw py::value_error("approximate must be 'none' or 'tanh', got '" + approximate + "'");
}

// bias: None, or float32 (C,) added to x first.
const float* bias_arg(py::handle obj, const RowsArg& x, py::array& keep) {
  if (obj.is_none()) return nullptr;
  keep = float32_array(obj, "bias", {static_cast<py::ssize_t>(x.view.cols)});
  return static_cast<const float*>(keep.data());
}

py::array gelu_forward(py::handle x_obj, py::handle approximate, py::handle bias_obj, py::handle y_obj) {
  const auto kind = parse_approximate(approximate);
  RowsArg x = rows_arg(x_obj, "x");
  py::array bias;
  const float* b = bias_arg(bias_obj, x, bias);
  RowsArg y = output_rows(y_obj, "y", shape_of(x.array));
  std::vector<std::pair<const char*, py::array>> inputs{{"x", x.array}};
  if (b) inputs.emplace_back("bias", bias);
  require_no_overlap({{"y", y.array}}, inputs);
  {
    py::gil_scoped_release release;
    cpu::gelu_forward(y.view, as_const(x.view), b, kind);
  }
  return y.array;
}

py::array gelu_backward(py::handle dy_obj, py::handle x_obj, py::handle approximate, py::handle bias_obj,
                        py::handle dx_obj) {
  const auto kind = parse_approximate(approximate);
  RowsArg dy = rows_arg(dy_obj, "dy");
  RowsArg x = rows_arg(x_obj, "x");
  require_same_shape(dy, x);
  py::array bias;
  const float* b = bias_arg(bias_obj, x, bias);
  RowsArg dx = output_rows(dx_obj, "dx", shape_of(x.array));
  std::vector<std::pair<const char*, py::array>> inputs{{"dy", dy.array}, {"x", x.array}};
  if (b) inputs.emplace_back("bias", bias);
  require_no_overlap({{"dx", dx.array}}, inputs);
  {
    py::gil_scoped_release release;
    cpu::gelu_backward(dx.view, as_const(dy.view), as_const(x.view), b, kind);
  }
  return dx.array;
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def("gelu_forward", &gelu_forward, py::arg("x"), py::arg("approximate"), py::arg("bias"), py::arg("y"),
        "y = GELU(x + bias). See ssl_core.ops.gelu.");
  m.def("gelu_backward", &gelu_backward, py::arg("dy"), py::arg("x"), py::arg("approximate"), py::arg("bias"),
        py::arg("dx"), "dx = dy * GELU'(x + bias). See ssl_core.ops.gelu_backward.");
}

}  // namespace ssl_core::bindings
