"""A tiny Llama package whose matrices (embedding, attention, FFN, lm_head) are GGUF blocks:
its logits equal transformers' on the dequantized weights, resident and streamed.

The package is exported in f32 and its matrices rewritten as blocks (quant_blocks.py:
gguf.quants.quantize, or random k-blocks of the same scale). The reference is the same
transformers model with those blocks dequantized by gguf.quants. Every linear rounds its input
to int8 blocks (about 0.5 % RMS per element), which over three layers and the lm_head puts the
logits' error (max |diff| / max |ref|) at 1.3-1.6 % for the 32-block types and up to 2.6 % for
the k-types here (one int8 scale per 256); the test allows 3e-2 and 6e-2. Streamed and resident
logits are identical (same kernels, same bytes).
"""

import json
import os
import shutil
import zlib

import numpy as np
import pytest
import tierlm
from models import hf_logits, hf_name, package, prompt, relative_error
from quant_blocks import QTYPES, dequantize, quantized

torch = pytest.importorskip("torch")

# Dimensions whole in every block size: hidden 256, FFN 512, 4 heads of 64 (2 KV heads).
SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
TOLERANCE = {"q8_0": 3e-2, "q4_0": 3e-2, "q4_1": 3e-2, "q5_0": 3e-2, "q5_1": 3e-2}


def quantize_package(pkg, dtype, rng):
    """Rewrites every matrix of pkg as dtype blocks, in one new weight file; returns
    {hf parameter name: dequantized f32 values}."""
    manifest_path = os.path.join(pkg, "manifest.json")
    manifest = json.load(open(manifest_path))
    sources = {
        f["name"]: open(os.path.join(pkg, f["name"]), "rb").read() for f in manifest["files"]
    }
    out, dequantized = bytearray(), {}
    for name, t in manifest["tensors"].items():
        data = sources[t["file"]][t["offset"] : t["offset"] + t["nbytes"]]
        target = hf_name(name)
        if target is not None:
            w = np.frombuffer(data, np.float32).reshape(t["shape"])
            blocks = quantized(dtype, w, rng)
            dequantized[target] = dequantize(blocks, dtype)
            data = blocks.tobytes()
            t["dtype"] = dtype
        out += bytes(-len(out) % 4096)
        t.update(file="weights-q.bin", offset=len(out), nbytes=len(data), crc32=zlib.crc32(data))
        out += data
    out += bytes(-len(out) % 4096)
    with open(os.path.join(pkg, "weights-q.bin"), "wb") as f:
        f.write(out)
    for name in sources:
        os.remove(os.path.join(pkg, name))
    manifest["files"] = [{"name": "weights-q.bin", "size": len(out)}]
    manifest["dtype"] = dtype
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    return dequantized


@pytest.fixture(scope="module")
def f32_package(tmp_path_factory):
    return package("llama", tmp_path_factory.mktemp("quant"), **SHAPE)


@pytest.mark.parametrize("dtype", list(QTYPES))
def test_quantized_logits_match_dequantized_reference(f32_package, dtype, tmp_path):
    model, src = f32_package
    pkg = str(tmp_path / dtype)
    shutil.copytree(src, pkg)
    weights = quantize_package(pkg, dtype, np.random.default_rng(1))
    state = model.state_dict()
    with torch.no_grad():
        reference = type(model)(model.config).eval()
        reference.load_state_dict(
            {k: torch.from_numpy(weights[k]) if k in weights else v for k, v in state.items()}
        )
    ids = prompt(9)
    expected = hf_logits(reference, ids)[-1]
    resident = tierlm.load(pkg, verify=True)
    got = resident.logits(ids)
    assert relative_error(got, expected) <= TOLERANCE.get(dtype, 6e-2), dtype
    # Streamed: a budget below the weights; the same bytes through the ring.
    s = resident.stats()
    budget = s["kv_bytes"] + s["arena_bytes"] + s["weight_bytes"] // 2
    streamed = tierlm.load(pkg, budget={"host": budget})
    assert streamed.placement()["streaming"]
    np.testing.assert_array_equal(streamed.logits(ids), got)
    # The ring streams the blocks' bytes (4 KiB-aligned), not their f32 size.
    tensors = json.load(open(os.path.join(pkg, "manifest.json")))["tensors"]
    placement = streamed.placement()
    assert placement["streamed_tensors"]
    assert placement["streamed_bytes"] == sum(
        -(-tensors[name]["nbytes"] // 4096) * 4096 for name in placement["streamed_tensors"]
    )
