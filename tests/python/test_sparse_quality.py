import numpy as np
import pytest
import torch
from tierlm.sparse import DEMO_MODEL_DIR
from tierlm.sparse.bundle import write_model_bundles
from tierlm.sparse.corpus import held_out_text
from tierlm.sparse.model import load_model
from tierlm.sparse.predictor import Predictors
from tierlm.sparse.quality import (
    NativeSparseFfn,
    bytes_per_token,
    greedy,
    perplexity,
    sparse_ffn_mode,
)

needs_demo = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "predictors.json").exists(), reason="demo model not shipped"
)


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def random_opt(tmp_path_factory):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(
        vocab_size=101,
        hidden_size=40,
        num_hidden_layers=2,
        ffn_dim=97,
        num_attention_heads=5,
        max_position_embeddings=64,
        word_embed_proj_dim=40,
        do_layer_norm_before=True,
    )
    path = tmp_path_factory.mktemp("opt")
    OPTForCausalLM(cfg).save_pretrained(path)
    return load_model(path)


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_native_path_with_oracle_sets_equals_dense(random_opt, tmp_path, dtype):
    lm = random_opt
    if dtype == "f16":  # the bundle then holds the model's weights exactly
        lm.model.half().float()
    write_model_bundles(lm, tmp_path, dtype)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 101, 37))[None]
    with torch.no_grad():
        dense = lm.model(ids).logits
        with NativeSparseFfn(lm, tmp_path, None, k=3) as native:
            sparse = lm.model(ids).logits
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)
    s = native.summary()
    assert s["recall"] == 1.0 and s["tokens"] == 37
    assert 0 < s["bytes_read_per_token"] < s["dense_bytes_per_token"]
    assert s["requests_per_token"] <= s["rows_read_per_token"]


def test_bytes_per_token_counts_window_loads():
    masks = np.zeros((4, 10), bool)
    masks[:, :3] = True  # the same 3 neurons every token: read once with a window
    masks[3, 9] = True
    b = bytes_per_token(masks, row_bytes=8, k=4)
    assert b["dense"] == 80 and b["sparse"] == (3 * 4 + 1) / 4 * 8
    assert b["window"] == 4 / 4 * 8


@needs_demo
def test_demo_model_writes_python(demo):
    text = demo.decode(greedy(demo, demo.encode("import "), 24))
    assert any(word in text for word in ("import", "def", "self", "return", "\n")), text


@needs_demo
def test_predicted_sparsity_keeps_quality_and_reads_less(demo, tmp_path):
    predictors = Predictors.load(DEMO_MODEL_DIR)
    ids = np.array(demo.encode(held_out_text()))[:512]
    dense = perplexity(demo, ids)
    with sparse_ffn_mode(demo, predictors):
        sparse = perplexity(demo, ids)
    assert sparse / dense < 1.05, (sparse, dense)
    write_model_bundles(demo, tmp_path, "f16")
    with NativeSparseFfn(demo, tmp_path, predictors, k=4) as native:
        native_ppl = perplexity(demo, ids[:256])
    with sparse_ffn_mode(demo, predictors):
        torch_ppl = perplexity(demo, ids[:256])
    assert native_ppl == pytest.approx(torch_ppl, rel=1e-3)
    s = native.summary()
    assert s["bytes_read_per_token"] < 0.5 * s["dense_bytes_per_token"]
    assert s["cache_hit_rate"] > 0.3
