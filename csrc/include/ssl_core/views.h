// Raw-memory views that the kernels take instead of framework objects.
//
// Every CPU kernel here works on "rows": a matrix of `rows` x `cols` float32
// values whose elements inside a row are contiguous and whose rows start
// `row_stride` elements apart. A C-contiguous array of any rank is a rows view
// (its leading dimensions flattened), and so is a slice such as x[:, :768] of
// a wider array. The binding layer builds these views from NumPy arrays
// without copying.
#pragma once

#include <cstdint>

namespace ssl_core {

template <class T>
struct RowsViewT {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;  // in elements, >= cols when rows > 1

  T* row(int64_t i) const { return data + i * row_stride; }
  bool contiguous() const { return rows <= 1 || row_stride == cols; }
  int64_t size() const { return rows * cols; }
};

using RowsView = RowsViewT<float>;
using ConstRowsView = RowsViewT<const float>;

inline ConstRowsView as_const(const RowsView& v) {
  return {v.data, v.rows, v.cols, v.row_stride};
}

}  // namespace ssl_core
