// Python entry point of the fused linear + cross-entropy kernel: check every
// argument, then call the kernel with the GIL released. Labels are turned into
// (rows, targets) and range-checked with a message naming the first bad
// position by python/ssl_core/ops/loss.py; they are checked again here, so a
// direct call cannot make the kernel read out of bounds.
#include <cmath>
#include <cstdint>
#include <string>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"

namespace ssl_core::bindings {
namespace {

// The kernel keeps argmax indices in float32 lanes, exact up to 2^24.
constexpr int64_t kMaxVocabulary = int64_t{1} << 24;

py::array_t<int64_t> index_arg(py::handle obj, const char* name) {
  if (!py::isinstance<py::array_t<int64_t>>(obj) ||
      !(py::reinterpret_borrow<py::array>(obj).flags() & py::array::c_style) ||
      py::reinterpret_borrow<py::array>(obj).ndim() != 1)
    throw py::type_error(std::string(name) + " must be a C-contiguous 1-d numpy.ndarray of int64");
  return py::reinterpret_borrow<py::array_t<int64_t>>(obj);
}

CrossEntropyLabels labels_arg(const py::array_t<int64_t>& rows, const py::array_t<int64_t>& targets, int64_t N,
                              int64_t V) {
  if (rows.size() != targets.size())
    throw py::value_error("rows and targets must have the same length, got " + std::to_string(rows.size()) +
                          " and " + std::to_string(targets.size()));
  CrossEntropyLabels labels{rows.data(), targets.data(), rows.size()};
  for (int64_t i = 0; i < labels.count; ++i) {
    const int64_t row = labels.rows[i], target = labels.targets[i];
    if (row < 0 || row >= N || (i > 0 && row <= labels.rows[i - 1]))
      throw py::value_error("rows must be strictly increasing row numbers in [0, " + std::to_string(N) +
                            "), got rows[" + std::to_string(i) + "] = " + std::to_string(row));
    if (target < 0 || target >= V)
      throw py::value_error("targets[" + std::to_string(i) + "] = " + std::to_string(target) + " is outside [0, " +
                            std::to_string(V) + ")");
  }
  return labels;
}

py::tuple linear_cross_entropy(py::handle hidden_obj, py::handle weight_obj, py::handle bias_obj,
                               py::handle rows_obj, py::handle targets_obj, double label_smoothing,
                               double grad_scale, bool grads, py::handle d_hidden_obj, py::handle d_weight_obj,
                               py::handle d_bias_obj, bool accumulate) {
  RowsArg hidden = rows_arg(hidden_obj, "hidden");
  RowsArg weight = rows_arg(weight_obj, "weight");
  const int64_t C = hidden.view.cols, V = weight.view.rows;
  if (weight.array.ndim() != 2 || weight.view.cols != C)
    throw py::value_error("weight must have shape (vocab, " + std::to_string(C) + ") to match hidden " +
                          shape_string(shape_of(hidden.array)) + ", got " + shape_string(shape_of(weight.array)));
  if (C < 1) throw py::value_error("hidden must have at least one feature in its last axis");
  if (V < 1 || V > kMaxVocabulary)
    throw py::value_error("weight must have between 1 and 2^24 rows (the vocabulary), got " + std::to_string(V));
  const Shape vocab{static_cast<py::ssize_t>(V)};
  const bool has_bias = !bias_obj.is_none();  // (a default py::array is an empty array, not None)
  py::array bias;
  if (has_bias) bias = float32_array(bias_obj, "bias", vocab);
  const py::array_t<int64_t> rows = index_arg(rows_obj, "rows"), targets = index_arg(targets_obj, "targets");
  const CrossEntropyLabels labels = labels_arg(rows, targets, hidden.view.rows, V);
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    throw py::value_error("label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  if (!std::isfinite(grad_scale)) throw py::value_error("grad_scale must be finite");
  if (!grads) {
    if (!d_hidden_obj.is_none() || !d_weight_obj.is_none() || !d_bias_obj.is_none() || accumulate)
      throw py::value_error("gradient outputs and accumulate need return_grad=True");
  } else if (accumulate && (d_weight_obj.is_none() || (!bias_obj.is_none() && d_bias_obj.is_none()))) {
    throw py::value_error("accumulate=True adds to existing gradients: pass d_weight (and d_bias when bias is "
                          "given) in grads");
  }
  if (bias_obj.is_none() && !d_bias_obj.is_none())
    throw py::value_error("d_bias was given but bias is None");

  RowsArg d_hidden{}, d_weight{};
  py::array d_bias;
  CrossEntropyOptions options{static_cast<float>(label_smoothing), static_cast<float>(grad_scale), accumulate};
  if (grads) {
    d_hidden = output_rows(d_hidden_obj, "d_hidden", shape_of(hidden.array));
    d_weight = output_rows(d_weight_obj, "d_weight", shape_of(weight.array));
    if (has_bias) d_bias = output_array(d_bias_obj, "d_bias", vocab);
    std::vector<std::pair<const char*, py::array>> outputs{{"d_hidden", d_hidden.array},
                                                           {"d_weight", d_weight.array}};
    if (has_bias) outputs.emplace_back("d_bias", d_bias);
    std::vector<std::pair<const char*, py::array>> inputs{{"hidden", hidden.array}, {"weight", weight.array}};
    if (has_bias) inputs.emplace_back("bias", bias);
    require_no_overlap(outputs, inputs, /*allow_in_place=*/false);
  }
  CrossEntropyResult result;
  {
    py::gil_scoped_release release;
    result = cpu::linear_cross_entropy(d_hidden.view, d_weight.view,
                                       grads && has_bias ? static_cast<float*>(d_bias.mutable_data()) : nullptr,
                                       as_const(hidden.view), as_const(weight.view),
                                       has_bias ? static_cast<const float*>(bias.data()) : nullptr, labels, options);
  }
  if (!grads) return py::make_tuple(result.loss_sum, result.correct);
  return py::make_tuple(result.loss_sum, result.correct, d_hidden.array, d_weight.array,
                        has_bias ? py::object(d_bias) : py::none());
}

}  // namespace

void bind_loss(py::module_& m) {
  m.def("linear_cross_entropy", &linear_cross_entropy, py::arg("hidden"), py::arg("weight"), py::arg("bias"),
        py::arg("rows"), py::arg("targets"), py::arg("label_smoothing"), py::arg("grad_scale"), py::arg("grads"),
        py::arg("d_hidden"), py::arg("d_weight"), py::arg("d_bias"), py::arg("accumulate"),
        "(loss_sum, n_correct[, d_hidden, d_weight, d_bias]) of the labelled rows. See "
        "ssl_core.ops.masked_lm_loss.");
}

}  // namespace ssl_core::bindings
