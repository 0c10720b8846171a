"""CPU kernels (tierlm._core.kernels) against numpy / torch references, at every SIMD level
this CPU has, on odd sizes. Tolerances: f32 accumulation error bounded relative to
|x| @ |w| (1e-5 f32/f16 weights, 8e-3 bf16 weights where activations may be rounded to bf16);
elementwise 1e-5 relative; attention 1e-4 relative + 2e-5 absolute."""

import numpy as np
import pytest
import tierlm
import torch
import torch.nn.functional as F
from tierlm import _core
from tierlm.reference import KV_ROUNDING

K = _core.kernels
RNG = np.random.default_rng(1234)


def _weights(shape, dtype, scale=1.0):
    """(array to pass, its dtype string, exact f32 values the kernel sees)."""
    w = (RNG.standard_normal(shape) * scale).astype(np.float32)
    if dtype == "f32":
        return w, "f32", w
    if dtype == "f16":
        h = w.astype(np.float16)
        return h, "f16", h.astype(np.float32)
    b = torch.from_numpy(w).to(torch.bfloat16)
    return b.view(torch.int16).numpy().view(np.uint16), "bf16", b.float().numpy()


DTYPES = ["f32", "f16", "bf16"]
LINEAR_TOL = {"f32": 1e-5, "f16": 1e-5, "bf16": 8e-3}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "n,rows,cols",
    [
        (1, 1, 1),
        (1, 37, 7),
        (1, 129, 4097),
        (1, 67, 2048),
        (1, 5, 16411),  # wider than the AVX512-BF16 matvec's stack copy of x: the other path
        (2, 17, 129),
        (7, 37, 129),
        (37, 65, 257),
        (5, 3, 4097),
        (70, 33, 64),
    ],
)
def test_linear(level, dtype, n, rows, cols):
    x = RNG.standard_normal((n, cols)).astype(np.float32)
    w, name, w32 = _weights((rows, cols), dtype)
    bias, _, b32 = _weights((rows,), dtype)
    for b, bref in ((None, 0.0), (bias, b32)):
        y = K.linear(x, w, b, dtype=name)
        ref = x.astype(np.float64) @ w32.T.astype(np.float64) + bref
        bound = np.abs(x).astype(np.float64) @ np.abs(w32).T + np.abs(bref)
        assert y.shape == (n, rows) and y.dtype == np.float32
        err = np.abs(y - ref)
        assert (err <= LINEAR_TOL[dtype] * bound + 1e-6).all(), err.max()


def test_linear_keeps_leading_dims_and_checks_shapes():
    x = RNG.standard_normal((2, 3, 11)).astype(np.float32)
    w = RNG.standard_normal((5, 11)).astype(np.float32)
    y = K.linear(x, w)
    assert y.shape == (2, 3, 5)
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(tierlm.InvalidArgumentError, match="cols = 11"):
        K.linear(x[..., :10].copy(), w)
    with pytest.raises(tierlm.InvalidArgumentError, match="dtype='bf16'"):
        K.linear(x, w.view(np.uint16)[:, :11].copy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,dim", [(1, 1), (3, 7), (2, 129), (5, 4097)])
def test_rmsnorm(level, dtype, n, dim):
    x = (RNG.standard_normal((n, dim)) * 3).astype(np.float32)
    w, name, w32 = _weights((dim,), dtype)
    y = K.rmsnorm(x, w, 1e-6, dtype=name)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * w32
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,dim", [(1, 1), (3, 7), (2, 129), (5, 4097)])
def test_layernorm(level, dtype, n, dim):
    x = (RNG.standard_normal((n, dim)) * 2 + 0.5).astype(np.float32)
    w, name, w32 = _weights((dim,), dtype)
    b, _, b32 = _weights((dim,), dtype)
    y = K.layernorm(x, w, b, 1e-5, dtype=name)
    ref = F.layer_norm(
        torch.from_numpy(x).double(),
        (dim,),
        torch.from_numpy(w32).double(),
        torch.from_numpy(b32).double(),
        1e-5,
    ).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-5)
    plain = K.layernorm(x, None, None, 1e-5)
    ref = F.layer_norm(torch.from_numpy(x).double(), (dim,), eps=1e-5).numpy()
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=2e-5)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@pytest.mark.parametrize(
    "n_tokens,n_heads,head_dim", [(1, 1, 2), (7, 5, 64), (3, 4, 128), (37, 2, 80)]
)
def test_rope_matches_transformers_llama(level, n_tokens, n_heads, head_dim):
    x = RNG.standard_normal((n_tokens, n_heads, head_dim)).astype(np.float32)
    positions = RNG.integers(0, 5000, n_tokens).astype(np.int32)
    inv_freq = (1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(
        np.float32
    )
    # transformers: freqs = inv_freq @ positions in f32, emb = cat(freqs, freqs).
    freqs = torch.from_numpy(positions).float()[:, None] * torch.from_numpy(inv_freq)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    xt = torch.from_numpy(x)
    ref = (xt * emb.cos() + _rotate_half(xt) * emb.sin()).numpy()
    y = x.copy()
    K.rope(y, positions, inv_freq)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


SIZES = [1, 7, 37, 4097, 100003]


@pytest.mark.parametrize("n", SIZES)
def test_elementwise(level, n):
    g = (RNG.standard_normal(n) * 4).astype(np.float32)
    u = RNG.standard_normal(n).astype(np.float32)
    gt, ut = torch.from_numpy(g).double(), torch.from_numpy(u).double()
    np.testing.assert_allclose(K.silu_mul(g, u), (F.silu(gt) * ut).numpy(), rtol=1e-5, atol=1e-6)

    r = g.copy()
    K.relu(r)
    np.testing.assert_array_equal(r, np.maximum(g, 0))

    e = g.copy()
    K.gelu(e)
    np.testing.assert_allclose(e, F.gelu(gt).numpy(), rtol=1e-5, atol=1e-6)

    y = g.copy()
    K.add(y, u)
    np.testing.assert_array_equal(y, g + u)


def test_silu_gelu_extremes(level):
    x = np.array([-100, -30, -1e-3, 0, 1e-3, 30, 100, 88.5, -88.5], dtype=np.float32)
    out = K.silu_mul(x, np.ones_like(x))
    ref = F.silu(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    e = x.copy()
    K.gelu(e)
    np.testing.assert_allclose(
        e, F.gelu(torch.from_numpy(x).double()).numpy(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 7, 129, 4097])
def test_embedding(level, dtype, dim):
    table, name, t32 = _weights((37, dim), dtype)
    ids = np.array([0, 36, 5, 5, 17], dtype=np.int32)
    np.testing.assert_array_equal(K.embedding(table, ids, dtype=name), t32[ids])
    with pytest.raises(tierlm.InvalidArgumentError, match="outside the vocabulary"):
        K.embedding(table, np.array([37], dtype=np.int32), dtype=name)


def _attention_ref(q, kc, vc, kv_len, q_pos0, scale):
    n_q = q.shape[0]
    qt = torch.from_numpy(q).double().transpose(0, 1)[None]
    kt = torch.from_numpy(kc[:, :kv_len]).double()[None]
    vt = torch.from_numpy(vc[:, :kv_len]).double()[None]
    mask = torch.arange(kv_len)[None, :] <= (q_pos0 + torch.arange(n_q))[:, None]
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1).numpy()


@pytest.mark.parametrize("heads", [(8, 2, 64), (5, 1, 37), (4, 4, 128), (16, 1, 64), (32, 8, 128)])
@pytest.mark.parametrize("kv_len", [1, 63, 501, 3771])
@pytest.mark.parametrize("n_q", [1, 2, 37])
def test_attention_matches_sdpa(level, heads, kv_len, n_q):
    n_heads, n_kv_heads, d = heads
    if n_q > kv_len:
        pytest.skip("more queries than cached keys")
    if heads == (32, 8, 128) and (n_q > 1 or level == "scalar"):
        pytest.skip("the bench shape is checked at decode on SIMD levels only (time)")
    capacity = kv_len + 13
    q = RNG.standard_normal((n_q, n_heads, d)).astype(np.float32)
    kc = RNG.standard_normal((n_kv_heads, capacity, d)).astype(np.float32)
    vc = RNG.standard_normal((n_kv_heads, capacity, d)).astype(np.float32)
    # Slots past kv_len hold garbage the kernel must never read.
    kc[:, kv_len:] = np.nan
    vc[:, kv_len:] = np.nan
    scale = d**-0.5
    q_pos0 = kv_len - n_q
    out = K.attention(q, kc, vc, kv_len, q_pos0, scale)
    ref = _attention_ref(q, kc, vc, kv_len, q_pos0, scale)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize(
    "n_q,q_pos0,kv_len", [(37, 100, 501), (129, 0, 129), (7, 3000, 3771), (2, 0, 2), (2, 700, 1000)]
)
def test_attention_prefill_midway(level, n_q, q_pos0, kv_len):
    """Queries placed before the end of the cache see only keys up to their own position."""
    n_heads, n_kv_heads, d = 6, 2, 64
    q = RNG.standard_normal((n_q, n_heads, d)).astype(np.float32) * 2
    kc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    vc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    out = K.attention(q, kc, vc, kv_len, q_pos0, 0.125)
    ref = _attention_ref(q, kc, vc, kv_len, q_pos0, 0.125)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kv_dtype", ["f16", "bf16", "q8_0"])
@pytest.mark.parametrize(
    "heads,n_q,kv_len,block",
    [((9, 3, 64), 1, 1021, 16), ((6, 2, 37), 37, 300, 64), ((4, 4, 96), 5, 5, 1)],
)
def test_attention_compact_paged_cache_matches_sdpa(level, kv_dtype, heads, n_q, kv_len, block):
    """A compact cache (f16, bf16, int8 blocks) in blocks of `block` tokens gives SDPA's output on
    the values it stores, within the f32 tolerance: attention reads it in place without extra
    error; and the stored values sit within the format's rounding of the f32 keys."""
    n_heads, n_kv_heads, d = heads
    q = RNG.standard_normal((n_q, n_heads, d)).astype(np.float32)
    kc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    vc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    scale = d**-0.5
    out = K.attention(q, kc, vc, kv_len, kv_len - n_q, scale, kv_dtype=kv_dtype, block_tokens=block)
    kr, vr = KV_ROUNDING[kv_dtype](kc), KV_ROUNDING[kv_dtype](vc)
    ref = _attention_ref(q, kr, vr, kv_len, kv_len - n_q, scale)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=2e-5)
    step = {"f16": 2**-11, "bf16": 2**-8, "q8_0": 1 / 127}[kv_dtype]
    assert np.abs(kr - kc).max() <= step * np.abs(kc).max()
    exact = _attention_ref(q, kc, vc, kv_len, kv_len - n_q, scale)
    assert np.abs(out - exact).max() > 0  # the rounding is real, and bounded:
    assert np.abs(out - exact).max() < {"f16": 2e-3, "bf16": 2e-2, "q8_0": 3e-2}[kv_dtype]


@pytest.mark.parametrize("kv_dtype", ["f32", "q8_0"])
@pytest.mark.parametrize(
    "heads,n_q,kv_len,block",
    [((9, 3, 64), 1, 1021, 16), ((6, 2, 37), 37, 300, 64), ((4, 4, 96), 5, 5, 1)],
)
def test_attention_mass_matches_numpy_softmax(level, kv_dtype, heads, n_q, kv_len, block):
    """H2O scores: each key's softmax weight summed over the queries and heads that see it, and
    the normalizers log(sum exp) the attention kernel writes for it, against numpy in f64 on the
    stored (rounded) keys."""
    n_heads, n_kv_heads, d = heads
    q = RNG.standard_normal((n_q, n_heads, d)).astype(np.float32)
    kc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    vc = RNG.standard_normal((n_kv_heads, kv_len, d)).astype(np.float32)
    scale, q_pos0 = d**-0.5, kv_len - n_q
    out, lse, mass = K.attention(
        q, kc, vc, kv_len, q_pos0, scale, kv_dtype=kv_dtype, block_tokens=block, mass=True
    )
    kr = KV_ROUNDING[kv_dtype](kc).astype(np.float64)
    group = n_heads // n_kv_heads
    scores = np.einsum("ihd,hjd->ihj", q.astype(np.float64), np.repeat(kr, group, axis=0)) * scale
    visible = np.arange(kv_len)[None, :] <= (q_pos0 + np.arange(n_q))[:, None]
    scores = np.where(visible[:, None, :], scores, -np.inf)
    ref_lse = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
    ref_mass = np.exp(scores - ref_lse[..., None]).sum(axis=(0, 1))
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mass, ref_mass, rtol=1e-4, atol=1e-6)
    assert abs(mass.sum() - n_q * n_heads) < 1e-3 * n_q * n_heads  # every row sums to one


def test_attention_refuses_a_block_kv_dtype_other_than_q8_0():
    q = RNG.standard_normal((1, 2, 32)).astype(np.float32)
    kc = RNG.standard_normal((1, 4, 32)).astype(np.float32)
    with pytest.raises(tierlm.InvalidArgumentError, match="kv_dtype q4_0 is not a KV cache type"):
        K.attention(q, kc, kc, 4, 3, 0.2, kv_dtype="q4_0")


def test_attention_same_result_for_any_thread_count():
    """Split-KV decode is deterministic, and a workspace sized under one thread count stays
    valid under another."""
    q = RNG.standard_normal((1, 4, 64)).astype(np.float32)
    kc = RNG.standard_normal((1, 3000, 64)).astype(np.float32)
    vc = RNG.standard_normal((1, 3000, 64)).astype(np.float32)
    threads = _core.cpu_info()["threads"]
    try:
        _core.set_threads(1)
        ws = np.zeros(K.attention_workspace(1, 4, 1, 64, 3000, 3000, 2999), dtype=np.uint8)
        one = K.attention(q, kc, vc, 3000, 2999, 0.125, workspace=ws)
        _core.set_threads(3)
        assert K.attention_workspace(1, 4, 1, 64, 3000, 3000, 2999) == ws.size
        three = K.attention(q, kc, vc, 3000, 2999, 0.125, workspace=ws)
    finally:
        _core.set_threads(threads)
    np.testing.assert_array_equal(one, three)
    ref = _attention_ref(q, kc, vc, 3000, 2999, 0.125)
    np.testing.assert_allclose(one, ref, rtol=1e-4, atol=2e-5)


def test_attention_workspace_and_shape_errors():
    q = RNG.standard_normal((2, 4, 16)).astype(np.float32)
    kc = RNG.standard_normal((2, 10, 16)).astype(np.float32)
    need = K.attention_workspace(2, 4, 2, 16, 10, 10, 8)
    assert need > 0
    # Workspace grows with kv_len no faster than linearly (O(kv_len), not O(kv_len^2)).
    small = K.attention_workspace(1, 32, 8, 128, 1024, 1024, 1023)
    large = K.attention_workspace(1, 32, 8, 128, 16384, 16384, 16383)
    assert large <= 16 * small
    ws = np.zeros(need, dtype=np.uint8)
    out = K.attention(q, kc, kc, 10, 8, 0.25, workspace=ws)
    np.testing.assert_allclose(out, _attention_ref(q, kc, kc, 10, 8, 0.25), rtol=1e-4, atol=2e-5)
    with pytest.raises(tierlm.InvalidArgumentError, match="workspace"):
        K.attention(q, kc, kc, 10, 8, 0.25, workspace=ws[: need - 1])
    with pytest.raises(tierlm.InvalidArgumentError, match="kv_len"):
        K.attention(q, kc, kc, 9, 8, 0.25)
    with pytest.raises(tierlm.InvalidArgumentError, match="kv_capacity"):
        K.attention(q, kc, kc, 11, 8, 0.25)
    with pytest.raises(tierlm.InvalidArgumentError, match="multiple of n_kv_heads"):
        K.attention(q[:, :3].copy(), kc, kc, 10, 8, 0.25)
