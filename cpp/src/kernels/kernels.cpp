// Kernel launchers: argument checks, work split across the compute pool, and run-time
// dispatch to the scalar / AVX2 / AVX-512 bodies (kernels_impl.hpp). The fused attention
// driver is in attention.cpp.
#include "tierlm/kernels/kernels.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernels_impl.hpp"
#include "kernels/quant_impl.hpp"
#include "tierlm/core/error.hpp"
#include "tierlm/core/parallel.hpp"
#include "tierlm/core/simd.hpp"

namespace tierlm {

namespace detail {

void fail_block_dtype(const char* kernel, DType dtype) {
  TIERLM_FAIL(kErrorUnsupported, 0, kernel, ": ", dtype_name(dtype),
              " is a block type, which this kernel body does not read (a launcher let it "
              "through: please report this as a tierlm bug)");
}

void fail_not_block_dtype(const char* kernel, DType dtype) {
  TIERLM_FAIL(kErrorInvalidArgument, 0, kernel, ": ", dtype_name(dtype),
              " is not a block type (a launcher let it through: please report this as a tierlm "
              "bug)");
}

}  // namespace detail

namespace {

// A level pinned on this thread by detail::KernelLevelPin (-1: none, follow simd_level()).
thread_local int t_pinned_level = -1;

const detail::KernelTable& table() {
  const SimdLevel level =
      t_pinned_level < 0 ? simd_level() : static_cast<SimdLevel>(t_pinned_level);
  switch (level) {
    case SimdLevel::kSimdAvx512:
      return detail::kernels_avx512();
    case SimdLevel::kSimdAvx2:
      return detail::kernels_avx2();
    case SimdLevel::kSimdScalar:
      break;
  }
  return detail::kernels_scalar();
}

// Elements per parallel chunk below which waking the pool costs more than it saves.
constexpr size_t kMinChunkElements = 1 << 15;
// Rows of W handed out together, so SIMD bodies see whole row blocks.
constexpr size_t kLinearRowBlock = 16;
// Matrix-vector: below this many weights one thread streams W faster than the pool wakes; above
// it, rows go out in blocks of about kMatvecBlockBytes (a few microseconds of streaming) to at
// most kMatvecMaxLanes threads.
constexpr size_t kMatvecMinElements = 1 << 16;
constexpr size_t kMatvecBlockBytes = 64 << 10;
constexpr size_t kMatvecMaxLanes = 64;

}  // namespace

const detail::KernelTable& detail::kernels_current() { return table(); }

detail::KernelLevelPin::KernelLevelPin(int level) : saved_(t_pinned_level) {
  t_pinned_level = level;
}
detail::KernelLevelPin::~KernelLevelPin() { t_pinned_level = saved_; }

const detail::QuantKernels& detail::quant_kernels_at(SimdLevel level) {
  switch (level) {
    case SimdLevel::kSimdAvx512:
      if (cpu_features().avx512_vnni) return quant_kernels_avx512();
      return quant_kernels_avx2();
    case SimdLevel::kSimdAvx2:
      return quant_kernels_avx2();
    case SimdLevel::kSimdScalar:
      break;
  }
  return quant_kernels_scalar();
}

namespace {

// The quantized bodies of the current level (or of the level a test pinned).
const detail::QuantKernels& quant_table() {
  return detail::quant_kernels_at(t_pinned_level < 0 ? simd_level()
                                                     : static_cast<SimdLevel>(t_pinned_level));
}

// Runs body(n, r0, r1) over the rows of W (row_bytes each) for n tokens on the pool.
template <typename Body>
void linear_split(size_t n, size_t rows, size_t cols, size_t row_bytes, const Body& body) {
  if (n == 1) {
    if (rows * cols < kMatvecMinElements) return body(0, rows);
    // Decode streams W once from DRAM. Each thread owns a contiguous run of row blocks and
    // streams it in order; a thread done with its own run takes blocks from the others' runs, so
    // a thread slowed by another process (the cores are shared) hands its rows over instead of
    // stalling the step.
    const size_t lanes = std::min(parallel_threads(), kMatvecMaxLanes);
    const size_t block =
        kLinearRowBlock *
        std::max<size_t>(1, kMatvecBlockBytes / std::max<size_t>(1, row_bytes) / kLinearRowBlock);
    const size_t blocks = (rows + block - 1) / block;
    struct alignas(64) Run {
      std::atomic<size_t> next;
      size_t end;
    };
    Run runs[kMatvecMaxLanes];
    for (size_t i = 0; i < lanes; ++i) {
      runs[i].next.store(blocks * i / lanes, std::memory_order_relaxed);
      runs[i].end = blocks * (i + 1) / lanes;
    }
    parallel_for(lanes, [&](size_t lane, size_t) {
      for (size_t j = 0; j < lanes; ++j) {
        Run& run = runs[(lane + j) % lanes];
        for (size_t b = run.next.fetch_add(1, std::memory_order_relaxed); b < run.end;
             b = run.next.fetch_add(1, std::memory_order_relaxed))
          body(b * block, std::min(rows, (b + 1) * block));
      }
    });
    return;
  }
  const size_t blocks = (rows + kLinearRowBlock - 1) / kLinearRowBlock;
  const size_t work_per_block = std::max<size_t>(1, kLinearRowBlock * cols * n);
  const size_t min_blocks = std::max<size_t>(1, (1 << 16) / work_per_block);
  parallel_for(
      blocks,
      [&](size_t b0, size_t b1) {
        body(b0 * kLinearRowBlock, std::min(rows, b1 * kLinearRowBlock));
      },
      min_blocks);
}

// Rows [row0, row1) of Y = X W^T, w pointing at W's row 0 (the bodies index rows from there).
void linear_quantized(const float* x, const void* w, const float* bias, DType w_dtype, float* y,
                      size_t n, size_t rows, size_t cols, size_t row0, size_t row1,
                      void* workspace) {
  const size_t block = dtype_block(w_dtype).elems;
  TIERLM_CHECK(cols % block == 0, kErrorInvalidArgument, "linear: ", cols, " columns of ",
               dtype_name(w_dtype), " weights are not a whole number of ", block,
               "-element blocks");
  TIERLM_CHECK(workspace != nullptr, kErrorInvalidArgument, "linear: ", dtype_name(w_dtype),
               " weights need a workspace of ", kernel_linear_workspace(w_dtype, n, cols),
               " bytes for the quantized activations (size it with kernel_linear_workspace)");
  const detail::QuantKernels& q = quant_table();
  void* xq =
      reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(workspace) + 63) & ~uintptr_t{63});
  const size_t act_bytes = detail::quant_act_row_bytes(w_dtype, cols);
  parallel_for(
      n,
      [&](size_t t0, size_t t1) {
        q.quantize_rows(x + t0 * cols, w_dtype, static_cast<char*>(xq) + t0 * act_bytes, t1 - t0,
                        cols);
      },
      std::max<size_t>(1, kMinChunkElements / std::max<size_t>(1, cols)));
  linear_split(n, row1 - row0, cols, dtype_row_bytes(w_dtype, cols), [&](size_t r0, size_t r1) {
    q.linear(xq, w, bias, w_dtype, y, n, rows, cols, row0 + r0, row0 + r1);
  });
}

// kernel_linear on rows [row0, row1) of W, w pointing at W's row 0.
void linear_range(const float* x, const void* w, const void* bias, DType w_dtype, float* y,
                  size_t n, size_t rows, size_t cols, size_t row0, size_t row1, void* workspace) {
  if (n == 0 || row1 == row0) return;
  if (dtype_is_quantized(w_dtype))
    return linear_quantized(x, w, static_cast<const float*>(bias), w_dtype, y, n, rows, cols, row0,
                            row1, workspace);
  const detail::KernelTable& k = table();
  linear_split(n, row1 - row0, cols, cols * dtype_size(w_dtype), [&](size_t r0, size_t r1) {
    k.linear(x, w, bias, w_dtype, y, n, rows, cols, row0 + r0, row0 + r1);
  });
}

}  // namespace

size_t kernel_linear_workspace(DType w_dtype, size_t n, size_t cols) {
  if (!dtype_is_quantized(w_dtype)) return 0;
  return 64 + n * detail::quant_act_row_bytes(w_dtype, cols);
}

void kernel_linear(const float* x, const void* w, const void* bias, DType w_dtype, float* y,
                   size_t n, size_t rows, size_t cols, void* workspace) {
  linear_range(x, w, bias, w_dtype, y, n, rows, cols, 0, rows, workspace);
}

namespace detail {

void kernel_linear_part(const float* x, const void* w_part, const void* bias, DType w_dtype,
                        float* y, size_t n, size_t rows, size_t cols, size_t row0, size_t part_rows,
                        void* workspace) {
  TIERLM_CHECK(row0 + part_rows <= rows, kErrorInvalidArgument, "linear: rows ", row0, "..",
               row0 + part_rows, " of a matrix of ", rows);
  // The bodies index W from its row 0: hand them w_part moved back by row0 rows (never
  // dereferenced below row0).
  const uintptr_t row_zero =
      reinterpret_cast<uintptr_t>(w_part) - row0 * dtype_row_bytes(w_dtype, cols);
  linear_range(x, reinterpret_cast<const void*>(row_zero), bias, w_dtype, y, n, rows, cols, row0,
               row0 + part_rows, workspace);
}

}  // namespace detail

namespace {

void check_norm_dtype(const char* kernel, DType w_dtype) {
  TIERLM_CHECK(!dtype_is_quantized(w_dtype), kErrorUnsupported, kernel, ": the weight is ",
               dtype_name(w_dtype),
               "; norm weights must be f32, f16 or bf16 (keep them "
               "unquantized at export)");
}

}  // namespace

void kernel_rmsnorm(const float* x, const void* weight, DType w_dtype, float* y, size_t n,
                    size_t dim, float eps) {
  check_norm_dtype("rmsnorm", w_dtype);
  const detail::KernelTable& k = table();
  parallel_for(
      n,
      [&](size_t i0, size_t i1) {
        k.rmsnorm(x + i0 * dim, weight, w_dtype, y + i0 * dim, i1 - i0, dim, eps);
      },
      std::max<size_t>(1, kMinChunkElements / std::max<size_t>(1, dim)));
}

void kernel_layernorm(const float* x, const void* weight, const void* bias, DType w_dtype, float* y,
                      size_t n, size_t dim, float eps) {
  check_norm_dtype("layernorm", w_dtype);
  const detail::KernelTable& k = table();
  parallel_for(
      n,
      [&](size_t i0, size_t i1) {
        k.layernorm(x + i0 * dim, weight, bias, w_dtype, y + i0 * dim, i1 - i0, dim, eps);
      },
      std::max<size_t>(1, kMinChunkElements / std::max<size_t>(1, dim)));
}

void kernel_rope(float* x, const int32_t* positions, const float* inv_freq, size_t n_tokens,
                 size_t n_heads, size_t head_dim) {
  constexpr size_t kMaxHalf = 1024;
  TIERLM_CHECK(head_dim % 2 == 0 && head_dim / 2 <= kMaxHalf, kErrorInvalidArgument,
               "rope: head_dim ", head_dim, " must be even and at most ", 2 * kMaxHalf);
  const detail::KernelTable& k = table();
  const size_t half = head_dim / 2;
  const size_t token_size = n_heads * head_dim;
  parallel_for(
      n_tokens,
      [&](size_t t0, size_t t1) {
        alignas(64) float cos[kMaxHalf];
        alignas(64) float sin[kMaxHalf];
        for (size_t t = t0; t < t1; ++t) {
          // The angle is rounded to f32 before cos/sin, as transformers computes it.
          const float pos = static_cast<float>(positions[t]);
          for (size_t i = 0; i < half; ++i) {
            const float angle = pos * inv_freq[i];
            cos[i] = std::cos(angle);
            sin[i] = std::sin(angle);
          }
          k.rope(x + t * token_size, cos, sin, n_heads, head_dim);
        }
      },
      std::max<size_t>(1, kMinChunkElements / std::max<size_t>(1, token_size)));
}

void kernel_silu_mul(const float* gate, const float* up, float* out, size_t n) {
  const detail::KernelTable& k = table();
  parallel_for(
      n, [&](size_t i0, size_t i1) { k.silu_mul(gate + i0, up + i0, out + i0, i1 - i0); },
      kMinChunkElements);
}

void kernel_relu(float* x, size_t n) {
  const detail::KernelTable& k = table();
  parallel_for(
      n, [&](size_t i0, size_t i1) { k.relu(x + i0, i1 - i0); }, kMinChunkElements);
}

void kernel_gelu(float* x, size_t n) {
  const detail::KernelTable& k = table();
  parallel_for(
      n, [&](size_t i0, size_t i1) { k.gelu(x + i0, i1 - i0); }, kMinChunkElements / 8);
}

void kernel_add(float* y, const float* x, size_t n) {
  const detail::KernelTable& k = table();
  parallel_for(
      n, [&](size_t i0, size_t i1) { k.add(y + i0, x + i0, i1 - i0); }, kMinChunkElements);
}

void kernel_embedding(const void* table_data, DType dtype, const int32_t* ids, size_t n, size_t dim,
                      float* out) {
  const detail::KernelTable& k = table();
  for (size_t i = 0; i < n; ++i)
    TIERLM_CHECK(ids[i] >= 0, kErrorInvalidArgument, "embedding: token id ", ids[i], " at index ",
                 i, " is negative");
  const auto* base = static_cast<const char*>(table_data);
  const bool blocks = dtype_is_quantized(dtype);
  const size_t row_bytes = dtype_row_bytes(dtype, dim);  // fails unless dim is whole blocks
  parallel_for(
      n,
      [&](size_t i0, size_t i1) {
        for (size_t i = i0; i < i1; ++i) {
          const char* row = base + static_cast<size_t>(ids[i]) * row_bytes;
          if (blocks)
            detail::dequantize_row(row, dtype, out + i * dim, dim);
          else
            k.convert(row, dtype, out + i * dim, dim);
        }
      },
      std::max<size_t>(1, kMinChunkElements / std::max<size_t>(1, dim)));
}

}  // namespace tierlm
