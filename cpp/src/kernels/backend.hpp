// The seam between the executor and the kernels: every op reaches compute through a Backend.
// Plan (the *_workspace calls) sizes an op's scratch once, at load, for its largest step; run
// takes raw pointers, sizes and that scratch, and never allocates. The CPU backend
// (kernels/cpu/cpu_backend.cpp) wraps the kernel_* launchers; a CUDA backend (cuda/) or a
// quantized CPU one plugs in beside it and lists itself in backend_list(), which the op test
// driver (tests/cpp/test_backend_ops.cpp) runs against the scalar reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tierlm/core/dtype.hpp"
#include "tierlm/core/simd.hpp"
#include "tierlm/kernels/kernels.hpp"

namespace tierlm::detail {

// The ops a backend runs, for the test driver's tables (tolerance, timing) and messages.
enum class BackendOp {
  kBackendOpLinear,
  kBackendOpRmsNorm,
  kBackendOpLayerNorm,
  kBackendOpRope,
  kBackendOpSiluMul,
  kBackendOpRelu,
  kBackendOpGelu,
  kBackendOpAdd,
  kBackendOpEmbedding,
  kBackendOpAttention,
  kBackendOpCopyRows,
  kBackendOpKvStore,
  kBackendOpAttentionMass,
};

const char* backend_op_name(BackendOp op);

// Y[n, rows] = X[n, cols] · W[rows, cols]^T: n tokens, W row-major in w_dtype.
struct LinearShape {
  size_t n = 1;
  size_t rows = 1;
  size_t cols = 1;
  DType w_dtype = DType::kDTypeF32;
};

// Pointers are the backend's memory (host memory for the CPU backend). Semantics, shapes and
// argument checks are those of the kernel_* launchers of tierlm/kernels/kernels.hpp.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // Plan: bytes of workspace for the largest step an op runs (0: none). A smaller step (fewer
  // tokens n or queries n_q, any kv_len) runs in the same workspace.
  virtual size_t linear_workspace(const LinearShape& largest) const = 0;
  virtual size_t attention_workspace(const AttentionShape& largest) const = 0;

  // Run. bias (optional) is in shape.w_dtype; workspace holds linear_workspace(shape) bytes.
  virtual void linear(const float* x, const void* w, const void* bias, float* y,
                      const LinearShape& shape, void* workspace) = 0;
  // Rows [row0, row0 + part_rows) of the same Y (shape.rows wide) from w_part, which holds just
  // those rows of W (a matrix streamed in row parts); bias is the whole matrix's.
  virtual void linear_part(const float* x, const void* w_part, const void* bias, float* y,
                           const LinearShape& shape, size_t row0, size_t part_rows,
                           void* workspace) = 0;
  virtual void rmsnorm(const float* x, const void* weight, DType w_dtype, float* y, size_t n,
                       size_t dim, float eps) = 0;
  virtual void layernorm(const float* x, const void* weight, const void* bias, DType w_dtype,
                         float* y, size_t n, size_t dim, float eps) = 0;
  virtual void rope(float* x, const int32_t* positions, const float* inv_freq, size_t n_tokens,
                    size_t n_heads, size_t head_dim) = 0;
  virtual void silu_mul(const float* gate, const float* up, float* out, size_t n) = 0;
  virtual void relu(float* x, size_t n) = 0;
  virtual void gelu(float* x, size_t n) = 0;
  virtual void add(float* y, const float* x, size_t n) = 0;  // y += x
  virtual void embedding(const void* table, DType dtype, const int32_t* ids, size_t n, size_t dim,
                         float* out) = 0;
  // lse (optional): each query head's softmax normalizer, for attention_mass.
  virtual void attention(const float* q, const KvLayout& kv, float* out,
                         const AttentionShape& shape, float scale, void* workspace, float* lse) = 0;
  // mass[j] += the softmax weights key j gets from this step's queries (kernel_attention_mass).
  virtual void attention_mass(const float* q, const KvLayout& kv, const AttentionShape& shape,
                              float scale, const float* lse, float* mass) = 0;
  // Appends n tokens' keys and values to the cache in shape.kv_dtype (kernel_kv_store).
  virtual void kv_store(const float* k, const float* v, size_t src_stride, size_t n, size_t pos,
                        const KvLayout& kv, const AttentionShape& shape) = 0;
  // dst[r * dst_stride + i] = src[r * src_stride + i] for r < rows, i < elems (floats):
  // activation copies. Rows of dst must not overlap rows of src.
  virtual void copy_rows(float* dst, size_t dst_stride, const float* src, size_t src_stride,
                         size_t rows, size_t elems) = 0;
};

// The backend the executor runs on: the CPU one at the process's SIMD level (simd_level(), so
// TIERLM_SIMD and simd_set_level apply to a loaded model too).
std::unique_ptr<Backend> backend_cpu();
// The CPU backend pinned at `level` whatever simd_level() says; throws kErrorUnsupported when
// this CPU lacks it.
std::unique_ptr<Backend> backend_cpu_at(SimdLevel level);

// A backend this build knows and whether it can run here.
struct BackendEntry {
  std::string name;         // "cpu-scalar", "cpu-avx2", "cpu-avx512", "cuda"
  std::string unavailable;  // why it cannot run in this build or on this machine; empty if it can
  std::function<std::unique_ptr<Backend>()> create;  // empty when unavailable
};

// Every backend of this build, the reference (cpu-scalar, kernels_scalar.cpp) first. A new
// backend adds its entries here, and the op test driver then runs it.
std::vector<BackendEntry> backend_list();

}  // namespace tierlm::detail
