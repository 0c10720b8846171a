"""The model-level walk (tierlm.sparse.channel_walk): after every step the KL it stands on is
the KL of the sparse model at the levels it reports (measured again here), it meets the
target fraction of the weights exactly, and its loss is zero for the dense model."""

import re

import numpy as np
import pytest
from tierlm.sparse import channel
from tierlm.sparse import channel_walk as cw

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def kl_to_dense(loaded, ids, thresholds):
    dense = cw._log_probs(loaded, ids)
    with channel.channel_sparse_mode(loaded, thresholds):
        sparse = cw._log_probs(loaded, ids)
    return float((dense.exp() * (dense - sparse)).sum(-1).mean())


def test_walk_stands_on_the_loss_of_its_current_levels():
    from test_sparse_channel import tiny_llama

    loaded = tiny_llama(seed=5)
    ids = np.random.default_rng(5).integers(0, 101, 97)
    hists = channel.collect_histograms(loaded, ids, context=97)
    sizes = {s: channel.site_weight_elems(loaded, 0, s) for s in channel.SITES}
    lines = []
    level = cw.walk_site_levels(loaded, ids, hists, sizes, 0.4, log=lines.append)
    skipped = sum(level[s] * sizes[s] for s in sizes) / sum(sizes.values())
    assert skipped == pytest.approx(0.4, abs=1e-9)
    assert len(lines) >= 3 and len(set(level.values())) > 1
    for line in lines:  # each step's KL is the KL at the levels it names
        kl = float(re.search(r"KL ([0-9.e-]+)", line).group(1))
        named = re.search(r"\((.*)\)", line).group(1).split()
        levels = {s: float(v) for s, v in zip(named[::2], named[1::2], strict=True)}
        assert set(levels) == set(channel.SITES), line
        got = kl_to_dense(loaded, ids, cw._thresholds(hists, levels, None, None))
        assert kl == pytest.approx(got, rel=1e-4, abs=1e-9), line
    dense = cw._thresholds(hists, dict.fromkeys(sizes, 0.0), None, None)
    assert kl_to_dense(loaded, ids, dense) == 0
