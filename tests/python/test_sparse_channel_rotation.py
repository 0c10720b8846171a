"""Rotated input-channel sparsity (tierlm.sparse.channel_rotation): the rotation against a
numpy reference, folded into the channel files exactly, 0% still dense bit for bit, the native
channel path against the torch reference, the files round trip and bad ones are named. The
executor's rotated sites: tests/python/test_model_channel.py."""

import json

import numpy as np
import pytest
from tierlm.sparse import channel
from tierlm.sparse import channel_rotation as cr

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model():
    from test_sparse_channel import tiny_llama

    loaded = tiny_llama(seed=3)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # norm weights away from 1, as in a trained model
        for layer in loaded.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=gen))
    ids = np.random.default_rng(3).integers(0, 101, 211)
    return loaded, ids


def logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([list(ids)])).logits[0]


def site_inputs(loaded, ids, layer, site, context=64, skip=0):
    """The site's input rows on ids run in windows of `context` (f64 numpy), the first
    `skip` of each window left out."""
    got = []
    mod = channel.site_modules(loaded.layers[layer], site)[0]
    h = mod.register_forward_pre_hook(lambda _m, a: got.append(a[0][0, skip:].double().numpy()))
    try:
        for start in range(0, len(ids), context):
            logits(loaded, ids[start : start + context])
    finally:
        h.remove()
    return np.concatenate(got)


def test_rotation_is_the_principal_axes_of_the_inputs(model):
    loaded, ids = model
    # ids: 211 tokens in windows of 64, the last of 19; the sinks of each window left out.
    rot = cr.ChannelRotation.calibrate(loaded, ids, context=64)
    for i in range(len(loaded.layers)):
        for site in cr.ROTATED_SITES:
            x = site_inputs(loaded, ids, i, site, skip=cr.SINK_POSITIONS)
            assert len(x) == len(ids) - 4 * cr.SINK_POSITIONS
            cov = x.T @ x / len(x)
            q = rot.of(i, site)
            np.testing.assert_allclose(q.T @ q, np.eye(q.shape[0]), atol=1e-5)
            # Qᵀ C Q is diagonal, decreasing (numpy's eigvalsh as the reference)
            d = q.T.astype(np.float64) @ cov @ q
            w = np.linalg.eigvalsh(cov)[::-1]
            np.testing.assert_allclose(np.diag(d), w, rtol=1e-4, atol=1e-6 * w[0])
            assert np.abs(d - np.diag(np.diag(d))).max() <= 1e-4 * w[0]
        assert rot.of(i, "attn_out") is None and rot.of(i, "ffn_down") is None


def test_output_axes_make_the_stored_columns_orthonormal(model):
    """rotation "output": Q = L V; W Q⁻ᵀ has orthonormal columns, so a skipped z_j costs
    exactly z_j² of the outputs' squared error, and Qᵀ C Q is diagonal with the eigenvalues
    of (WᵀW) C (numpy's eigvals as the reference), decreasing."""
    from tierlm.sparse.channel_bundle import site_weights

    loaded, ids = model
    rot = cr.ChannelRotation.calibrate(loaded, ids, context=64, axes="output")
    assert rot.axes == "output"
    for i, layer in enumerate(loaded.layers):
        for site in cr.ROTATED_SITES:
            q = rot.of(i, site).astype(np.float64)
            w = np.concatenate(site_weights(layer, site)).astype(np.float64)
            folded = w @ np.linalg.inv(q).T
            np.testing.assert_allclose(folded.T @ folded, np.eye(q.shape[0]), atol=1e-4)
            x = site_inputs(loaded, ids, i, site, skip=cr.SINK_POSITIONS)
            cov = x.T @ x / len(x)
            d = q.T @ cov @ q
            want = np.sort(np.linalg.eigvals(w.T @ w @ cov).real)[::-1]
            np.testing.assert_allclose(np.diag(d), want, rtol=1e-3, atol=1e-6 * want[0])
            assert np.abs(d - np.diag(np.diag(d))).max() <= 1e-3 * want[0]
            # the skipped channels' cost on the outputs is the sum of their z_j²
            z = x[:5] @ q
            cut = z * (np.abs(z) > np.median(np.abs(z)))
            err = ((x[:5] - cut @ np.linalg.inv(q)) @ w.T) ** 2
            np.testing.assert_allclose(err.sum(1), ((z - cut) ** 2).sum(1), rtol=1e-3)
    with pytest.raises(ValueError, match="axes must be one of"):
        cr.ChannelRotation.calibrate(loaded, ids, context=64, axes="hadamard")
    with pytest.raises(ValueError, match="leave no token"):
        cr.ChannelRotation.calibrate(loaded, ids[:7], context=3)


def test_rotated_columns_equal_the_matrix_on_the_rotated_input():
    rng = np.random.default_rng(5)
    n, out = 37, 13
    orthogonal, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = rng.standard_normal((out, n)).astype(np.float32)
    x = rng.standard_normal((7, n)).astype(np.float32)
    for q in (orthogonal, orthogonal * rng.uniform(0.5, 2.0, n)):  # and one not orthogonal
        z = x @ q
        np.testing.assert_allclose(z @ cr.rotated_columns(w, q).T, x @ w.T, rtol=1e-4, atol=1e-4)


def test_zero_sparsity_is_dense_bit_for_bit(model):
    loaded, ids = model
    th = channel.calibrate(loaded, ids, 0.0, context=64, rotation="site")
    assert th.rotation is None and all(t == 0 for layer in th.layers for t in layer.values())
    dense = logits(loaded, ids[:40])
    with channel.channel_sparse_mode(loaded, th):
        assert torch.equal(logits(loaded, ids[:40]), dense)


@pytest.mark.parametrize("rotation", ["site", "output"])
def test_reference_and_native_path_sparsify_the_rotated_input(model, tmp_path, rotation):
    from tierlm.sparse.channel_bundle import write_channel_bundles
    from tierlm.sparse.channel_exec import NativeChannelSparse

    loaded, ids = model
    th = channel.calibrate(loaded, ids, 0.4, context=64, rotation=rotation)
    # The torch reference: one site's output against numpy (rotate, cut at t, rotate back),
    # on the site's input as the sparse model upstream gives it (hooks run in order: these
    # two see the input before the sparse mode's hook, and the output after it).
    up = loaded.layers[1].mlp.up_proj
    seen, got = [], []
    hooks = [
        up.register_forward_pre_hook(lambda _m, a: seen.append(a[0][0].numpy().copy())),
        up.register_forward_hook(lambda _m, _a, out: got.append(out[0].numpy())),
    ]
    try:
        with channel.channel_sparse_mode(loaded, th):
            logits(loaded, ids[:29])
    finally:
        for h in hooks:
            h.remove()
    q = th.rotation.of(1, "ffn_in")
    z = seen[0] @ q
    keep = np.abs(z) > th.layers[1]["ffn_in"]
    assert 0.2 < 1 - keep.mean() < 0.6  # near the calibrated fraction, on other tokens
    want = ((z * keep) @ np.linalg.inv(q.astype(np.float64))) @ up.weight.detach().numpy().T
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # The native path on rotated f32 columns equals the reference.
    write_channel_bundles(loaded, tmp_path, "f32", th.rotation)
    seq = ids[100:131]
    dense = logits(loaded, seq)
    with channel.channel_sparse_mode(loaded, th):
        ref = logits(loaded, seq)
    with NativeChannelSparse(loaded, tmp_path, th, k=2) as native:
        out = logits(loaded, seq)
    span = float(dense.abs().max())
    assert float((out - ref).abs().max()) <= 1e-4 * span
    assert float((ref - dense).abs().max()) > 1e-2 * span
    assert 0.2 < native.summary()["sparsity"] < 0.6


def test_split_windows_alternates_windows_or_halves():
    ids = np.arange(7 * 64 + 5)
    even, odd = channel.split_windows(ids, 64)
    assert even.tolist() == [i for i in ids if (i // 64) % 2 == 0]
    assert odd.tolist() == [i for i in ids if (i // 64) % 2 == 1]
    a, b = channel.split_windows(np.arange(63), 64)  # one window: its two halves
    assert a.tolist() == list(range(31)) and b.tolist() == list(range(31, 63))


@pytest.mark.parametrize("rotation", ["site", "output"])
def test_thresholds_skip_the_target_on_text_the_rotation_has_not_seen(model, rotation):
    # The rotation fits the tokens it is computed on; quantiles taken on those same tokens
    # would skip less on any other text (here 0.35 of the weights for a 0.4 target).
    loaded, ids = model
    other = np.random.default_rng(11).integers(0, 101, 383)
    th = channel.calibrate(loaded, ids, 0.4, context=64, rotation=rotation)
    q = channel.quality(loaded, th, other, n_new=0, context=64)
    assert q["held_out_sparsity"] == pytest.approx(0.4, abs=0.03)


def test_rotation_round_trips_and_bad_files_are_named(model, tmp_path):
    loaded, ids = model
    th = channel.calibrate(loaded, ids, 0.3, context=64, rotation="site")
    th.save(tmp_path)
    meta = json.loads((tmp_path / channel.CHANNEL_JSON).read_text())
    assert meta["format_version"] == 3 and meta["rotation"]["scope"] == "site"
    assert meta["rotation"]["axes"] == "input"
    back = channel.ChannelThresholds.load(tmp_path)
    assert back.rotation.axes == "input"
    assert back.layers == th.layers
    for i in range(len(th.layers)):
        for site in cr.ROTATED_SITES:
            np.testing.assert_array_equal(back.rotation.of(i, site), th.rotation.of(i, site))
    with pytest.raises(ValueError, match="rotation must be one of"):
        channel.calibrate(loaded, ids, 0.3, rotation="hadamard")
    with pytest.raises(ValueError, match="criterion magnitude and allocation uniform"):
        channel.calibrate(loaded, ids, 0.3, rotation="site", allocation="greedy")
    out = channel.calibrate(loaded, ids, 0.3, context=64, rotation="output")
    (tmp_path / "out").mkdir()
    out.save(tmp_path / "out")
    assert channel.ChannelThresholds.load(tmp_path / "out").rotation.axes == "output"
    meta_path = tmp_path / "out" / channel.CHANNEL_JSON
    meta = json.loads(meta_path.read_text())
    meta["rotation"]["axes"] = "sideways"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="rotation axes 'sideways' are not one of"):
        channel.ChannelThresholds.load(tmp_path / "out")
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / cr.ROTATION_FILE))
    del tensors["layers.1.ffn_in.rotation"]
    save_file(tensors, str(tmp_path / cr.ROTATION_FILE))
    with pytest.raises(ValueError, match="layers.1.ffn_in.rotation is missing"):
        channel.ChannelThresholds.load(tmp_path)
    (tmp_path / cr.ROTATION_FILE).unlink()
    with pytest.raises(ValueError, match="channel_rotations.safetensors, which is missing"):
        channel.ChannelThresholds.load(tmp_path)
