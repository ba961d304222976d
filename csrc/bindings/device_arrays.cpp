// Device arguments from the array interfaces (see device_arrays.h).
#include "device_arrays.h"

#include "disjoint.h"

#include <algorithm>
#include <cmath>

namespace ssl_core::bindings {

namespace {

std::string type_name(py::handle obj) {
  py::handle type = py::type::handle_of(obj);
  return py::str(type.attr("__module__")).cast<std::string>() + "." +
         py::str(type.attr("__qualname__")).cast<std::string>();
}

std::string arg(const char* name) { return std::string(name); }

int itemsize_of(const std::string& typestr, const char* name) {
  if (typestr.size() < 3) throw py::type_error(arg(name) + " has an unreadable typestr '" + typestr + "'");
  return std::stoi(typestr.substr(2));
}

const char* dtype_name(const std::string& typestr) {
  if (typestr == "<f4") return "float32";
  if (typestr == "<f8") return "float64";
  if (typestr == "<f2") return "float16";
  if (typestr == "<i8") return "int64";
  if (typestr == "<i4") return "int32";
  if (typestr == "|b1") return "bool";
  if (typestr == "|u1") return "uint8";
  return typestr.c_str();
}

void require_dtype(const DeviceArray& a, const char* name, const char* typestr, const char* dtype) {
  if (a.typestr != typestr)
    throw py::type_error(arg(name) + " must have dtype " + dtype + ", got " + dtype_name(a.typestr));
}

void require_writable(const DeviceArray& a, const char* name) {
  if (a.readonly) throw py::value_error(arg(name) + " is an output and must be writable, got a read-only array");
}

void* vector_data(const DeviceArray& a, const char* name, int64_t n) {
  if (a.shape.size() != 1 || a.shape[0] != n)
    throw py::value_error(arg(name) + " must have shape (" + std::to_string(n) + ",), got " + shape_string(a.shape));
  if (n > 1 && a.strides[0] != 1) throw py::value_error(arg(name) + " must be contiguous");
  return a.data;
}


// [lowest, highest) byte of a footprint, whatever the stride signs.
std::pair<int64_t, int64_t> span(const Footprint& f) {
  int64_t low = 0, high = f.row_bytes;
  for (const auto& [stride, size] : f.axes) (stride < 0 ? low : high) += (size - 1) * stride;
  return {static_cast<int64_t>(f.base) + low, static_cast<int64_t>(f.base) + high};
}

// Rows of the same layout `f` shifted by delta bytes: does some row of the
// shifted copy meet some row of f? Exact for nested layouts (each stride at
// least the extent of the axes below it, rows included), where an axis
// leaves at most two candidate index differences.
bool shifted_rows_meet(const Footprint& f, int64_t delta, int level) {
  if (level < 0) return -f.row_bytes < delta && delta < f.row_bytes;
  const auto [stride, size] = f.axes[level];
  const int64_t first = -delta >= 0 ? -delta / stride : -((delta + stride - 1) / stride);  // floor(-delta / stride)
  for (int64_t d = first; d <= first + 1; ++d)
    if (d > -size && d < size && shifted_rows_meet(f, delta + d * stride, level - 1)) return true;
  return false;
}

bool nested(const Footprint& f) {
  int64_t extent = f.row_bytes;
  for (const auto& [stride, size] : f.axes) {
    if (stride < extent) return false;
    extent = stride * size;
  }
  return true;
}

bool same_view(const Footprint& a, const Footprint& b) {
  return !a.empty && a.base == b.base && a.row_bytes == b.row_bytes && a.axes == b.axes;
}

bool overlap(const Footprint& a, const Footprint& b) {
  if (a.empty || b.empty) return false;
  const auto [a0, a1] = span(a);
  const auto [b0, b1] = span(b);
  if (!(a0 < b1 && b0 < a1)) return false;
  // Interleaved views of one array (q, k and v of a fused QKV projection):
  // same layout at different offsets.
  if (a.row_bytes == b.row_bytes && a.axes == b.axes && nested(a))
    return shifted_rows_meet(a, static_cast<int64_t>(b.base) - static_cast<int64_t>(a.base),
                             static_cast<int>(a.axes.size()) - 1);
  return true;  // otherwise the spans decide (conservatively)
}

}  // namespace

int64_t DeviceArray::size() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

DeviceArray device_array(py::handle obj, const char* name) {
  py::object interface;
  if (py::hasattr(obj, "__cuda_array_interface__")) interface = obj.attr("__cuda_array_interface__");
#ifdef SSL_CORE_SIMT
  // The emulator's device memory is host memory.
  else if (py::hasattr(obj, "__array_interface__")) interface = obj.attr("__array_interface__");
#endif
  if (!interface || !py::isinstance<py::dict>(interface))
    throw py::type_error(arg(name) +
                         " must be a CUDA array (an object with __cuda_array_interface__, such as a CuPy array "
                         "or a CUDA torch.Tensor), got " + type_name(obj));
  py::dict d = interface;
  if (d.contains("mask") && !d["mask"].is_none())
    throw py::value_error(arg(name) + " is a masked array; masked arrays are not supported");
  DeviceArray a;
  py::tuple data = d["data"];
  a.data = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  a.readonly = data[1].cast<bool>();
  a.typestr = d["typestr"].cast<std::string>();
  for (py::handle s : py::tuple(d["shape"])) a.shape.push_back(s.cast<int64_t>());
  const int itemsize = itemsize_of(a.typestr, name);
  if (!d.contains("strides") || d["strides"].is_none()) {
    a.strides.assign(a.shape.size(), 1);
    for (int i = static_cast<int>(a.shape.size()) - 2; i >= 0; --i) a.strides[i] = a.strides[i + 1] * a.shape[i + 1];
  } else {
    for (py::handle s : py::tuple(d["strides"])) {
      const int64_t bytes = s.cast<int64_t>();
      if (bytes % itemsize != 0)
        throw py::value_error(arg(name) + " has strides that are not whole elements");
      a.strides.push_back(bytes / itemsize);
    }
  }
  return a;
}

RowsView device_rows(py::handle obj, const char* name, int64_t cols, bool writable) {
  const DeviceArray a = device_array(obj, name);
  require_dtype(a, name, "<f4", "float32");
  if (writable) require_writable(a, name);
  const int nd = static_cast<int>(a.shape.size());
  if (nd < 1) throw py::value_error(arg(name) + " must have at least 1 dimension, got a scalar");
  const int64_t c = a.shape[nd - 1];
  if (cols >= 0 && c != cols)
    throw py::value_error(arg(name) + " must have " + std::to_string(cols) + " columns (last axis), got shape " +
                          shape_string(a.shape));
  const int64_t rows = a.size() / std::max<int64_t>(c, 1);
  RowsView v{static_cast<float*>(a.data), c == 0 ? 0 : rows, c, c};
  if (a.size() == 0) return v;
  if (c > 1 && a.strides[nd - 1] != 1)
    throw py::value_error(arg(name) + " must have a contiguous last axis, got shape " + shape_string(a.shape) +
                          " with element strides " + shape_string(a.strides));
  // The leading axes must step through rows with one stride.
  int64_t row_stride = -1, expected = -1;
  for (int d = nd - 2; d >= 0; --d) {
    if (a.shape[d] == 1) continue;
    if (row_stride < 0) {
      row_stride = expected = a.strides[d];
    } else if (a.strides[d] != expected) {
      throw py::value_error(arg(name) + " must have leading axes that flatten into rows of one stride, got shape " +
                            shape_string(a.shape) + " with element strides " + shape_string(a.strides));
    }
    expected *= a.shape[d];
  }
  v.row_stride = row_stride < 0 ? c : row_stride;
  if (rows > 1 && v.row_stride < c)
    throw py::value_error(arg(name) + " has overlapping rows (row stride " + std::to_string(v.row_stride) + " < " +
                          std::to_string(c) + " columns)");
  return v;
}

// The (B, T, H, D) view of `a`, whose dtype the caller has checked.
template <class T>
HeadsViewT<T> heads_view(const DeviceArray& a, const char* name, bool writable) {
  if (writable) require_writable(a, name);
  if (a.shape.size() != 4)
    throw py::value_error(arg(name) + " must have 4 dimensions (batch, seq, heads, head_dim), got shape " +
                          shape_string(a.shape));
  if (a.size() > 0 && a.shape[3] > 1 && a.strides[3] != 1)
    throw py::value_error(arg(name) + " must have a contiguous last axis (head_dim), got element strides " +
                          shape_string(a.strides));
  return {static_cast<T*>(a.data), a.shape[0], a.shape[1], a.shape[2], a.shape[3],
          a.strides[0], a.strides[1], a.strides[2]};
}

HeadsView device_heads(py::handle obj, const char* name, bool writable) {
  const DeviceArray a = device_array(obj, name);
  require_dtype(a, name, "<f4", "float32");
  return heads_view<float>(a, name, writable);
}

HeadsViewT<uint16_t> device_heads16(py::handle obj, const char* name, const char* typestr, bool writable) {
  const DeviceArray a = device_array(obj, name);
  const bool bits = std::string(typestr) == "<u2";
  if (a.typestr != typestr)
    throw py::type_error(arg(name) + " must have dtype " + (bits ? "uint16 (bfloat16 bits)" : "float16") +
                         ", got " + (a.typestr == "<u2" ? "uint16" : dtype_name(a.typestr)));
  return heads_view<uint16_t>(a, name, writable);
}

float* device_floats(py::handle obj, const char* name, int64_t n, bool optional, bool writable) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(arg(name) + " must be a float32 CUDA array of shape (" + std::to_string(n) + ",), got None");
  }
  const DeviceArray a = device_array(obj, name);
  require_dtype(a, name, "<f4", "float32");
  if (writable) require_writable(a, name);
  return static_cast<float*>(vector_data(a, name, n));
}

int64_t* device_int64s(py::handle obj, const char* name, int64_t n, bool optional) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw py::type_error(arg(name) + " must be an int64 CUDA array of shape (" + std::to_string(n) + ",), got None");
  }
  const DeviceArray a = device_array(obj, name);
  require_dtype(a, name, "<i8", "int64");
  return static_cast<int64_t*>(vector_data(a, name, n));
}

AttentionOptions device_attention_options(int64_t B, int64_t H, int64_t Tq, int64_t Tk, double scale, bool causal,
                                          py::handle key_lengths, py::handle prefix_lengths, py::handle mask,
                                          double dropout_p, uint64_t seed) {
  if (!std::isfinite(scale)) throw py::value_error("scale must be finite, got " + std::to_string(scale));
  if (!(dropout_p >= 0.0 && dropout_p < 1.0))
    throw py::value_error("dropout_p must be in [0, 1), got " + std::to_string(dropout_p));
  AttentionOptions options;
  options.scale = static_cast<float>(scale);
  options.dropout_p = dropout_p;
  options.seed = seed;
  options.mask.causal = causal;
  options.mask.key_lengths = device_int64s(key_lengths, "key_lengths", B, true);
  options.mask.prefix_lengths = device_int64s(prefix_lengths, "prefix_lengths", B, true);
  if (!mask.is_none()) {
    const DeviceArray m = device_array(mask, "mask");
    if (m.typestr != "|b1" && m.typestr != "|u1")
      throw py::type_error("mask must have dtype bool (or uint8), got " + std::string(dtype_name(m.typestr)));
    const int64_t expected[4] = {B, H, Tq, Tk};
    if (m.shape.size() != 4)
      throw py::value_error("mask must have 4 dimensions broadcastable to (B, H, Tq, Tk) = " +
                            shape_string({B, H, Tq, Tk}) + ", got shape " + shape_string(m.shape));
    for (int d = 0; d < 4; ++d) {
      if (m.shape[d] != expected[d] && m.shape[d] != 1)
        throw py::value_error("mask must be broadcastable to (B, H, Tq, Tk) = " + shape_string({B, H, Tq, Tk}) +
                              ", got shape " + shape_string(m.shape));
      options.mask.mask_strides[d] = m.shape[d] == 1 ? 0 : m.strides[d];  // itemsize 1: bytes
    }
    options.mask.mask = static_cast<const uint8_t*>(m.data);
  }
  return options;
}

}  // namespace ssl_core::bindings

namespace ssl_core::bindings {

float* device_contiguous(py::handle obj, const char* name, const std::vector<int64_t>& shape, bool writable) {
  const DeviceArray a = device_array(obj, name);
  require_dtype(a, name, "<f4", "float32");
  if (a.shape != shape)
    throw py::value_error(arg(name) + " must have shape " + shape_string(shape) + ", got " + shape_string(a.shape));
  int64_t expected = 1;
  for (int d = static_cast<int>(a.shape.size()) - 1; d >= 0; --d) {
    if (a.shape[d] != 1 && a.strides[d] != expected)
      throw py::value_error(arg(name) + " must be C-contiguous, got element strides " + shape_string(a.strides));
    expected *= a.shape[d];
  }
  if (writable) require_writable(a, name);
  return static_cast<float*>(a.data);
}

Footprint footprint(const void* data, int64_t row_bytes, std::vector<std::pair<int64_t, int64_t>> axes) {
  Footprint f;
  if (!data || row_bytes <= 0) return f;
  for (const auto& [stride, size] : axes) {
    if (size == 0) return f;
    if (size > 1) f.axes.push_back({stride, size});
  }
  std::sort(f.axes.begin(), f.axes.end());
  f.base = reinterpret_cast<uintptr_t>(data);
  f.row_bytes = row_bytes;
  f.empty = false;
  return f;
}

void require_disjoint(const NamedFootprints& outputs, const NamedFootprints& inputs, bool allow_in_place) {
  require_disjoint_arrays(outputs, inputs, allow_in_place, overlap, same_view);
}

}  // namespace ssl_core::bindings
