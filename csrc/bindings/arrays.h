// Turning Python arguments into kernel views, with the checks that make a bad
// argument a clear Python exception (naming it and what was expected) instead
// of a crash: type, dtype, rank, shape, memory layout, writability, overlap.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "ssl_core/views.h"

namespace ssl_core::bindings {

namespace py = pybind11;
using Shape = std::vector<py::ssize_t>;

// A float32 array argument and the rows view of it the kernels use.
struct RowsArg {
  py::array array;
  RowsView view;
  const char* name;
};

std::string shape_string(const Shape& shape);
Shape shape_of(const py::array& a);

// `obj` must be a NumPy array of float32 (TypeError naming `name` otherwise).
py::array float32_ndarray(py::handle obj, const char* name);
void require_shape(const py::array& a, const char* name, const Shape& shape);
void require_writable(const py::array& a, const char* name);
// No two indices of `a` may address the same element (outputs).
void require_distinct_elements(const py::array& a, const char* name);

// `obj` must be a NumPy float32 array of at least one dimension whose last
// axis is contiguous and whose leading axes collapse into one row stride.
RowsArg rows_arg(py::handle obj, const char* name);

// `obj` must be a C-contiguous float32 array of exactly `shape`.
py::array float32_array(py::handle obj, const char* name, const Shape& shape);

// An output: allocated with `shape` when `obj` is None; otherwise a writable
// float32 array of exactly `shape` whose rows do not overlap each other.
RowsArg output_rows(py::handle obj, const char* name, const Shape& shape);
py::array output_array(py::handle obj, const char* name, const Shape& shape);

void require_same_shape(const RowsArg& a, const RowsArg& b);

// Every output must be disjoint from every other output and from every input,
// except that an output may be exactly the same array view as an input (in
// place) when `allow_in_place`. Kernels that allow this read each element
// before writing it.
void require_no_overlap(const std::vector<std::pair<const char*, py::array>>& outputs,
                        const std::vector<std::pair<const char*, py::array>>& inputs,
                        bool allow_in_place = true);

}  // namespace ssl_core::bindings
