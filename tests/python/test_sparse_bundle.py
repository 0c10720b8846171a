import json

import numpy as np
import pytest
import tierlm
from hypothesis import given, settings
from hypothesis import strategies as st
from tierlm.sparse.bundle import (
    ALIGNMENT,
    BundleLayout,
    from_dtype,
    load_layouts,
    read_requests,
    read_rows,
    to_dtype,
    write_bundles,
)


def weights(rng, ffn, dim, gated):
    up = rng.standard_normal((ffn, dim)).astype(np.float32)
    down = rng.standard_normal((dim, ffn)).astype(np.float32)
    gate = rng.standard_normal((ffn, dim)).astype(np.float32) if gated else None
    return up, down, gate


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("gated", [False, True])
def test_bundled_file_reads_back_exactly_the_neurons_rows(tmp_path, dtype, gated):
    rng = np.random.default_rng(5)
    layers = [weights(rng, ffn, dim, gated) for ffn, dim in [(257, 13), (1, 7), (1023, 4)]]
    layouts = write_bundles(tmp_path, layers, dtype)
    assert load_layouts(tmp_path) == layouts
    for layout, (up, down, gate) in zip(layouts, layers, strict=True):
        path = tmp_path / layout.file
        assert path.stat().st_size == layout.file_bytes
        assert layout.file_bytes % ALIGNMENT == 0
        # Ids with runs (adjacent neurons), gaps, the first and the last.
        ffn = up.shape[0]
        ids = np.unique(np.concatenate([[0, ffn - 1], rng.integers(0, ffn, size=ffn // 3)]))
        got = from_dtype(read_rows(path, layout, ids), dtype)
        dim = layout.dim
        want_up = from_dtype(to_dtype(up[ids], dtype), dtype)
        want_down = from_dtype(to_dtype(down[:, ids].T, dtype), dtype)
        np.testing.assert_array_equal(got[:, :dim], want_up)
        np.testing.assert_array_equal(got[:, -dim:], want_down)
        if gated:
            want_gate = from_dtype(to_dtype(gate[ids], dtype), dtype)
            np.testing.assert_array_equal(got[:, dim : 2 * dim], want_gate)


def test_adjacent_neurons_coalesce_into_one_request():
    layout = BundleLayout("x", 100, 8, False, "f16")  # 32-byte rows
    assert read_requests(layout, [3, 4, 5, 9, 10, 99]) == [(96, 96), (288, 64), (3168, 32)]
    assert read_requests(layout, []) == []
    with pytest.raises(ValueError, match="sorted and unique"):
        read_requests(layout, [5, 5])
    with pytest.raises(ValueError, match="0 .. 99"):
        read_requests(layout, [100])
    # Aligned for O_DIRECT: every request lies on 4 KiB boundaries, touching ones merge.
    assert read_requests(layout, [3, 4, 5, 9, 10, 99], align=4096) == [(0, 4096)]


@settings(max_examples=50, deadline=None)
@given(
    ids=st.sets(st.integers(0, 600), max_size=80),
    row_dim=st.sampled_from([1, 3, 64, 1025]),
    align=st.sampled_from([None, 512, 4096]),
)
def test_requests_cover_exactly_the_rows(ids, row_dim, align):
    layout = BundleLayout("x", 601, row_dim, False, "f32")
    ids = sorted(ids)
    requests = read_requests(layout, ids, align)
    covered = np.zeros(layout.file_bytes, bool)
    for off, length in requests:
        assert length > 0 and off + length <= layout.file_bytes
        assert not covered[off : off + length].any(), "requests overlap"
        covered[off : off + length] = True
        if align:
            assert off % align == 0
    starts = [off for off, _ in requests]
    assert starts == sorted(starts)
    for n in range(601):
        row = covered[n * layout.row_bytes : (n + 1) * layout.row_bytes]
        if n in ids:
            assert row.all()
        elif align is None:
            assert not row.any()
    if align is None:  # one request per run of adjacent ids
        runs = sum(1 for i, n in enumerate(ids) if i == 0 or ids[i - 1] != n - 1)
        assert len(requests) == runs


def test_truncated_bundle_fails_clearly(tmp_path):
    rng = np.random.default_rng(2)
    up, down, _ = weights(rng, 300, 16, False)
    (layout,) = write_bundles(tmp_path, [(up, down, None)], "f32")
    path = tmp_path / layout.file
    with open(path, "r+b") as f:
        f.truncate(100 * layout.row_bytes)
    np.testing.assert_array_equal(read_rows(path, layout, [0, 99])[:, :16], up[[0, 99]])
    with pytest.raises(tierlm.CorruptError, match="ffn-bundle-0.bin.*truncated"):
        read_rows(path, layout, [5, 150])


def test_cli_bundles_the_demo_model(tmp_path, capsys):
    from tierlm.cli import main
    from tierlm.sparse import DEMO_MODEL_DIR
    from tierlm.sparse.model import load_model

    if not (DEMO_MODEL_DIR / "config.json").exists():
        pytest.skip("demo model not shipped")
    assert main(["sparse", "bundle", str(DEMO_MODEL_DIR), str(tmp_path), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["layers"]
    loaded = load_model(DEMO_MODEL_DIR)
    assert len(layers) == loaded.num_layers
    layouts = load_layouts(tmp_path)
    up, _, down, _ = loaded.ffn(loaded.num_layers - 1)
    ids = [0, 1, 2, 500, 1023]
    rows = read_rows(tmp_path / layouts[-1].file, layouts[-1], ids).astype(np.float32)
    # The model's weights are f16, so the f16 bundle holds them exactly.
    np.testing.assert_array_equal(rows[:, : up.shape[1]], up[ids])
    np.testing.assert_array_equal(rows[:, up.shape[1] :], down[:, ids].T)
