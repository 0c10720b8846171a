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
