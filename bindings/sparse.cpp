// Neuron cache, neuron window, sparse FFN and channel sparse kernels (tierlm/neuron_cache.hpp,
// sparse_ffn.hpp, channel_sparse.hpp).
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/kernels/channel_sparse.hpp"
#include "tierlm/kernels/sparse_ffn.hpp"
#include "tierlm/sparse/neuron_cache.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

using IdArray = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F32Vec = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using RowArray = nb::ndarray<nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// A kernel's `level` argument: the process level when none, else scalar, avx2 or avx512.
SimdLevel level_arg(const std::optional<std::string>& level) {
  if (!level) return simd_level();
  if (*level == "scalar") return SimdLevel::kSimdScalar;
  if (*level == "avx2") return SimdLevel::kSimdAvx2;
  if (*level == "avx512") return SimdLevel::kSimdAvx512;
  TIERLM_FAIL(kErrorInvalidArgument, 0, "unknown SIMD level '", *level, "' (scalar, avx2, avx512)");
}

// Rows arrive as float32 (f32), as 16-bit words (uint16/float16/bfloat16 views), or as the
// bytes of a block type's rows (uint8 [n, row bytes]). Returns the row width in elements.
size_t check_rows(const RowArray& rows, DType dtype, size_t row_elems, const char* what) {
  const size_t bits = rows.dtype().bits;
  const bool blocks = dtype_is_quantized(dtype);
  const size_t want = blocks ? 8 : 8 * dtype_size(dtype);
  TIERLM_CHECK(bits == want, kErrorInvalidArgument, what, ": rows have ", bits,
               "-bit elements but the dtype is ", dtype_name(dtype));
  size_t elems = rows.shape(1);
  if (blocks) {
    const DTypeBlock block = dtype_block(dtype);
    TIERLM_CHECK(elems % block.bytes == 0, kErrorInvalidArgument, what, ": rows of ", elems,
                 " bytes are not whole ", dtype_name(dtype), " blocks (", block.bytes, " bytes)");
    elems = elems / block.bytes * block.elems;
  }
  TIERLM_CHECK(row_elems == 0 || elems == row_elems, kErrorInvalidArgument, what, ": rows have ",
               elems, " elements each, expected ", row_elems);
  return elems;
}

nb::object rows_view(nb::handle owner, void* data, size_t n, size_t elems, DType dtype) {
  if (dtype == DType::kDTypeF32) {
    return nb::cast(
        nb::ndarray<nb::numpy, float, nb::ndim<2>>(static_cast<float*>(data), {n, elems}, owner));
  }
  if (dtype_is_quantized(dtype)) {
    return nb::cast(nb::ndarray<nb::numpy, uint8_t, nb::ndim<2>>(
        static_cast<uint8_t*>(data), {n, dtype_row_bytes(dtype, elems)}, owner));
  }
  return nb::cast(nb::ndarray<nb::numpy, uint16_t, nb::ndim<2>>(static_cast<uint16_t*>(data),
                                                                {n, elems}, owner));
}

nb::ndarray<nb::numpy, int32_t, nb::ndim<1>> id_array(const int32_t* ids, size_t n) {
  int32_t* copy = new int32_t[n > 0 ? n : 1];
  std::memcpy(copy, ids, n * sizeof(int32_t));
  nb::capsule owner(copy, [](void* p) noexcept { delete[] static_cast<int32_t*>(p); });
  return nb::ndarray<nb::numpy, int32_t, nb::ndim<1>>(copy, {n}, owner);
}

}  // namespace

void bind_sparse(nb::module_& m) {
  nb::class_<NeuronCache>(m, "NeuronCache")
      .def(
          "__init__",
          [](NeuronCache* self, HostTier& tier, size_t n_neurons, size_t capacity, size_t row_elems,
             const std::string& dtype) {
            new (self) NeuronCache(tier, n_neurons, capacity, row_elems, dtype_parse(dtype));
          },
          nb::arg("tier"), nb::arg("n_neurons"), nb::arg("capacity"), nb::arg("row_elems"),
          nb::arg("dtype") = "f32", nb::keep_alive<1, 2>())
      .def_prop_ro("size", &NeuronCache::size)
      .def_prop_ro("capacity", &NeuronCache::capacity)
      .def_prop_ro("n_neurons", &NeuronCache::n_neurons)
      .def_prop_ro("row_elems", &NeuronCache::row_elems)
      .def_prop_ro("row_bytes", &NeuronCache::row_bytes)
      .def_prop_ro("reserved_bytes", &NeuronCache::reserved_bytes)
      .def_prop_ro("dtype", [](const NeuronCache& c) { return dtype_name(c.dtype()); })
      .def("__len__", &NeuronCache::size)
      .def("__contains__", &NeuronCache::contains)
      .def("slot_of", &NeuronCache::slot_of)
      .def("neuron_at", &NeuronCache::neuron_at)
      .def(
          "neurons", [](const NeuronCache& c) { return id_array(c.neurons(), c.size()); },
          "slot -> neuron for the filled slots (a copy)")
      .def(
          "rows",
          [](nb::handle self) {
            NeuronCache& c = nb::cast<NeuronCache&>(self);
            return rows_view(self, const_cast<void*>(c.rows()), c.size(), c.row_elems(), c.dtype());
          },
          "The filled rows [size, row_elems] as a numpy view (no copy; valid until the next "
          "insert or erase)")
      .def(
          "insert",
          [](NeuronCache& c, IdArray neurons, RowArray rows) {
            check_rows(rows, c.dtype(), c.row_elems(), "neuron cache insert");
            TIERLM_CHECK(rows.shape(0) == neurons.shape(0), kErrorInvalidArgument,
                         "neuron cache insert: ", neurons.shape(0), " neurons but ", rows.shape(0),
                         " rows");
            c.insert(neurons.data(), neurons.shape(0), rows.data());
          },
          nb::arg("neurons"), nb::arg("rows"))
      .def(
          "erase",
          [](NeuronCache& c, IdArray neurons) { c.erase(neurons.data(), neurons.shape(0)); },
          nb::arg("neurons"))
      .def("clear", &NeuronCache::clear);

  nb::class_<NeuronWindow>(m, "NeuronWindow")
      .def(nb::init<size_t, size_t>(), nb::arg("n_neurons"), nb::arg("k") = 4)
      .def_prop_ro("size", &NeuronWindow::size)
      .def_prop_ro("k", &NeuronWindow::k)
      .def_prop_ro("n_neurons", &NeuronWindow::n_neurons)
      .def_prop_ro("tokens", &NeuronWindow::tokens)
      .def("__len__", &NeuronWindow::size)
      .def("__contains__", &NeuronWindow::contains)
      .def("reset", &NeuronWindow::reset)
      .def(
          "step",
          [](NeuronWindow& w, IdArray active) {
            std::vector<int32_t> load(w.n_neurons()), evict(w.n_neurons());
            NeuronWindow::Step s =
                w.step(active.data(), active.shape(0), load.data(), evict.data());
            return std::make_pair(id_array(load.data(), s.n_load),
                                  id_array(evict.data(), s.n_evict));
          },
          nb::arg("active"), "(to_load, to_evict) for the next token's active neurons");

  m.def(
      "sparse_ffn",
      [](F32Vec x, RowArray rows, const std::string& dtype, size_t dim, bool gated,
         std::optional<IdArray> neurons, std::optional<F32Vec> up_bias,
         std::optional<F32Vec> gate_bias, std::optional<F32Vec> down_bias,
         std::optional<IdArray> slots, std::optional<std::string> level) {
        SparseFfnRows r;
        r.dtype = dtype_parse(dtype);
        r.rows = rows.data();
        r.n_rows = rows.shape(0);
        r.dim = dim;
        r.row_stride = check_rows(rows, r.dtype, 0, "sparse_ffn");
        r.gated = gated;
        TIERLM_CHECK(x.shape(0) == dim, kErrorInvalidArgument, "sparse_ffn: x has ", x.shape(0),
                     " elements, dim is ", dim);
        if (neurons) {
          TIERLM_CHECK(neurons->shape(0) >= r.n_rows, kErrorInvalidArgument,
                       "sparse_ffn: neurons has ", neurons->shape(0), " ids for ", r.n_rows,
                       " rows");
          r.neurons = neurons->data();
        }
        // Biases are indexed by neuron id: check every id is inside them.
        size_t max_id = r.n_rows ? r.n_rows - 1 : 0;
        if (neurons) {
          for (size_t i = 0; i < r.n_rows; ++i) {
            TIERLM_CHECK(r.neurons[i] >= 0, kErrorInvalidArgument, "sparse_ffn: negative id");
            max_id = std::max(max_id, static_cast<size_t>(r.neurons[i]));
          }
        }
        for (auto* b : {&up_bias, &gate_bias}) {
          if (*b) {
            TIERLM_CHECK(r.n_rows == 0 || (*b)->shape(0) > max_id, kErrorInvalidArgument,
                         "sparse_ffn: a bias of ", (*b)->shape(0), " entries is indexed by id ",
                         max_id);
          }
        }
        if (up_bias) r.up_bias = up_bias->data();
        if (gate_bias) r.gate_bias = gate_bias->data();
        if (down_bias) {
          TIERLM_CHECK(down_bias->shape(0) == dim, kErrorInvalidArgument,
                       "sparse_ffn: down_bias has ", down_bias->shape(0), " entries, dim is ", dim);
        }
        float* y = new float[dim];
        nb::capsule owner(y, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        const int32_t* s = slots ? slots->data() : nullptr;
        const size_t n = slots ? slots->shape(0) : r.n_rows;
        const SimdLevel lv = level_arg(level);
        std::vector<char> x_blocks(kernel_sparse_ffn_workspace(r.dtype, dim));
        r.x_blocks = x_blocks.data();
        {
          nb::gil_scoped_release release;
          kernel_sparse_ffn_prepare(x.data(), r.dtype, dim, x_blocks.data());
          kernel_sparse_ffn_at(lv, x.data(), r, s, n, down_bias ? down_bias->data() : nullptr, y);
        }
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(y, {dim}, owner);
      },
      nb::arg("x"), nb::arg("rows"), nb::arg("dtype"), nb::arg("dim"), nb::arg("gated") = false,
      nb::arg("neurons") = nb::none(), nb::arg("up_bias") = nb::none(),
      nb::arg("gate_bias") = nb::none(), nb::arg("down_bias") = nb::none(),
      nb::arg("slots") = nb::none(), nb::arg("level") = nb::none(),
      "y = down_bias + sum over rows (or slots) of act(x . up + b) * down; rows are bundled "
      "[up | gate | down] rows of `dtype` (16-bit dtypes as uint16 words, block types as "
      "uint8 [n, row bytes] with down stored as a row of down^T)");

  m.def(
      "channel_sparse_linear",
      [](F32Vec x, RowArray rows, const std::string& dtype, size_t out, IdArray channels,
         float threshold, std::optional<F32Vec> bias, std::optional<std::string> level) {
        const SimdLevel lv = level_arg(level);
        ChannelRows r;
        r.dtype = dtype_parse(dtype);
        r.rows = rows.data();
        r.n_rows = rows.shape(0);
        r.out = out;
        r.row_stride = check_rows(rows, r.dtype, 0, "channel_sparse_linear");
        r.n_channels = x.shape(0);
        TIERLM_CHECK(channels.shape(0) == r.n_rows, kErrorInvalidArgument,
                     "channel_sparse_linear: channels has ", channels.shape(0), " ids for ",
                     r.n_rows, " rows");
        r.channels = channels.data();
        TIERLM_CHECK(!bias || bias->shape(0) == out, kErrorInvalidArgument,
                     "channel_sparse_linear: bias has ", bias ? bias->shape(0) : 0,
                     " entries, out is ", out);
        float* y = new float[out > 0 ? out : 1];
        nb::capsule owner(y, [](void* p) noexcept { delete[] static_cast<float*>(p); });
        {
          nb::gil_scoped_release release;
          kernel_channel_sparse_linear_at(lv, x.data(), r, threshold, bias ? bias->data() : nullptr,
                                          y);
        }
        return nb::ndarray<nb::numpy, float, nb::ndim<1>>(y, {out}, owner);
      },
      nb::arg("x"), nb::arg("rows"), nb::arg("dtype"), nb::arg("out"), nb::arg("channels"),
      nb::arg("threshold"), nb::arg("bias") = nb::none(), nb::arg("level") = nb::none(),
      "y = bias + sum over rows r with |x[channels[r]]| > threshold of x[channels[r]] * "
      "rows[r]; rows are columns of a matrix stored by input channel (16-bit dtypes as uint16 "
      "words, q8_0 / q4_0 as uint8 [n, row bytes] blocked along the column)");
}

}  // namespace tierlm::bindings
