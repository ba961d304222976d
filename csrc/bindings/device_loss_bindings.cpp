// Python entry point of the fused linear + cross-entropy CUDA kernel
// (csrc/cuda/linear_cross_entropy.cu) on device arrays: every argument is
// checked on the host, then the launcher runs with the GIL released and
// returns the loss (it synchronizes the stream).
//
// Unlike the CPU binding, rows and targets live in device memory and are not
// range-checked here (that would cost a copy to the host): the kernel skips
// a labelled row whose row number is outside [0, N) or whose target is
// outside [0, V) (no loss, not counted correct, no gradient), and never reads
// out of bounds. Rows must be strictly ascending, which is not checked either.
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "device_arrays.h"
#include "ssl_core/cuda_kernels.h"

namespace ssl_core::bindings {
namespace {

// The kernel's scratch and the CPU op keep vocabulary indices below 2^24.
constexpr int64_t kMaxVocabulary = int64_t{1} << 24;

// The length of a 1-d int64 device vector `name` (TypeError for a wrong
// dtype, ValueError for another rank).
int64_t index_length(py::handle obj, const char* name) {
  const DeviceArray a = device_array(obj, name);
  if (a.typestr != "<i8") device_int64s(obj, name, 0);  // raises its TypeError naming the dtype
  if (a.shape.size() != 1)
    throw py::value_error(std::string(name) + " must be a 1-d int64 array, got shape " + shape_string(a.shape));
  return a.shape[0];
}

// The full shape of a device array, for comparing outputs with inputs.
std::vector<int64_t> shape_of(py::handle obj, const char* name) { return device_array(obj, name).shape; }

py::tuple linear_cross_entropy(py::handle d_hidden_obj, py::handle d_weight_obj, py::handle d_bias_obj,
                               py::handle hidden_obj, py::handle weight_obj, py::handle bias_obj,
                               py::handle rows_obj, py::handle targets_obj, double label_smoothing,
                               double grad_scale, bool accumulate, uintptr_t stream) {
  // hidden (..., C), weight (V, C), bias (V,) or None
  const RowsView hidden = device_rows(hidden_obj, "hidden");
  const std::vector<int64_t> hidden_shape = shape_of(hidden_obj, "hidden");
  const int64_t C = hidden.cols;
  if (C < 1) throw py::value_error("hidden must have at least one feature in its last axis");
  const std::vector<int64_t> weight_shape = shape_of(weight_obj, "weight");
  if (weight_shape.size() != 2 || weight_shape[1] != C)
    throw py::value_error("weight must have shape (vocab, " + std::to_string(C) + ") to match hidden " +
                          shape_string(hidden_shape) + ", got " + shape_string(weight_shape));
  const RowsView weight = device_rows(weight_obj, "weight", C);
  const int64_t V = weight.rows;
  if (V < 1 || V > kMaxVocabulary)
    throw py::value_error("weight must have between 1 and 2^24 rows (the vocabulary), got " + std::to_string(V));
  float* bias = device_floats(bias_obj, "bias", V, /*optional=*/true);

  // rows (count,), targets (count,): int64 device vectors
  const int64_t count = index_length(rows_obj, "rows");
  const int64_t target_count = index_length(targets_obj, "targets");
  if (target_count != count)
    throw py::value_error("rows and targets must have the same length, got " + std::to_string(count) + " and " +
                          std::to_string(target_count));
  if (count > hidden.rows)
    throw py::value_error("rows lists " + std::to_string(count) + " labelled rows but hidden " +
                          shape_string(hidden_shape) + " has only " + std::to_string(hidden.rows) + " rows");
  CrossEntropyLabels labels{device_int64s(rows_obj, "rows", count), device_int64s(targets_obj, "targets", count),
                            count};

  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    throw py::value_error("label_smoothing must be in [0, 1], got " + std::to_string(label_smoothing));
  if (!std::isfinite(grad_scale)) throw py::value_error("grad_scale must be finite, got " + std::to_string(grad_scale));

  // Outputs: d_hidden like hidden, d_weight like weight, d_bias (V,) or None.
  const bool grads = !d_hidden_obj.is_none();
  RowsView d_hidden{}, d_weight{};
  float* d_bias = nullptr;
  if (!grads) {
    if (!d_weight_obj.is_none() || !d_bias_obj.is_none())
      throw py::value_error("d_weight and d_bias must be None when d_hidden is None (loss only)");
    if (accumulate) throw py::value_error("accumulate=True needs the gradient outputs d_hidden and d_weight");
  } else {
    if (d_weight_obj.is_none())
      throw py::value_error("d_weight must be given with d_hidden (a float32 array of shape " +
                            shape_string(weight_shape) + ")");
    if (bias_obj.is_none() && !d_bias_obj.is_none()) throw py::value_error("d_bias was given but bias is None");
    d_hidden = device_rows(d_hidden_obj, "d_hidden", C, /*writable=*/true);
    const std::vector<int64_t> d_hidden_shape = shape_of(d_hidden_obj, "d_hidden");
    if (d_hidden_shape != hidden_shape)
      throw py::value_error("d_hidden must have the shape of hidden, " + shape_string(hidden_shape) + ", got " +
                            shape_string(d_hidden_shape));
    const std::vector<int64_t> d_weight_shape = shape_of(d_weight_obj, "d_weight");
    if (d_weight_shape != weight_shape)
      throw py::value_error("d_weight must have the shape of weight, " + shape_string(weight_shape) + ", got " +
                            shape_string(d_weight_shape));
    d_weight = device_rows(d_weight_obj, "d_weight", C, /*writable=*/true);
    // d_bias None with a bias: the bias gradient is not computed (a frozen bias).
    d_bias = device_floats(d_bias_obj, "d_bias", V, /*optional=*/true, /*writable=*/true);
    require_disjoint({{"d_hidden", footprint(d_hidden)}, {"d_weight", footprint(d_weight)},
                      {"d_bias", footprint(d_bias, V)}},
                     {{"hidden", footprint(hidden)}, {"weight", footprint(weight)}, {"bias", footprint(bias, V)}});
  }

  const CrossEntropyOptions options{static_cast<float>(label_smoothing), static_cast<float>(grad_scale), accumulate};
  CrossEntropyResult result;
  {
    py::gil_scoped_release release;
    result = cuda::linear_cross_entropy(d_hidden, d_weight, d_bias, as_const(hidden), as_const(weight), bias, labels,
                                        options, stream_handle(stream));
  }
  return py::make_tuple(result.loss_sum, result.correct);
}

}  // namespace

void bind_device_loss(py::module_& m) {
  m.def("linear_cross_entropy", &linear_cross_entropy, py::arg("d_hidden"), py::arg("d_weight"), py::arg("d_bias"),
        py::arg("hidden"), py::arg("weight"), py::arg("bias"), py::arg("rows"), py::arg("targets"),
        py::arg("label_smoothing") = 0.0, py::arg("grad_scale") = 1.0, py::arg("accumulate") = false,
        py::arg("stream") = 0,
        "Fused linear layer + cross-entropy of the labelled rows of hidden (..., C) against weight (V, C) and bias "
        "(V,) or None (see ssl_core.ops.masked_lm_loss): returns (loss_sum, n_correct), the summed loss of the "
        "rows `rows` (int64, strictly ascending) with classes `targets` (int64), and how many of them have their "
        "first largest logit at the target. With d_hidden (like hidden) and d_weight (V, C) given, also writes "
        "the gradients of grad_scale * loss_sum: d_hidden for every row (zero where unlabelled), d_weight and "
        "d_bias (if given) overwritten, or added to with accumulate=True. A labelled row whose row number or "
        "target is out of range is skipped (device labels are not checked on the host). Synchronizes `stream`.");
}

}  // namespace ssl_core::bindings
