// tierlm._core.kernels: each CPU kernel on numpy arrays, for tests and benchmarks.
// Conversion only: shapes and dtypes are checked here, the math is in libtierlm. bf16 data
// passes as uint16 arrays with dtype="bf16", block types as uint8 arrays of their blocks with
// dtype="q4_0" etc.; kernels run without the GIL.
#include "tierlm/kernels/kernels.hpp"

#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "tierlm/core/error.hpp"

namespace nb = nanobind;

namespace tierlm::bindings {

namespace {

using F32Array = nb::ndarray<float, nb::c_contig, nb::device::cpu>;
using AnyArray = nb::ndarray<nb::c_contig, nb::device::cpu>;
using I32Array = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using OutArray = nb::ndarray<nb::numpy, float>;

// The weight dtype of an array: float32/float16 from numpy, uint16 needs dtype="bf16", and a
// block type ("q4_0", ...) comes as uint8 rows of its blocks (what gguf.quants.quantize gives).
DType weight_dtype(const AnyArray& a, const std::optional<std::string>& name, const char* what) {
  if (name && dtype_is_quantized(dtype_parse(*name))) {
    TIERLM_CHECK(a.dtype() == nb::dtype<uint8_t>(), kErrorInvalidArgument, what, ": ", *name,
                 " data must be a uint8 array of its blocks");
    return dtype_parse(*name);
  }
  DType dtype;
  if (a.dtype() == nb::dtype<float>())
    dtype = DType::kDTypeF32;
  else if (a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) &&
           a.dtype().bits == 16)
    dtype = DType::kDTypeF16;
  else if (a.dtype() == nb::dtype<uint16_t>() ||
           a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat))
    dtype = DType::kDTypeBF16;
  else
    TIERLM_FAIL(kErrorInvalidArgument, 0, what,
                ": expected a float32, float16 or (bf16 as) uint16 array");
  if (name) {
    const DType wanted = dtype_parse(*name);
    TIERLM_CHECK(dtype_size(wanted) == dtype_size(dtype) &&
                     (wanted == dtype || a.dtype() == nb::dtype<uint16_t>()),
                 kErrorInvalidArgument, what, ": array elements do not hold ", *name);
    dtype = wanted;
  } else {
    TIERLM_CHECK(a.dtype() != nb::dtype<uint16_t>(), kErrorInvalidArgument, what,
                 ": a uint16 array needs dtype='bf16' or 'f16'");
  }
  return dtype;
}

OutArray new_array(std::vector<size_t> shape) {
  size_t count = 1;
  for (size_t s : shape) count *= s;
  float* data = new float[count > 0 ? count : 1];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  return OutArray(data, shape.size(), shape.data(), owner);
}

// Elements per row of a 2-D weight array: its columns, or for a block type its bytes in blocks.
size_t row_elements(const AnyArray& a, DType dtype, const char* what) {
  if (!dtype_is_quantized(dtype)) return a.shape(1);
  const DTypeBlock b = dtype_block(dtype);
  TIERLM_CHECK(a.shape(1) % b.bytes == 0, kErrorInvalidArgument, what, ": rows of ", a.shape(1),
               " bytes are not whole ", dtype_name(dtype), " blocks (", b.bytes, " bytes each)");
  return a.shape(1) / b.bytes * b.elems;
}

size_t last_dim(const nb::ndarray<>& a) { return a.ndim() == 0 ? 1 : a.shape(a.ndim() - 1); }
size_t leading(const nb::ndarray<>& a) { return a.ndim() == 0 ? 1 : a.size() / last_dim(a); }

template <typename A>
std::vector<size_t> shape_of(const A& a) {
  std::vector<size_t> s(a.ndim());
  for (size_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

}  // namespace

void bind_kernels(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("kernels", "CPU compute kernels on numpy arrays");

  m.def("dtype_size", [](const std::string& name) { return dtype_size(dtype_parse(name)); });

  m.def(
      "linear",
      [](F32Array x, AnyArray w, std::optional<AnyArray> bias,
         std::optional<std::string> dtype_name) {
        TIERLM_CHECK(w.ndim() == 2, kErrorInvalidArgument, "linear: w must be [rows, cols]");
        const DType dtype = weight_dtype(w, dtype_name, "linear: w");
        const size_t rows = w.shape(0), cols = row_elements(w, dtype, "linear: w");
        TIERLM_CHECK(x.ndim() >= 1 && x.shape(x.ndim() - 1) == cols, kErrorInvalidArgument,
                     "linear: x's last dimension must be cols = ", cols);
        const void* bias_ptr = nullptr;
        if (bias) {
          const bool f32 = bias->dtype() == nb::dtype<float>();
          TIERLM_CHECK(bias->size() == rows &&
                           (dtype_is_quantized(dtype)
                                ? f32
                                : weight_dtype(*bias, dtype_name, "linear: bias") == dtype),
                       kErrorInvalidArgument, "linear: bias must have rows = ", rows,
                       " elements of w's dtype (float32 for block types)");
          bias_ptr = bias->data();
        }
        const size_t n = x.size() / cols;
        std::vector<size_t> shape = shape_of(x);
        shape.back() = rows;
        OutArray y = new_array(shape);
        std::vector<unsigned char> workspace(kernel_linear_workspace(dtype, n, cols));
        {
          nb::gil_scoped_release release;
          kernel_linear(x.data(), w.data(), bias_ptr, dtype, y.data(), n, rows, cols,
                        workspace.data());
        }
        return y;
      },
      nb::arg("x"), nb::arg("w"), nb::arg("bias") = nb::none(), nb::arg("dtype") = nb::none(),
      "y = x @ w.T (+ bias), f32 accumulation; w in f32/f16/bf16, or uint8 rows of a block type "
      "named by dtype (q8_0 .. q6_k, bias float32).");

  m.def(
      "rmsnorm",
      [](F32Array x, AnyArray weight, float eps, std::optional<std::string> dtype_name) {
        const DType dtype = weight_dtype(weight, dtype_name, "rmsnorm: weight");
        const size_t dim = weight.size();
        TIERLM_CHECK(x.ndim() >= 1 && x.shape(x.ndim() - 1) == dim, kErrorInvalidArgument,
                     "rmsnorm: x's last dimension must equal weight's size ", dim);
        OutArray y = new_array(shape_of(x));
        {
          nb::gil_scoped_release release;
          kernel_rmsnorm(x.data(), weight.data(), dtype, y.data(), x.size() / dim, dim, eps);
        }
        return y;
      },
      nb::arg("x"), nb::arg("weight"), nb::arg("eps"), nb::arg("dtype") = nb::none());

  m.def(
      "layernorm",
      [](F32Array x, std::optional<AnyArray> weight, std::optional<AnyArray> bias, float eps,
         std::optional<std::string> dtype_name) {
        const size_t dim = x.ndim() >= 1 ? x.shape(x.ndim() - 1) : 1;
        DType dtype = DType::kDTypeF32;
        if (weight) dtype = weight_dtype(*weight, dtype_name, "layernorm: weight");
        if (bias) {
          const DType b = weight_dtype(*bias, dtype_name, "layernorm: bias");
          TIERLM_CHECK(!weight || b == dtype, kErrorInvalidArgument,
                       "layernorm: weight and bias must share a dtype");
          dtype = b;
        }
        TIERLM_CHECK((!weight || weight->size() == dim) && (!bias || bias->size() == dim),
                     kErrorInvalidArgument, "layernorm: weight and bias need ", dim, " elements");
        OutArray y = new_array(shape_of(x));
        {
          nb::gil_scoped_release release;
          kernel_layernorm(x.data(), weight ? weight->data() : nullptr,
                           bias ? bias->data() : nullptr, dtype, y.data(), x.size() / dim, dim,
                           eps);
        }
        return y;
      },
      nb::arg("x"), nb::arg("weight").none(), nb::arg("bias").none(), nb::arg("eps"),
      nb::arg("dtype") = nb::none());

  m.def(
      "rope",
      [](nb::ndarray<float, nb::ndim<3>, nb::c_contig, nb::device::cpu> x, I32Array positions,
         nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu> inv_freq) {
        TIERLM_CHECK(positions.shape(0) == x.shape(0), kErrorInvalidArgument,
                     "rope: one position per token needed");
        TIERLM_CHECK(inv_freq.shape(0) * 2 == x.shape(2), kErrorInvalidArgument,
                     "rope: inv_freq needs head_dim / 2 entries");
        nb::gil_scoped_release release;
        kernel_rope(x.data(), positions.data(), inv_freq.data(), x.shape(0), x.shape(1),
                    x.shape(2));
      },
      nb::arg("x"), nb::arg("positions"), nb::arg("inv_freq"),
      "In place on x[n_tokens, n_heads, head_dim] (NeoX / Llama half rotation).");

  m.def(
      "silu_mul",
      [](F32Array gate, F32Array up) {
        TIERLM_CHECK(gate.size() == up.size(), kErrorInvalidArgument,
                     "silu_mul: gate and up differ in size");
        OutArray out = new_array(shape_of(gate));
        nb::gil_scoped_release release;
        kernel_silu_mul(gate.data(), up.data(), out.data(), gate.size());
        return out;
      },
      nb::arg("gate"), nb::arg("up"));
  m.def(
      "relu",
      [](F32Array x) {
        nb::gil_scoped_release release;
        kernel_relu(x.data(), x.size());
      },
      nb::arg("x"), "In place.");
  m.def(
      "gelu",
      [](F32Array x) {
        nb::gil_scoped_release release;
        kernel_gelu(x.data(), x.size());
      },
      nb::arg("x"), "In place (exact erf GELU).");
  m.def(
      "add",
      [](F32Array y, F32Array x) {
        TIERLM_CHECK(y.size() == x.size(), kErrorInvalidArgument, "add: y and x differ in size");
        nb::gil_scoped_release release;
        kernel_add(y.data(), x.data(), y.size());
      },
      nb::arg("y"), nb::arg("x"), "y += x in place.");

  m.def(
      "embedding",
      [](AnyArray table, I32Array ids, std::optional<std::string> dtype_name) {
        TIERLM_CHECK(table.ndim() == 2, kErrorInvalidArgument,
                     "embedding: table must be [vocab, dim]");
        const DType dtype = weight_dtype(table, dtype_name, "embedding: table");
        const size_t n = ids.shape(0), dim = row_elements(table, dtype, "embedding: table");
        for (size_t i = 0; i < n; ++i)
          TIERLM_CHECK(static_cast<size_t>(ids.data()[i]) < table.shape(0), kErrorInvalidArgument,
                       "embedding: token id ", ids.data()[i], " outside the vocabulary of ",
                       table.shape(0));
        OutArray out = new_array({n, dim});
        nb::gil_scoped_release release;
        kernel_embedding(table.data(), dtype, ids.data(), n, dim, out.data());
        return out;
      },
      nb::arg("table"), nb::arg("ids"), nb::arg("dtype") = nb::none());

  m.def(
      "attention_workspace",
      [](size_t n_q, size_t n_heads, size_t n_kv_heads, size_t head_dim, size_t kv_len,
         size_t kv_capacity, size_t q_pos0) {
        AttentionShape s{n_q, n_heads, n_kv_heads, head_dim, kv_len, kv_capacity, q_pos0};
        return kernel_attention_workspace(s);
      },
      nb::arg("n_q"), nb::arg("n_heads"), nb::arg("n_kv_heads"), nb::arg("head_dim"),
      nb::arg("kv_len"), nb::arg("kv_capacity"), nb::arg("q_pos0"));

  m.def(
      "attention",
      [](nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu> q,
         nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu> k_cache,
         nb::ndarray<const float, nb::ndim<3>, nb::c_contig, nb::device::cpu> v_cache,
         size_t kv_len, size_t q_pos0, float scale,
         std::optional<nb::ndarray<uint8_t, nb::c_contig, nb::device::cpu>> workspace,
         const std::string& kv_dtype, size_t block_tokens, bool mass) -> nb::object {
        AttentionShape s;
        s.n_q = q.shape(0);
        s.n_heads = q.shape(1);
        s.head_dim = q.shape(2);
        s.n_kv_heads = k_cache.shape(0);
        s.kv_capacity = k_cache.shape(1);
        s.kv_len = kv_len;
        s.q_pos0 = q_pos0;
        s.kv_dtype = dtype_parse(kv_dtype);
        for (size_t i = 0; i < 3; ++i)
          TIERLM_CHECK(k_cache.shape(i) == v_cache.shape(i), kErrorInvalidArgument,
                       "attention: k_cache and v_cache differ in shape");
        TIERLM_CHECK(k_cache.shape(2) == s.head_dim, kErrorInvalidArgument,
                     "attention: cache head_dim ", k_cache.shape(2), " != q head_dim ", s.head_dim);
        const size_t bytes = kernel_attention_workspace(s);
        std::vector<uint8_t> own;
        void* ws = nullptr;
        if (workspace) {
          TIERLM_CHECK(workspace->size() >= bytes, kErrorInvalidArgument,
                       "attention: workspace of ", workspace->size(), " bytes, need ", bytes);
          ws = workspace->data();
        } else {
          own.resize(bytes);
          ws = own.data();
        }
        // The f32 arrays in the cache's own format: blocks of block_tokens (0: one block of
        // the whole capacity), keys then values in each, filled by the cache's store.
        const size_t bt = block_tokens == 0 ? std::max<size_t>(s.kv_capacity, 1) : block_tokens;
        const size_t n_blocks = (s.kv_capacity + bt - 1) / bt;
        const size_t half = s.n_kv_heads * bt * kernel_kv_row_bytes(s.kv_dtype, s.head_dim);
        std::vector<uint8_t> cache(std::max<size_t>(n_blocks, 1) * 2 * half);
        std::vector<void*> blocks;
        for (size_t b = 0; b < std::max<size_t>(n_blocks, 1); ++b)
          blocks.push_back(cache.data() + b * 2 * half);
        const KvLayout layout{blocks.data(), bt, 0, half};
        const size_t d = s.head_dim;
        std::vector<float> k_row(s.n_kv_heads * d), v_row(s.n_kv_heads * d);
        OutArray out = new_array(shape_of(q));
        OutArray lse = new_array({s.n_q, s.n_heads});
        OutArray weights = new_array({kv_len});
        nb::gil_scoped_release release;
        for (size_t t = 0; t < kv_len; ++t) {
          for (size_t h = 0; h < s.n_kv_heads; ++h) {
            const size_t at = (h * s.kv_capacity + t) * d;
            std::copy_n(k_cache.data() + at, d, k_row.data() + h * d);
            std::copy_n(v_cache.data() + at, d, v_row.data() + h * d);
          }
          kernel_kv_store(k_row.data(), v_row.data(), 0, 1, t, layout, s);
        }
        kernel_attention(q.data(), layout, out.data(), s, scale, ws, mass ? lse.data() : nullptr);
        if (!mass) {
          nb::gil_scoped_acquire acquire;
          return nb::cast(out);
        }
        std::fill_n(weights.data(), kv_len, 0.0f);
        kernel_attention_mass(q.data(), layout, s, scale, lse.data(), weights.data());
        nb::gil_scoped_acquire acquire;
        return nb::make_tuple(out, lse, weights);
      },
      nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("kv_len"), nb::arg("q_pos0"),
      nb::arg("scale"), nb::arg("workspace") = nb::none(), nb::arg("kv_dtype") = "f32",
      nb::arg("block_tokens") = 0, nb::arg("mass") = false,
      "Fused causal GQA attention: q[n_q, n_heads, d], caches [n_kv_heads, capacity, d] (f32),\n"
      "stored first as the KV cache stores them: kv_dtype (f32, f16, bf16, q8_0) in blocks of\n"
      "block_tokens tokens (0: one block). mass=True returns (out, lse[n_q, n_heads], "
      "mass[kv_len]):\n"
      "the softmax normalizers and each key's softmax weights summed over queries and heads.");
}

}  // namespace tierlm::bindings
