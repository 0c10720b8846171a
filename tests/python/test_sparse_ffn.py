import numpy as np
import pytest
import tierlm
from tierlm.sparse import DEMO_MODEL_DIR
from tierlm.sparse.bundle import bundle_rows, from_dtype, to_dtype
from tierlm.sparse.cache import NeuronCache, sparse_ffn


def dense_ffn(x, up, up_bias, down, down_bias, gate=None, gate_bias=None):
    """numpy f64 reference of a dense FFN (nn.Linear layouts: up [ffn, d], down [d, ffn])."""
    x = x.astype(np.float64)
    u = up.astype(np.float64) @ x + up_bias
    if gate is None:
        a = np.maximum(u, 0.0)
    else:
        g = gate.astype(np.float64) @ x + gate_bias
        a = g / (1.0 + np.exp(-g)) * u
    return down.astype(np.float64) @ a + down_bias, a


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dim,ffn", [(1, 3), (17, 61), (64, 257), (129, 97)])
def test_oracle_active_set_equals_the_dense_ffn(level, dtype, gated, dim, ffn):
    rng = np.random.default_rng(dim * 7 + ffn)
    up = rng.standard_normal((ffn, dim)).astype(np.float32) / np.sqrt(dim)
    gate = rng.standard_normal((ffn, dim)).astype(np.float32) / np.sqrt(dim) if gated else None
    down = rng.standard_normal((dim, ffn)).astype(np.float32) / np.sqrt(ffn)
    up_bias = rng.standard_normal(ffn).astype(np.float32) * 0.1
    gate_bias = rng.standard_normal(ffn).astype(np.float32) * 0.1 if gated else None
    down_bias = rng.standard_normal(dim).astype(np.float32)
    x = rng.standard_normal(dim).astype(np.float32)
    stored = to_dtype(bundle_rows(up, down, gate), dtype)
    rows32 = from_dtype(stored, dtype)  # the reference sees the same rounded weights
    up_r, down_r = rows32[:, :dim], rows32[:, -dim:].T
    gate_r = rows32[:, dim : 2 * dim] if gated else None
    want, act = dense_ffn(x, up_r, up_bias, down_r, down_bias, gate_r, gate_bias)
    # Oracle: the rows of the neurons that contribute, in shuffled order (ReLU: positive ones).
    active = np.flatnonzero(act != 0.0) if not gated else np.arange(ffn)
    active = rng.permutation(active)
    got = sparse_ffn(
        x,
        stored[active],
        dim,
        dtype,
        gated=gated,
        neurons=active,
        up_bias=up_bias,
        gate_bias=gate_bias,
        down_bias=down_bias,
        level=level,
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_relu_inactive_rows_add_nothing_and_slots_select():
    rng = np.random.default_rng(1)
    dim, ffn = 33, 40
    up = rng.standard_normal((ffn, dim)).astype(np.float32)
    down = rng.standard_normal((dim, ffn)).astype(np.float32)
    b = np.zeros(ffn, np.float32)
    x = rng.standard_normal(dim).astype(np.float32)
    rows = bundle_rows(up, down)
    want, act = dense_ffn(x, up, b, down, np.zeros(dim))
    every = sparse_ffn(x, rows, dim, up_bias=b)  # all rows, inactive ones included
    np.testing.assert_allclose(every, want, rtol=1e-4, atol=1e-4)
    some = np.array([3, 9, 20], np.int32)
    part = sparse_ffn(x, rows, dim, up_bias=b, slots=some)
    np.testing.assert_allclose(
        part, down[:, some] @ np.maximum(up[some] @ x, 0), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(tierlm.InvalidArgumentError, match="slot 40"):
        sparse_ffn(x, rows, dim, up_bias=b, slots=[40])
    with pytest.raises(tierlm.InvalidArgumentError, match="row stride"):
        sparse_ffn(x, rows[:, :-1], dim)


def test_on_cached_rows_of_the_demo_model_with_oracle_sets(simd_levels):
    """The neuron cache filled with the true active neurons of real FFN inputs of the shipped
    model computes its dense FFN exactly (f32 tolerance), at every SIMD level."""
    if not (DEMO_MODEL_DIR / "config.json").exists():
        pytest.skip("demo model not shipped (run scripts/train_demo_model.py)")
    from tierlm.sparse.model import collect_ffn_inputs, load_model

    loaded = load_model(DEMO_MODEL_DIR)
    ids = loaded.encode("def parse(self, text):\n    return text.split()\n")
    xs = collect_ffn_inputs(loaded, ids)
    tier = tierlm.HostTier("16MiB")
    for layer in (0, loaded.num_layers - 1):
        up, up_bias, down, down_bias = loaded.ffn(layer)
        rows = bundle_rows(up, down)
        cache = NeuronCache(tier, loaded.ffn_dim, loaded.ffn_dim, rows.shape[1])
        for x in xs[layer][:5]:
            want, act = dense_ffn(x, up, up_bias, down, down_bias)
            active = np.flatnonzero(act > 0)
            assert 0 < active.size < loaded.ffn_dim
            cache.clear()
            cache.insert(active, rows[active])
            for level in simd_levels:
                got = cache.ffn(x, loaded.hidden_size, up_bias, down_bias, level=level)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        del cache


def _rounded(x, block):
    """x through the int8 activation blocks the quantized dot products read (d = max|x| / 127,
    q = round-half-even(x * (1 / d)), in f32)."""
    xb = x.reshape(-1, block)
    d = (np.abs(xb).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    return (np.rint(xb * inv) * d).reshape(x.shape)


def _activation(up, gate):
    if gate is None:
        return np.maximum(up, 0.0)
    with np.errstate(over="ignore"):  # exp(-gate) of a large negative gate: silu is -0
        return gate / (1.0 + np.exp(-gate)) * up


# (dim, ffn) in blocks of the type's size: 1 and odd counts of blocks of hidden, FFNs whole
# blocks (the dense down's rows run along them).
BLOCK_SHAPES = {32: [(32, 64), (96, 352), (160, 224)], 256: [(256, 512), (768, 256)]}


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("dtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"])
def test_block_rows_equal_the_dense_quantized_path(level, dtype, gated):
    """Bundled rows of a GGUF block type (down quantized as rows of down^T, as export does),
    every neuron selected, in shuffled order through slots:
    (a) against numpy on the dequantized bundle with x rounded through the int8 blocks: f32
        sums only (1e-5 of the output's scale sum_r |act_r| |down_r|);
    (b) against the dense quantized path (linear on up, gate and down's own blocks, whose
        up/gate dot products are the same): the two quantizations of down differ, and the
        dense down rounds the activations to int8 blocks, so per output i
        |diff_i| <= sum_r |act_r| |D_bundle[r, i] - D_dense[i, r]| + sqrt(B)/254 |act| |D_i|
        (plus the same f32 slack)."""
    from quant_blocks import dequantize, quantized
    from tierlm import _core
    from tierlm.quant import quantize

    block = 256 if dtype.endswith("_k") else 32
    for dim, ffn in BLOCK_SHAPES[block]:
        rng = np.random.default_rng([dim, ffn, gated])
        up_q = quantized(dtype, rng.standard_normal((ffn, dim), np.float32), rng)
        gate_q = (
            quantized(dtype, rng.standard_normal((ffn, dim), np.float32), rng) if gated else None
        )
        down_q = quantized(dtype, rng.standard_normal((dim, ffn), np.float32) / 8, rng)
        down = dequantize(down_q, dtype)  # the dense down's values, [dim, ffn]
        down_t_q = quantize(dtype, down.T)  # export: its columns as rows of down^T
        rows = np.concatenate([up_q] + ([gate_q] if gated else []) + [down_t_q], axis=1)
        up_bias = rng.standard_normal(ffn).astype(np.float32) * 0.1
        gate_bias = rng.standard_normal(ffn).astype(np.float32) * 0.1 if gated else None
        down_bias = rng.standard_normal(dim).astype(np.float32)
        x = rng.standard_normal(dim).astype(np.float32)
        order = rng.permutation(ffn)
        got = sparse_ffn(x, rows, dim, dtype, gated, None, up_bias, gate_bias, down_bias,
                         slots=order, level=level)  # fmt: skip
        what = f"{dtype} {level} dim {dim} ffn {ffn}"

        xr = _rounded(x, block).astype(np.float64)
        up = dequantize(up_q, dtype).astype(np.float64) @ xr + up_bias
        gate = dequantize(gate_q, dtype).astype(np.float64) @ xr + gate_bias if gated else None
        act = _activation(up, gate)
        d_bundle = dequantize(down_t_q, dtype).astype(np.float64)  # [ffn, dim]
        exact = act @ d_bundle + down_bias
        scale = np.abs(act) @ np.abs(d_bundle) + np.abs(down_bias)
        assert np.max(np.abs(got - exact)) <= 1e-5 * scale.max(), what

        k = _core.kernels
        h_up = k.linear(x[None], up_q, up_bias, dtype=dtype)[0]
        h = (
            h_up
            if not gated
            else _activation(h_up, k.linear(x[None], gate_q, gate_bias, dtype=dtype)[0])
        )
        if not gated:
            h = np.maximum(h, 0).astype(np.float32)
        dense = k.linear(h[None].astype(np.float32), down_q, down_bias, dtype=dtype)[0]
        bound = (
            np.abs(act) @ np.abs(d_bundle - down.T)
            + np.sqrt(block) / 254 * np.linalg.norm(act) * np.linalg.norm(down, axis=1)
            + 1e-5 * scale.max()
        )
        assert np.all(np.abs(got - dense) <= bound), what
        # Subsets read the same rows in place: slots 1, a prime count, and none.
        for pick in (order[:1], order[:13], order[:0]):
            part = sparse_ffn(x, rows, dim, dtype, gated, None, up_bias, gate_bias, None,
                              slots=pick, level=level)  # fmt: skip
            want = act[pick] @ d_bundle[pick]
            assert np.max(np.abs(part - want)) <= 1e-5 * scale.max() + 1e-12, what


def test_block_rows_are_checked():
    from tierlm.quant import quantize

    rows = quantize("q8_0", np.ones((3, 64), np.float32))
    x = np.ones(32, np.float32)
    with pytest.raises(tierlm.InvalidArgumentError, match="whole q8_0 blocks"):
        sparse_ffn(x, rows[:, :-1], 32, "q8_0")
    with pytest.raises(tierlm.InvalidArgumentError, match="row stride"):
        sparse_ffn(x, rows[:, :34], 32, "q8_0")
    with pytest.raises(tierlm.InvalidArgumentError, match="uint8"):
        sparse_ffn(x, rows.view(np.uint16), 32, "q8_0")
    assert np.allclose(sparse_ffn(x, rows, 32, "q8_0"), 3 * 32 * np.ones(32), rtol=1e-2)
