"""Bounded-memory predictor training (tierlm.sparse.spill, predictor.fit_chunks,
train_predictors): spilled rows read back exactly, chunked training learns what in-memory
training learns, and the memory of `train_predictors` does not grow with the token count."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tierlm.sparse.predictor import activation_labels, fit_chunks, layer_metrics, train_layer
from tierlm.sparse.spill import RowSpill

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("width,dtype", [(1, np.float32), (37, np.float32), (193, np.uint8)])
def test_spill_reads_back_every_row_range_and_cleans_up(tmp_path, width, dtype):
    rng = np.random.default_rng(width)
    parts = [rng.standard_normal((n, width)).astype(dtype) for n in (1, 4095, 4097, 13)]
    with RowSpill(2, width, dtype, directory=tmp_path) as spill:
        for p in parts:
            spill.append(1, p)
        spill.append(0, parts[0])
        spill.finish()
        whole = np.concatenate(parts)
        assert spill.rows == [1, whole.shape[0]]
        for start, count in ((0, 1), (1, 4096), (4095, 4099), (8000, 10_000)):
            np.testing.assert_array_equal(spill.read(1, start, count), whole[start : start + count])
        got = np.concatenate([rows for _, rows in spill.chunks(1, 1021)])
        np.testing.assert_array_equal(got, whole)
    assert list(tmp_path.iterdir()) == []  # the spill directory is gone


def test_chunked_training_learns_the_rule_and_one_chunk_is_train_layer():
    # Neurons fire on a rank-2 function of x (as test_sparse_predictor's in-memory case).
    rng = np.random.default_rng(0)
    d, ffn, n = 24, 37, 3000
    a = rng.standard_normal((2, d)).astype(np.float32)
    b = rng.standard_normal((ffn, 2)).astype(np.float32)
    up, bias = b @ a, np.full(ffn, -1.5, np.float32)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = activation_labels(x, up, bias)
    sizes = [1021, 1021, 458]  # three chunks of the first 2500 rows

    def read(c):
        s = sum(sizes[:c])
        return x[s : s + sizes[c]], y[s : s + sizes[c]]

    p = fit_chunks(sizes, read, float(y[:2500].mean()), rank=2, epochs=30, lr=1e-2)
    m = layer_metrics(p.predict(x[2500:]), y[2500:])
    assert m["recall"] > 0.9 and m["precision"] > 0.6, m
    # One chunk is exactly the in-memory trainer.
    one = fit_chunks([2500], lambda _c: (x[:2500], y[:2500]), float(y[:2500].mean()), 2, 3)
    ref = train_layer(x[:2500], y[:2500], rank=2, epochs=3)
    np.testing.assert_array_equal(one.down, ref.down)
    np.testing.assert_array_equal(one.up, ref.up)


_MEASURE = """
import json, resource, sys
import numpy as np, torch
from transformers import LlamaConfig, LlamaForCausalLM
from tierlm.sparse.model import LoadedModel
from tierlm.sparse.predictor import train_predictors

torch.set_num_threads(1)
torch.manual_seed(0)
n = int(sys.argv[1])
config = LlamaConfig(vocab_size=101, hidden_size=256, intermediate_size=512,
                     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                     max_position_embeddings=512)
lm = LoadedModel(LlamaForCausalLM(config).eval(), None, "hf", None)
ids = np.random.default_rng(0).integers(0, 101, n)
p = train_predictors(lm, ids, ids[:2048], [8] * 4, epochs=1, min_steps=1, max_tokens=None,
                     target_sparsity=0.5, spill_dir=sys.argv[2], chunk_rows=2048)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak": peak, "tokens": p.metrics["train_tokens"],
                  "recall": [m["recall"] for m in p.metrics["layers"]]}))
"""


def _train_peak(n, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(n), str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_memory_does_not_grow_with_tokens(tmp_path):
    """Peak RSS (ru_maxrss of a fresh process) training gated predictors on 2048 vs 24576
    tokens of a 4-layer, 256-wide random Llama: holding the inputs of every layer, as
    train_predictors did, costs 24576 x 256 x 4 layers x 4 B = 96 MiB more for the larger run
    (and its f32 labels and |silu| 2 x 48 MiB per layer); spilled, the runs differ by less
    than 24 MiB (one 2048-row chunk is 2 MiB of inputs). Measured before the spill: +296 MB."""
    small, large = _train_peak(2048, tmp_path), _train_peak(24576, tmp_path)
    assert (small["tokens"], large["tokens"]) == (2048, 24576)
    assert large["peak"] - small["peak"] < 24 * 2**20, (small, large)
    assert all(0 < r <= 1 for r in large["recall"]), large
    assert list(tmp_path.iterdir()) == []
