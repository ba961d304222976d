// Python entry points of the LayerNorm kernels: check every argument, then
// call the kernel with the GIL released.
#include <algorithm>
#include <cmath>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

// weight (C,) float32, or None for ones / zeros.
py::array affine_param(py::handle obj, const char* name, int64_t C, float fill) {
  if (obj.is_none()) {
    py::array_t<float> a({static_cast<py::ssize_t>(C)});
    std::fill(a.mutable_data(), a.mutable_data() + C, fill);
    return a;
  }
  return float32_array(obj, name, {static_cast<py::ssize_t>(C)});
}

Shape leading_shape(const py::array& x) {
  Shape s = shape_of(x);
  s.pop_back();
  return s;
}

const float* ptr(const py::array& a) { return static_cast<const float*>(a.data()); }
float* mutable_ptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }

py::tuple layer_norm_forward(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, double eps,
                             py::handle y_obj, py::handle mean_obj, py::handle rstd_obj) {
  RowsArg x = rows_arg(x_obj, "x");
  const int64_t C = x.view.cols;
  if (C < 1) throw py::value_error("x must have at least one feature in its last axis, got shape " +
                                   shape_string(shape_of(x.array)));
  if (!std::isfinite(eps) || eps < 0)
    throw py::value_error("eps must be a finite number >= 0, got " + std::to_string(eps));
  py::array weight = affine_param(weight_obj, "weight", C, 1.0f);
  py::array bias = affine_param(bias_obj, "bias", C, 0.0f);
  RowsArg y = output_rows(y_obj, "y", shape_of(x.array));
  py::array mean = output_array(mean_obj, "mean", leading_shape(x.array));
  py::array rstd = output_array(rstd_obj, "rstd", leading_shape(x.array));
  require_no_overlap({{"y", y.array}, {"mean", mean}, {"rstd", rstd}},
                     {{"x", x.array}, {"weight", weight}, {"bias", bias}});
  {
    py::gil_scoped_release release;
    cpu::layer_norm_forward(y.view, mutable_ptr(mean), mutable_ptr(rstd), as_const(x.view), ptr(weight),
                            ptr(bias), static_cast<float>(eps));
  }
  return py::make_tuple(y.array, mean, rstd);
}

py::tuple layer_norm_backward(py::handle dy_obj, py::handle x_obj, py::handle weight_obj,
                              py::handle mean_obj, py::handle rstd_obj, py::handle dx_obj,
                              py::handle dweight_obj, py::handle dbias_obj, bool accumulate) {
  RowsArg x = rows_arg(x_obj, "x");
  RowsArg dy = rows_arg(dy_obj, "dy");
  require_same_shape(dy, x);
  const int64_t C = x.view.cols;
  if (C < 1) throw py::value_error("x must have at least one feature in its last axis, got shape " +
                                   shape_string(shape_of(x.array)));
  const Shape param_shape{static_cast<py::ssize_t>(C)};
  py::array weight = affine_param(weight_obj, "weight", C, 1.0f);
  py::array mean = float32_array(mean_obj, "mean", leading_shape(x.array));
  py::array rstd = float32_array(rstd_obj, "rstd", leading_shape(x.array));
  if (accumulate && (dweight_obj.is_none() || dbias_obj.is_none()))
    throw py::value_error("accumulate=True needs the dweight and dbias arrays to add into");
  RowsArg dx = output_rows(dx_obj, "dx", shape_of(x.array));
  py::array dweight = output_array(dweight_obj, "dweight", param_shape);
  py::array dbias = output_array(dbias_obj, "dbias", param_shape);
  require_no_overlap({{"dx", dx.array}, {"dweight", dweight}, {"dbias", dbias}},
                     {{"dy", dy.array}, {"x", x.array}, {"weight", weight}, {"mean", mean}, {"rstd", rstd}});
  {
    py::gil_scoped_release release;
    cpu::layer_norm_backward(dx.view, mutable_ptr(dweight), mutable_ptr(dbias), as_const(dy.view),
                             as_const(x.view), ptr(weight), ptr(mean), ptr(rstd), accumulate);
  }
  return py::make_tuple(dx.array, dweight, dbias);
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("layer_norm_forward", &layer_norm_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("y"), py::arg("mean"), py::arg("rstd"),
        "(y, mean, rstd) = LayerNorm(x) over the last axis. See ssl_core.ops.layer_norm_forward.");
  m.def("layer_norm_backward", &layer_norm_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
        py::arg("mean"), py::arg("rstd"), py::arg("dx"), py::arg("dweight"), py::arg("dbias"),
        py::arg("accumulate"), "(dx, dweight, dbias). See ssl_core.ops.layer_norm_backward.");
}

}  // namespace ssl_core::bindings
