// Python entry points of the attention kernels: check every argument, then
// call the kernel with the GIL released. Scalars (scale, dropout_p, seed) are
// checked by python/ssl_core/ops/attention.py; arrays here.
#include <pybind11/stl.h>

#include <cstdint>
#include <string>

#include "arrays.h"
#include "bindings.h"
#include "ssl_core/kernels.h"
#include "ssl_core/philox.h"

namespace ssl_core::bindings {
namespace {

constexpr py::ssize_t kItem = sizeof(float);

struct HeadsArg {
  py::array array;
  HeadsView view;
};

std::string strides_string(const py::array& a) {
  return shape_string(Shape(a.strides(), a.strides() + a.ndim()));
}

// A float32 (B, T, H, D) array whose last axis is contiguous; the other axes
// may have any strides (slices of a fused QKV array, for instance).
HeadsArg heads_arg(py::handle obj, const char* name) {
  py::array a = float32_ndarray(obj, name);
  if (a.ndim() != 4)
    throw py::value_error(std::string(name) + " must have 4 dimensions (batch, seq, heads, head_dim), got shape " +
                          shape_string(shape_of(a)));
  if (a.size() == 0)  // nothing to address: NumPy may give any strides
    return {a, HeadsView{static_cast<float*>(const_cast<void*>(a.data())), a.shape(0), a.shape(1), a.shape(2),
                         a.shape(3), 0, 0, 0}};
  for (int d = 0; d < 3; ++d)
    if (a.strides(d) % kItem != 0)
      throw py::value_error(std::string(name) + " has strides " + strides_string(a) +
                            " that are not whole float32 elements");
  if (a.shape(3) > 1 && a.strides(3) != kItem)
    throw py::value_error(std::string(name) + " must have a contiguous last axis (head_dim), got strides " +
                          strides_string(a) + "; pass numpy.ascontiguousarray(" + name + ")");
  HeadsView v{static_cast<float*>(const_cast<void*>(a.data())), a.shape(0), a.shape(1), a.shape(2), a.shape(3),
              a.strides(0) / kItem, a.strides(1) / kItem, a.strides(2) / kItem};
  return {a, v};
}

HeadsArg output_heads(py::handle obj, const char* name, const Shape& shape) {
  if (obj.is_none()) return heads_arg(py::array_t<float>(shape), name);
  HeadsArg out = heads_arg(obj, name);
  require_shape(out.array, name, shape);
  require_writable(out.array, name);
  require_distinct_elements(out.array, name);
  return out;
}

// key_lengths / prefix_lengths: None, or integers (B,) in [0, Tk], copied to int64.
py::array_t<int64_t> lengths_arg(py::handle obj, const char* name, int64_t B, int64_t Tk) {
  if (obj.is_none()) return py::array_t<int64_t>();
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of integers, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::type_error(std::string(name) + " must have an integer dtype, got " +
                         std::string(py::str(a.dtype())));
  require_shape(a, name, {static_cast<py::ssize_t>(B)});
  // Every value in range (checked on the original, so that no cast can wrap
  // a huge unsigned length into a valid one) before the int64 copy.
  py::module_ np = py::module_::import("numpy");
  const py::object outside = np.attr("logical_or")(np.attr("less")(a, 0), np.attr("greater")(a, Tk));
  const py::object bad = np.attr("flatnonzero")(outside);
  if (py::len(bad) > 0) {
    const py::object b = bad.attr("__getitem__")(0);
    throw py::value_error(std::string(name) + "[" + std::string(py::str(b)) + "] = " +
                          std::string(py::str(a.attr("__getitem__")(b))) + " is outside [0, " +
                          std::to_string(Tk) + "], the number of keys");
  }
  return py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
}

// mask: None, or a bool array broadcastable to (B, H, Tq, Tk); its byte
// strides for the four axes (0 where broadcast).
py::array mask_arg(py::handle obj, const Shape& full, int64_t strides[4]) {
  if (obj.is_none()) return py::array();
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("mask must be a numpy.ndarray of bool, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.dtype().kind() != 'b')
    throw py::type_error("mask must have dtype bool (True = may attend), got " + std::string(py::str(a.dtype())));
  const std::string error = "mask of shape " + shape_string(shape_of(a)) +
                            " cannot be broadcast to (batch, heads, queries, keys) = " + shape_string(full);
  if (a.ndim() > 4) throw py::value_error(error);
  for (int axis = 0; axis < 4; ++axis) {
    const py::ssize_t d = axis - (4 - a.ndim());  // the mask's own axis, right-aligned
    strides[axis] = 0;
    if (d < 0 || a.shape(d) == 1) continue;
    if (a.shape(d) != full[axis]) throw py::value_error(error);
    strides[axis] = a.strides(d);
  }
  return a;
}

struct Masks {
  AttentionOptions options;
  py::array_t<int64_t> key_lengths, prefix_lengths;  // keep the copies alive
  py::array mask;
};

Masks mask_options(const HeadsView& q, const HeadsView& k, bool causal, py::handle key_lengths,
                   py::handle prefix_lengths, py::handle mask, double scale, double dropout_p, uint64_t seed) {
  Masks m;
  AttentionMask& am = m.options.mask;
  am.causal = causal;
  m.key_lengths = lengths_arg(key_lengths, "key_lengths", q.batch, k.seq);
  m.prefix_lengths = lengths_arg(prefix_lengths, "prefix_lengths", q.batch, k.seq);
  if (!key_lengths.is_none()) am.key_lengths = m.key_lengths.data();
  if (!prefix_lengths.is_none()) am.prefix_lengths = m.prefix_lengths.data();
  m.mask = mask_arg(mask, {q.batch, q.heads, q.seq, k.seq}, am.mask_strides);
  if (!mask.is_none()) am.mask = static_cast<const uint8_t*>(m.mask.data());
  m.options.scale = static_cast<float>(scale);
  m.options.dropout_p = dropout_p;
  m.options.seed = seed;
  if (dropout_p > 0 && (q.batch > UINT32_MAX || q.heads > UINT32_MAX || q.seq > UINT32_MAX || k.seq > UINT32_MAX))
    throw py::value_error("dropout counts batch, heads and positions in 32 bits; a dimension exceeds 2^32");
  return m;
}

// q (B, Tq, H, D); k and v (B, Tk, H, D).
void require_matching(const HeadsArg& q, const HeadsArg& k, const HeadsArg& v) {
  const Shape qs = shape_of(q.array), ks = shape_of(k.array), vs = shape_of(v.array);
  if (ks != vs)
    throw py::value_error("k and v must have the same shape (batch, keys, heads, head_dim), got k " +
                          shape_string(ks) + " and v " + shape_string(vs));
  if (qs[0] != ks[0] || qs[2] != ks[2] || qs[3] != ks[3])
    throw py::value_error("q " + shape_string(qs) + " and k " + shape_string(ks) +
                          " must agree in batch, heads and head_dim (axes 0, 2 and 3)");
  if (qs[3] < 1) throw py::value_error("head_dim must be at least 1, got q of shape " + shape_string(qs));
}

Shape lse_shape(const HeadsView& q) { return {q.batch, q.heads, q.seq}; }

py::tuple attention_forward(py::handle q_obj, py::handle k_obj, py::handle v_obj, bool causal,
                            py::handle key_lengths, py::handle prefix_lengths, py::handle mask, double scale,
                            double dropout_p, uint64_t seed, py::handle out_obj, py::handle lse_obj) {
  HeadsArg q = heads_arg(q_obj, "q"), k = heads_arg(k_obj, "k"), v = heads_arg(v_obj, "v");
  require_matching(q, k, v);
  Masks m = mask_options(q.view, k.view, causal, key_lengths, prefix_lengths, mask, scale, dropout_p, seed);
  HeadsArg out = output_heads(out_obj, "out", shape_of(q.array));
  py::array lse = output_array(lse_obj, "lse", lse_shape(q.view));
  require_no_overlap({{"out", out.array}, {"lse", lse}}, {{"q", q.array}, {"k", k.array}, {"v", v.array}},
                     /*allow_in_place=*/false);
  {
    py::gil_scoped_release release;
    cpu::attention_forward(out.view, static_cast<float*>(lse.mutable_data()), as_const(q.view),
                           as_const(k.view), as_const(v.view), m.options);
  }
  return py::make_tuple(out.array, lse);
}

py::tuple attention_backward(py::handle dout_obj, py::handle q_obj, py::handle k_obj, py::handle v_obj,
                             py::handle out_obj, py::handle lse_obj, bool causal, py::handle key_lengths,
                             py::handle prefix_lengths, py::handle mask, double scale, double dropout_p,
                             uint64_t seed, py::handle dq_obj, py::handle dk_obj, py::handle dv_obj) {
  HeadsArg q = heads_arg(q_obj, "q"), k = heads_arg(k_obj, "k"), v = heads_arg(v_obj, "v");
  require_matching(q, k, v);
  HeadsArg dout = heads_arg(dout_obj, "dout"), out = heads_arg(out_obj, "out");
  require_shape(dout.array, "dout", shape_of(q.array));
  require_shape(out.array, "out", shape_of(q.array));
  py::array lse = float32_array(lse_obj, "lse", lse_shape(q.view));
  Masks m = mask_options(q.view, k.view, causal, key_lengths, prefix_lengths, mask, scale, dropout_p, seed);
  HeadsArg dq = output_heads(dq_obj, "dq", shape_of(q.array));
  HeadsArg dk = output_heads(dk_obj, "dk", shape_of(k.array));
  HeadsArg dv = output_heads(dv_obj, "dv", shape_of(v.array));
  require_no_overlap({{"dq", dq.array}, {"dk", dk.array}, {"dv", dv.array}},
                     {{"dout", dout.array}, {"q", q.array}, {"k", k.array}, {"v", v.array},
                      {"out", out.array}, {"lse", lse}},
                     /*allow_in_place=*/false);
  {
    py::gil_scoped_release release;
    cpu::attention_backward(dq.view, dk.view, dv.view, as_const(dout.view), as_const(q.view), as_const(k.view),
                            as_const(v.view), as_const(out.view), static_cast<const float*>(lse.data()),
                            m.options);
  }
  return py::make_tuple(dq.array, dk.array, dv.array);
}

}  // namespace

void bind_attention(py::module_& m) {
  m.def("attention_forward", &attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"),
        py::arg("key_lengths"), py::arg("prefix_lengths"), py::arg("mask"), py::arg("scale"),
        py::arg("dropout_p"), py::arg("seed"), py::arg("out"), py::arg("lse"),
        "(out, lse) of softmax(q k^T scale + mask) v. See ssl_core.ops.attention_forward.");
  m.def("attention_backward", &attention_backward, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("key_lengths"), py::arg("prefix_lengths"),
        py::arg("mask"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"), py::arg("dq"), py::arg("dk"),
        py::arg("dv"), "(dq, dk, dv). See ssl_core.ops.attention_backward.");
  m.def(
      "philox4x32",
      [](std::array<uint32_t, 4> counter, uint64_t key) {
        const PhiloxWords w = philox4x32(counter.data(), key);
        return std::array<uint32_t, 4>{w.w[0], w.w[1], w.w[2], w.w[3]};
      },
      py::arg("counter"), py::arg("key"),
      "The four words of Philox4x32-10 for a 128-bit counter and 64-bit key (the dropout generator).");
}

}  // namespace ssl_core::bindings
