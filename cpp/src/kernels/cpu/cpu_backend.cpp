// The CPU backend: the kernel_* launchers (scalar / AVX2 / AVX-512 bodies on the compute pool)
// behind the Backend interface, at the process's SIMD level or pinned at one level.
#include <cstring>

#include "kernels/backend.hpp"
#include "kernels/kernels_impl.hpp"
#include "tierlm/core/error.hpp"

namespace tierlm::detail {

namespace {

constexpr int kFollowSimdLevel = -1;

class CpuBackend final : public Backend {
 public:
  CpuBackend(int level, std::string name) : level_(level), name_(std::move(name)) {}

  const char* name() const override { return name_.c_str(); }

  size_t linear_workspace(const LinearShape& largest) const override {
    return kernel_linear_workspace(largest.w_dtype, largest.n, largest.cols);
  }
  size_t attention_workspace(const AttentionShape& largest) const override {
    return kernel_attention_workspace(largest);
  }

  void linear(const float* x, const void* w, const void* bias, float* y, const LinearShape& shape,
              void* workspace) override {
    KernelLevelPin pin(level_);
    kernel_linear(x, w, bias, shape.w_dtype, y, shape.n, shape.rows, shape.cols, workspace);
  }
  void linear_part(const float* x, const void* w_part, const void* bias, float* y,
                   const LinearShape& shape, size_t row0, size_t part_rows,
                   void* workspace) override {
    KernelLevelPin pin(level_);
    kernel_linear_part(x, w_part, bias, shape.w_dtype, y, shape.n, shape.rows, shape.cols, row0,
                       part_rows, workspace);
  }
  void rmsnorm(const float* x, const void* weight, DType w_dtype, float* y, size_t n, size_t dim,
               float eps) override {
    KernelLevelPin pin(level_);
    kernel_rmsnorm(x, weight, w_dtype, y, n, dim, eps);
  }
  void layernorm(const float* x, const void* weight, const void* bias, DType w_dtype, float* y,
                 size_t n, size_t dim, float eps) override {
    KernelLevelPin pin(level_);
    kernel_layernorm(x, weight, bias, w_dtype, y, n, dim, eps);
  }
  void rope(float* x, const int32_t* positions, const float* inv_freq, size_t n_tokens,
            size_t n_heads, size_t head_dim) override {
    KernelLevelPin pin(level_);
    kernel_rope(x, positions, inv_freq, n_tokens, n_heads, head_dim);
  }
  void silu_mul(const float* gate, const float* up, float* out, size_t n) override {
    KernelLevelPin pin(level_);
    kernel_silu_mul(gate, up, out, n);
  }
  void relu(float* x, size_t n) override {
    KernelLevelPin pin(level_);
    kernel_relu(x, n);
  }
  void gelu(float* x, size_t n) override {
    KernelLevelPin pin(level_);
    kernel_gelu(x, n);
  }
  void add(float* y, const float* x, size_t n) override {
    KernelLevelPin pin(level_);
    kernel_add(y, x, n);
  }
  void embedding(const void* table, DType dtype, const int32_t* ids, size_t n, size_t dim,
                 float* out) override {
    KernelLevelPin pin(level_);
    kernel_embedding(table, dtype, ids, n, dim, out);
  }
  void attention(const float* q, const KvLayout& kv, float* out, const AttentionShape& shape,
                 float scale, void* workspace, float* lse) override {
    KernelLevelPin pin(level_);
    kernel_attention(q, kv, out, shape, scale, workspace, lse);
  }
  void attention_mass(const float* q, const KvLayout& kv, const AttentionShape& shape, float scale,
                      const float* lse, float* mass) override {
    kernel_attention_mass(q, kv, shape, scale, lse, mass);
  }
  void kv_store(const float* k, const float* v, size_t src_stride, size_t n, size_t pos,
                const KvLayout& kv, const AttentionShape& shape) override {
    kernel_kv_store(k, v, src_stride, n, pos, kv, shape);
  }
  void copy_rows(float* dst, size_t dst_stride, const float* src, size_t src_stride, size_t rows,
                 size_t elems) override {
    if (rows == 1 || (dst_stride == elems && src_stride == elems)) {
      std::memcpy(dst, src, rows * elems * sizeof(float));
      return;
    }
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(dst + r * dst_stride, src + r * src_stride, elems * sizeof(float));
    }
  }

 private:
  int level_;  // kFollowSimdLevel or a SimdLevel
  std::string name_;
};

}  // namespace

std::unique_ptr<Backend> backend_cpu() {
  return std::make_unique<CpuBackend>(kFollowSimdLevel, "cpu");
}

std::unique_ptr<Backend> backend_cpu_at(SimdLevel level) {
  TIERLM_CHECK(level <= simd_detected(), kErrorUnsupported, "CPU backend: SIMD level ",
               simd_level_name(level),
               " is not supported by this CPU (best: ", simd_level_name(simd_detected()), ")");
  return std::make_unique<CpuBackend>(static_cast<int>(level),
                                      std::string("cpu-") + simd_level_name(level));
}

}  // namespace tierlm::detail
