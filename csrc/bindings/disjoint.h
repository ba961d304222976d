// The check shared by the host (arrays.cpp) and device (device_arrays.cpp)
// bindings that no output shares memory with another output or with an
// input, whatever an "array" is and however overlap is decided there.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <utility>
#include <vector>

namespace ssl_core::bindings {

// ValueError naming the pair. allow_in_place: an output may be exactly the
// same view as an input (same_view), for kernels that read each element
// before writing it.
template <class Array, class Overlap, class SameView>
void require_disjoint_arrays(const std::vector<std::pair<const char*, Array>>& outputs,
                             const std::vector<std::pair<const char*, Array>>& inputs, bool allow_in_place,
                             Overlap overlap, SameView same_view) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const auto& [out_name, out] = outputs[i];
    for (size_t j = i + 1; j < outputs.size(); ++j)
      if (overlap(out, outputs[j].second))
        throw pybind11::value_error(std::string("outputs ") + out_name + " and " + outputs[j].first +
                                    " share memory");
    for (const auto& [in_name, in] : inputs) {
      if (!overlap(out, in) || (allow_in_place && same_view(out, in))) continue;
      if (allow_in_place)
        throw pybind11::value_error(std::string(out_name) + " partly overlaps input " + in_name +
                                    "; an output may be the very same array as an input (in place) "
                                    "but must not otherwise share its memory");
      throw pybind11::value_error(std::string(out_name) + " shares memory with input " + in_name +
                                  "; this op cannot work in place");
    }
  }
}

}  // namespace ssl_core::bindings
