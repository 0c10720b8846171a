// CPU compute kernels of the executor. Each has a scalar reference and SIMD variants
// (AVX2, AVX-512) chosen at run time by simd_level(); all accumulate in f32.
// Launchers take raw pointers and sizes and never allocate; the caller owns every buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tierlm/core/dtype.hpp"
#include "tierlm/core/export.hpp"

namespace tierlm {

// Y[n, rows] = X[n, cols] · W[rows, cols]^T (+ bias[rows]); W row-major in w_dtype,
// bias (optional) in w_dtype, or f32 when w_dtype is a block type. n == 1 is the decode
// matrix-vector path.
// Block types (q8_0 .. q6_k, cols a whole number of blocks) quantize X to int8 blocks once per
// call (q8_0-style per 32 elements, one scale per 256 for the k-types) into `workspace` and use
// integer dot products. That rounding bounds the error against f32 X times the dequantized W by
// |y - y_ref| <= sqrt(B) / 254 * |x| * |w_row| (B = 32, or 256 for k-types; worst case, each
// element off by half a step of its block's scale max|x| / 127).
// kernel_linear_workspace: the workspace bytes for n tokens (0 for f32 / f16 / bf16, where
// workspace may be null). It grows with n, so the size for the largest n covers every smaller.
TIERLM_API size_t kernel_linear_workspace(DType w_dtype, size_t n, size_t cols);
TIERLM_API void kernel_linear(const float* x, const void* w, const void* bias, DType w_dtype,
                              float* y, size_t n, size_t rows, size_t cols,
                              void* workspace = nullptr);

// y = x / rms(x) * weight, per row of dim; weight in w_dtype (f32, f16 or bf16: a block type is
// refused, as in layernorm).
TIERLM_API void kernel_rmsnorm(const float* x, const void* weight, DType w_dtype, float* y,
                               size_t n, size_t dim, float eps);
// y = (x - mean) / std * weight + bias, per row of dim.
TIERLM_API void kernel_layernorm(const float* x, const void* weight, const void* bias,
                                 DType w_dtype, float* y, size_t n, size_t dim, float eps);

// Rotary embedding in place on x[n_tokens, n_heads, head_dim], GPT-NeoX style (rotate
// halves, as Llama in transformers). inv_freq has head_dim / 2 entries (already scaled).
TIERLM_API void kernel_rope(float* x, const int32_t* positions, const float* inv_freq,
                            size_t n_tokens, size_t n_heads, size_t head_dim);

// out = silu(gate) * up (SwiGLU), elementwise.
TIERLM_API void kernel_silu_mul(const float* gate, const float* up, float* out, size_t n);
TIERLM_API void kernel_relu(float* x, size_t n);
TIERLM_API void kernel_gelu(float* x, size_t n);  // tanh approximation off: exact erf GELU
TIERLM_API void kernel_add(float* y, const float* x, size_t n);  // y += x

// out[i, :] = table[ids[i], :], converted to f32 (block types dequantized as ggml does).
TIERLM_API void kernel_embedding(const void* table, DType dtype, const int32_t* ids, size_t n,
                                 size_t dim, float* out);

// Fused causal attention with grouped-query heads, reading the KV cache in place.
// q: [n_q, n_heads, head_dim]; out: same shape (f32, contiguous).
// The cache (KvLayout) holds token rows of head_dim elements in kv_dtype; positions
// 0 .. kv_len-1 are valid. Query i sits at position q_pos0 + i and sees keys 0 .. q_pos0 + i,
// so this step's keys must already be in the cache: q_pos0 + n_q <= kv_len <= kv_capacity.
// Query head h uses KV head h / (n_heads / n_kv_heads) (repeat_interleave, as transformers).
// Scores are scale * q·k; slots past kv_len are never read.
struct TIERLM_API AttentionShape {
  size_t n_q = 1;
  size_t n_heads = 1;
  size_t n_kv_heads = 1;
  size_t head_dim = 64;
  size_t kv_len = 1;
  size_t kv_capacity = 1;  // tokens the layout addresses
  size_t q_pos0 = 0;
  // f32, f16, bf16, or q8_0: ggml's int8 blocks of 32 along head_dim with an f16 scale
  // (max|x| / 127), a last partial block zero-padded.
  DType kv_dtype = DType::kDTypeF32;
};

// Where the cache's rows are: tokens in blocks of block_tokens, block b at blocks[b]; in a
// block, keys at + k_offset and values at + v_offset bytes, each [n_kv_heads, block_tokens,
// kernel_kv_row_bytes] (token t of head h: row h * block_tokens + t % block_tokens of block
// t / block_tokens). A contiguous cache is one block of kv_capacity tokens; a paged cache
// lists its blocks in sequence order (any addresses).
struct TIERLM_API KvLayout {
  void* const* blocks = nullptr;
  size_t block_tokens = 1;
  size_t k_offset = 0;
  size_t v_offset = 0;
};

// Bytes of one cached token row of one head; refuses a dtype the cache cannot hold.
TIERLM_API size_t kernel_kv_row_bytes(DType kv_dtype, size_t head_dim);
// Appends n tokens: k and v are [n, n_kv_heads, head_dim] f32 with src_stride floats between
// tokens, stored converted to shape.kv_dtype (f16 / bf16 round to nearest even, q8_0 as
// ggml's quantize_row_q8_0) at positions pos .. pos + n - 1 <= shape.kv_capacity.
TIERLM_API void kernel_kv_store(const float* k, const float* v, size_t src_stride, size_t n,
                                size_t pos, const KvLayout& kv, const AttentionShape& shape);

// Streaming past the context: moves n cached tokens from positions from .. from + n - 1 down
// to to .. to + n - 1 (to < from) and rotates their keys back by from - to positions with RoPE
// (GPT-NeoX halves, inv_freq: head_dim / 2 entries), so a key reads as computed at its new
// position. Values move as they are; keys in q8_0 are requantized.
TIERLM_API void kernel_kv_shift(const KvLayout& kv, const AttentionShape& shape, size_t from,
                                size_t to, size_t n, const float* inv_freq);

// Bytes of scratch the kernel needs for this shape. It does not depend on kv_len, q_pos0 or
// the thread count, and grows with n_q, so the size for the largest step (e.g. the longest
// prefill) covers every smaller one, decode included. Any alignment is accepted.
TIERLM_API size_t kernel_attention_workspace(const AttentionShape& shape);
// lse (optional, [n_q, n_heads]): each query head's log(sum_j exp(score_j)), the softmax
// normalizer, for kernel_attention_mass.
TIERLM_API void kernel_attention(const float* q, const KvLayout& kv, float* out,
                                 const AttentionShape& shape, float scale, void* workspace,
                                 float* lse = nullptr);
// Heavy-hitter scores (H2O): mass[j] += sum over queries i and query heads h that see key j of
// its softmax weight exp(scale * q[i, h] . k[j] - lse[i, h]), for j < q_pos0 + n_q, with lse as
// kernel_attention wrote it for the same q, cache and shape: one score per cached token,
// summed over heads (and, by the caller, layers), since every layer keeps the same tokens.
TIERLM_API void kernel_attention_mass(const float* q, const KvLayout& kv,
                                      const AttentionShape& shape, float scale, const float* lse,
                                      float* mass);

}  // namespace tierlm
