// Python entry point of the AdamW kernel: check the four flat arrays, then
// update params, m and v in place with the GIL released. Scalars are checked
// by python/ssl_core/train/optim.py.
#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

py::array flat_array(py::handle obj, const char* name, py::ssize_t n, bool writable) {
  py::array a = float32_ndarray(obj, name);
  if (a.ndim() != 1 || !(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be a contiguous 1-d float32 array, got shape " +
                          shape_string(shape_of(a)));
  if (n >= 0) require_shape(a, name, {n});
  if (writable) require_writable(a, name);
  return a;
}

void adamw_update(py::handle params_obj, py::handle grads_obj, py::handle m_obj, py::handle v_obj, double lr,
                  double beta1, double beta2, double eps, double weight_decay, double grad_scale, int64_t step) {
  py::array params = flat_array(params_obj, "params", -1, true);
  const py::ssize_t n = params.shape(0);
  py::array grads = flat_array(grads_obj, "grads", n, false);
  py::array m = flat_array(m_obj, "m", n, true), v = flat_array(v_obj, "v", n, true);
  require_no_overlap({{"params", params}, {"m", m}, {"v", v}}, {{"grads", grads}}, /*allow_in_place=*/false);
  if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
  const AdamWOptions options{static_cast<float>(lr),  static_cast<float>(beta1),
                             static_cast<float>(beta2), static_cast<float>(eps),
                             static_cast<float>(weight_decay), static_cast<float>(grad_scale), step};
  py::gil_scoped_release release;
  cpu::adamw_update(static_cast<float*>(params.mutable_data()), static_cast<float*>(m.mutable_data()),
                    static_cast<float*>(v.mutable_data()), static_cast<const float*>(grads.data()), n, options);
}

}  // namespace

void bind_optimizer(py::module_& m) {
  m.def("adamw_update", &adamw_update, py::arg("params"), py::arg("grads"), py::arg("m"), py::arg("v"),
        py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("grad_scale"), py::arg("step"), "One AdamW step in place. See ssl_core.train.AdamW.");
}

}  // namespace ssl_core::bindings
