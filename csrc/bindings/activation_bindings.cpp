// Python entry points of the GELU kernels.
#include <string>

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

py::array gelu_forward(py::handle x_obj, py::handle approximate, py::handle y_obj) {
  const auto kind = parse_approximate(approximate);
  RowsArg x = rows_arg(x_obj, "x");
  RowsArg y = output_rows(y_obj, "y", shape_of(x.array));
  require_no_overlap({{"y", y.array}}, {{"x", x.array}});
  {
    py::gil_scoped_release release;
    cpu::gelu_forward(y.view, as_const(x.view), kind);
  }
  return y.array;
}

py::array gelu_backward(py::handle dy_obj, py::handle x_obj, py::handle approximate,
                        py::handle dx_obj) {
  const auto kind = parse_approximate(approximate);
  RowsArg dy = rows_arg(dy_obj, "dy");
  RowsArg x = rows_arg(x_obj, "x");
  require_same_shape(dy, x);
  RowsArg dx = output_rows(dx_obj, "dx", shape_of(x.array));
  require_no_overlap({{"dx", dx.array}}, {{"dy", dy.array}, {"x", x.array}});
  {
    py::gil_scoped_release release;
    cpu::gelu_backward(dx.view, as_const(dy.view), as_const(x.view), kind);
  }
  return dx.array;
}

}  // namespace

void bind_activation(py::module_& m) {
  m.def("gelu_forward", &gelu_forward, py::arg("x"), py::arg("approximate"), py::arg("y"),
        "y = GELU(x). See ssl_core.ops.gelu.");
  m.def("gelu_backward", &gelu_backward, py::arg("dy"), py::arg("x"), py::arg("approximate"),
        py::arg("dx"), "dx = dy * GELU'(x). See ssl_core.ops.gelu_backward.");
}

}  // namespace ssl_core::bindings
