#include "arrays.h"

#include "disjoint.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

namespace ssl_core::bindings {
namespace {

// The byte range [begin, end) an array's elements span.
std::pair<uintptr_t, uintptr_t> extent(const py::array& a) {
  auto begin = reinterpret_cast<uintptr_t>(a.data()), end = begin;
  if (a.size() == 0) return {begin, begin};
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    const py::ssize_t reach = (a.shape(d) - 1) * a.strides(d);
    (reach < 0 ? begin : end) += reach;
  }
  return {begin, end + a.itemsize()};
}

bool same_view(const py::array& a, const py::array& b) {
  return a.data() == b.data() && shape_of(a) == shape_of(b) &&
         std::equal(a.strides(), a.strides() + a.ndim(), b.strides());
}

// Whether some element of a is also an element of b. Extents that do not
// meet settle it at once; interleaved views (q, k and v of one fused QKV
// array) need NumPy's exact test.
bool overlap(const py::array& a, const py::array& b) {
  auto [a0, a1] = extent(a);
  auto [b0, b1] = extent(b);
  if (!(a0 < b1 && b0 < a1)) return false;
  return py::module_::import("numpy").attr("shares_memory")(a, b).cast<bool>();
}

}  // namespace

py::array float32_ndarray(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of float32, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + " must have dtype float32, got " +
                         std::string(py::str(a.dtype())));
  return a;
}

void require_shape(const py::array& a, const char* name, const Shape& shape) {
  if (shape_of(a) != shape)
    throw py::value_error(std::string(name) + " must have shape " + shape_string(shape) + ", got " +
                          shape_string(shape_of(a)));
}

void require_writable(const py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be a writable array");
}

void require_distinct_elements(const py::array& a, const char* name) {
  if (a.size() == 0) return;  // nothing to overlap (NumPy 2 gives empty arrays zero strides)
  // Axes by increasing stride: each must step past everything the inner
  // ones reach, or two indices would name one element.
  std::vector<std::pair<py::ssize_t, py::ssize_t>> axes;  // (|stride|, size)
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) > 1) axes.emplace_back(a.strides(d) < 0 ? -a.strides(d) : a.strides(d), a.shape(d));
  std::sort(axes.begin(), axes.end());
  py::ssize_t reach = a.itemsize();
  for (const auto& [stride, size] : axes) {
    if (stride < reach)
      throw py::value_error(std::string(name) + " has strides " +
                            shape_string(Shape(a.strides(), a.strides() + a.ndim())) +
                            " under which elements overlap; an output needs distinct elements");
    reach = stride * (size - 1) + reach;
  }
}

std::string shape_string(const Shape& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

RowsArg rows_arg(py::handle obj, const char* name) {
  py::array a = float32_ndarray(obj, name);
  const py::ssize_t ndim = a.ndim();
  if (ndim < 1)
    throw py::value_error(std::string(name) + " must have at least 1 dimension, got a 0-d array");
  const int64_t cols = a.shape(ndim - 1);
  int64_t rows = 1;
  for (py::ssize_t d = 0; d + 1 < ndim; ++d) rows *= a.shape(d);

  if (a.size() == 0)  // nothing to address: any strides will do
    return {a, RowsView{static_cast<float*>(const_cast<void*>(a.data())), rows, cols, cols}, name};

  const std::string layout_error =
      std::string(name) +
      " must have a contiguous last axis and leading axes that flatten into rows "
      "with one stride (e.g. a C-contiguous array or x[:, :k]); got strides " +
      shape_string(Shape(a.strides(), a.strides() + ndim)) +
      " for shape " + shape_string(shape_of(a)) + "; pass numpy.ascontiguousarray(" + name + ")";
  const py::ssize_t item = static_cast<py::ssize_t>(sizeof(float));
  if (cols > 1 && a.strides(ndim - 1) != item) throw py::value_error(layout_error);

  // The stride between consecutive rows: that of the innermost leading axis
  // longer than 1; every outer axis must step by a whole number of its rows.
  py::ssize_t row_stride_bytes = cols * item, inner_rows = 1;
  bool found = false;
  for (py::ssize_t d = ndim - 2; d >= 0; --d) {
    if (a.shape(d) == 1) continue;
    if (!found) {
      row_stride_bytes = a.strides(d);
      found = true;
    } else if (a.strides(d) != row_stride_bytes * inner_rows) {
      throw py::value_error(layout_error);
    }
    inner_rows *= a.shape(d);
  }
  if (row_stride_bytes % item != 0) throw py::value_error(layout_error);
  RowsView view{static_cast<float*>(const_cast<void*>(a.data())), rows, cols, row_stride_bytes / item};
  return {a, view, name};
}

py::array float32_array(py::handle obj, const char* name, const Shape& shape) {
  py::array a = float32_ndarray(obj, name);
  require_shape(a, name, shape);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous; pass numpy.ascontiguousarray(" +
                          name + ")");
  return a;
}

RowsArg output_rows(py::handle obj, const char* name, const Shape& shape) {
  if (obj.is_none()) return rows_arg(py::array_t<float>(shape), name);
  RowsArg out = rows_arg(obj, name);
  require_shape(out.array, name, shape);
  require_writable(out.array, name);
  const RowsView& v = out.view;
  if (v.rows > 1 && (v.row_stride < 0 ? -v.row_stride : v.row_stride) < v.cols)
    throw py::value_error(std::string(name) + " has rows that overlap in memory; an output needs distinct rows");
  return out;
}

py::array output_array(py::handle obj, const char* name, const Shape& shape) {
  if (obj.is_none()) return py::array_t<float>(shape);
  py::array a = float32_array(obj, name, shape);
  require_writable(a, name);
  return a;
}

void require_same_shape(const RowsArg& a, const RowsArg& b) {
  if (shape_of(a.array) != shape_of(b.array))
    throw py::value_error(std::string(a.name) + " must have the shape of " + b.name + ", " +
                          shape_string(shape_of(b.array)) + ", got " + shape_string(shape_of(a.array)));
}

void require_no_overlap(const std::vector<std::pair<const char*, py::array>>& outputs,
                        const std::vector<std::pair<const char*, py::array>>& inputs, bool allow_in_place) {
  require_disjoint_arrays(outputs, inputs, allow_in_place, overlap, same_view);
}

}  // namespace ssl_core::bindings
