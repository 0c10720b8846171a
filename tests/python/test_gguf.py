"""GGUF import (tierlm.gguf): synthetic llama/qwen2 GGUF files written like llama.cpp's
converter, in every type tierlm stores, checked byte for byte against the file and in logits
against transformers' own GGUF loader (which dequantizes); refusals name file and tensor;
the rebuilt tokenizer against the tokenizer the vocabulary came from."""

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import models  # noqa: E402
import tierlm  # noqa: E402
from gguf_files import gguf_arrays, permute, rewrite_gguf, write_gguf  # noqa: E402
from tierlm.package import Package  # noqa: E402
from tierlm.reference import reference_logits  # noqa: E402

# hidden and FFN widths that are whole k-blocks (256), so every type applies to every matrix
SHAPE = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "F16"]


def tiny(arch="llama", **kw):
    return models.hf_model(arch, **{**SHAPE, **kw})


def hf_from_gguf(path):
    """transformers' GGUF loader: config, dequantized weights, Q/K order undone."""
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype="float32"
    )
    return model.eval()


@pytest.mark.parametrize(
    "arch,kind", [("llama", t) for t in TYPES] + [("qwen2", "Q8_0"), ("qwen2", "Q4_K")]
)
def test_import_equals_transformers(tmp_path, arch, kind):
    model = tiny(arch)
    path = write_gguf(
        model, tmp_path / "m.gguf", kind, arch="llama" if arch == "llama" else "qwen2"
    )
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    pkg.verify()
    reader = gguf.GGUFReader(path)
    expected = kind.lower() if kind != "F16" else "f16"
    matrices = {n: t for n, t in pkg.tensors.items() if len(t["shape"]) == 2}
    assert {t["dtype"] for t in matrices.values()} == {expected}
    assert pkg.manifest["dtype"] == expected and pkg.config["tie_embeddings"] is False
    # bytes are the file's, Q and K rows moved back whole
    heads, kv = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"]
    for t in reader.tensors:
        name = {"token_embd.weight": "embed.weight", "output.weight": "lm_head.weight"}.get(t.name)
        if name is None:
            continue
        np.testing.assert_array_equal(np.asarray(pkg.tensor(name)).reshape(-1), t.data.reshape(-1))
    q = next(t for t in reader.tensors if t.name == "blk.1.attn_q.weight")
    k = next(t for t in reader.tensors if t.name == "blk.1.attn_k.weight")
    if arch == "llama":  # the file holds permute(hf); permuting the package's rows gives it back
        np.testing.assert_array_equal(
            permute(np.asarray(pkg.tensor("layers.1.attn.q.weight")), heads), q.data
        )
        np.testing.assert_array_equal(
            permute(np.asarray(pkg.tensor("layers.1.attn.k.weight")), kv), k.data
        )
    else:
        np.testing.assert_array_equal(np.asarray(pkg.tensor("layers.1.attn.q.weight")), q.data)
    ref = hf_from_gguf(path)
    ids = models.prompt(9)
    error = models.relative_error(reference_logits(pkg, ids), models.hf_logits(ref, ids))
    assert error < 1e-4, error


def save_dequantized(model, hf_dir):
    """A GGUF-loaded transformers model as an f32 safetensors checkpoint (save_pretrained
    refuses a model that came from a GGUF file)."""
    from safetensors.torch import save_file

    os.makedirs(hf_dir)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (hf_dir / "config.json").write_text(json.dumps(config))
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1", "Q4_K", "Q6_K"])
def test_gguf_package_equals_dequantized_safetensors_package(tmp_path, kind):
    """The same weights two ways: the GGUF imported as it is (blocks copied) and transformers'
    dequantized load of it saved as f32 safetensors and exported. Every matrix the GGUF package
    dequantizes equals the safetensors package's bit for bit, their logits agree at f32, the
    native executor on the f32 package matches them at f32, and the native quantized kernels
    (activations rounded to int8 blocks, as llama.cpp's are) stay within test_model_quant's
    bounds of them (3% for the 32-blocks, 6% for the k-types)."""
    path = write_gguf(tiny(), tmp_path / "m.gguf", kind)
    hf_dir = tmp_path / "hf"
    save_dequantized(hf_from_gguf(path), hf_dir)
    quantized = Package.open(tierlm.export(path, tmp_path / "q", progress=False))
    dense = Package.open(tierlm.export(hf_dir, tmp_path / "f32", dtype="f32", progress=False))
    assert set(quantized.tensors) == set(dense.tensors)
    for name, t in quantized.tensors.items():
        assert t["dtype"] == (kind.lower() if len(t["shape"]) == 2 else "f32"), name
        np.testing.assert_array_equal(quantized.array(name), dense.array(name), err_msg=name)
    ids = models.prompt(13)
    expected = reference_logits(dense, ids)
    assert models.relative_error(reference_logits(quantized, ids), expected) < 1e-6
    native_dense = tierlm.load(dense.path, kv_dtype="f32").logits(ids)
    assert models.relative_error(native_dense, expected[-1]) < 1e-5
    native_quantized = tierlm.load(quantized.path, kv_dtype="f32").logits(ids)
    bound = 6e-2 if kind.endswith("_K") else 3e-2
    assert models.relative_error(native_quantized, expected[-1]) < bound


def test_tied_and_config(tmp_path):
    model = tiny(tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=333)
    path = write_gguf(model, tmp_path / "m.gguf", "Q8_0")
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    c = pkg.config
    assert c["tie_embeddings"] and "lm_head.weight" not in pkg.tensors
    assert (c["num_layers"], c["hidden_size"], c["num_heads"], c["num_kv_heads"]) == (3, 256, 4, 2)
    assert c["max_positions"] == 333 and c["norm_eps"] == pytest.approx(1e-6)
    assert c["bos_token_id"] == 1 and c["eos_token_ids"] == [2]
    assert pkg.manifest["source"]["gguf"] == "m.gguf"
    ids = models.prompt(5)
    error = models.relative_error(
        reference_logits(pkg, ids), models.hf_logits(hf_from_gguf(path), ids)
    )
    assert error < 1e-4, error


def test_truncated_file_names_the_tensor(tmp_path):
    path = write_gguf(tiny(), tmp_path / "m.gguf", "Q4_0", truncate=1000)
    last = gguf_arrays(tiny(), "llama")[-1][0]
    with pytest.raises(tierlm.CorruptError, match=rf"m\.gguf: tensor {last} .*truncated"):
        tierlm.export(path, tmp_path / "pkg", progress=False)
    (tmp_path / "cut.gguf").write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(tierlm.CorruptError, match=r"cut\.gguf: not a readable GGUF file"):
        tierlm.export(tmp_path / "cut.gguf", tmp_path / "pkg", progress=False)
    assert not (tmp_path / "pkg").exists()


def test_unsupported_type_names_tensor_and_types(tmp_path):
    name = "blk.2.ffn_down.weight"
    raw = np.zeros((SHAPE["hidden_size"], SHAPE["intermediate_size"] // 256 * 84), np.uint8)
    path = write_gguf(tiny(), tmp_path / "m.gguf", "Q4_0")
    q2 = rewrite_gguf(path, tmp_path / "q2.gguf", tensors={name: (raw, "Q2_K")})
    with pytest.raises(tierlm.UnsupportedError, match=rf"tensor {name} is Q2_K.*Q8_0.*Q6_K"):
        tierlm.export(q2, tmp_path / "pkg", progress=False)


def test_inconsistent_vocabulary(tmp_path):
    path = write_gguf(tiny(), tmp_path / "m.gguf", "Q8_0")
    bad = rewrite_gguf(
        path,
        tmp_path / "bad.gguf",
        drop=("tokenizer.ggml.token_type",),
        add=lambda w: w.add_token_types([1] * 10),
    )
    with pytest.raises(tierlm.CorruptError, match=r"bad\.gguf: tokenizer.ggml.token_type has 10"):
        tierlm.export(bad, tmp_path / "pkg", progress=False)


def test_refusals(tmp_path):
    path = write_gguf(tiny(), tmp_path / "m.gguf", "Q8_0")
    with pytest.raises(tierlm.InvalidArgumentError, match="never re-quantized; --dtype"):
        tierlm.export(path, tmp_path / "pkg", dtype="q4_0", progress=False)
    with pytest.raises(tierlm.InvalidArgumentError, match="--recipe does not apply"):
        tierlm.export(path, tmp_path / "pkg", recipe="m", progress=False)
    other = write_gguf(tiny(), tmp_path / "g.gguf", "Q8_0", arch="gemma")
    with pytest.raises(tierlm.UnsupportedError, match="architecture 'gemma' is not supported"):
        tierlm.export(other, tmp_path / "pkg", progress=False)


def test_sparse_bundles_of_a_gguf(tmp_path):
    """--sparse from GGUF files. Q8_0: the bundles are q8_0, up and gate rows the file's own
    bytes, down's columns its values quantized again as rows of down^T (each element within
    half a step d = max|block| / 127, plus 127 d 2^-11 for d rounded to f16: 0.57 d). Q4_0:
    down was rounded at 4 bits already, so the bundles are q8_0 (package.py), all parts
    within that bound of the file's values."""
    from tierlm.sparse.bundle import from_dtype

    for qtype in ("Q8_0", "Q4_0"):
        path = write_gguf(tiny(), tmp_path / f"{qtype}.gguf", qtype)
        pkg = Package.open(tierlm.export(path, tmp_path / qtype, sparse=True, progress=False))
        lay = pkg.manifest["bundles"]["layers"][1]
        dim, n = lay["dim"], lay["n_neurons"]
        part = dim // 32 * 34
        assert lay["dtype"] == "q8_0" and lay["row_bytes"] == 3 * part
        raw = np.fromfile(os.path.join(pkg.path, lay["file"]), np.uint8)[: n * lay["row_bytes"]]
        rows = raw.reshape(n, -1)
        if qtype == "Q8_0":
            np.testing.assert_array_equal(rows[:, :part], pkg.tensor("layers.1.ffn.up.weight"))
        got = from_dtype(rows, "q8_0")
        want = [pkg.array(f"layers.1.ffn.{m}.weight") for m in ("up", "gate")]
        want = np.concatenate([*want, pkg.array("layers.1.ffn.down.weight").T], axis=1)
        step = np.abs(want.reshape(n, -1, 32)).max(axis=2, keepdims=True) / 127
        assert np.all(np.abs(got - want).reshape(n, -1, 32) <= 0.57 * step + 1e-9), qtype


def _llama31_rope_freqs(config):
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf.py (LlamaModel) writes a llama3
    rope scaling: one divisor per rotary frequency."""
    import math

    p = config.rope_parameters
    base, dim = p["rope_theta"], config.hidden_size // config.num_attention_heads
    low_wavelen = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_wavelen = p["original_max_position_embeddings"] / p["high_freq_factor"]
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / p["factor"] + smooth))
    return np.asarray(factors, np.float32)


def test_rope_freqs_import_as_llama31_scaling(tmp_path):
    """A Llama 3.1-style GGUF holds its llama3 rope scaling only as rope_freqs.weight. Its
    import equals transformers' llama3 rope on the same weights (1e-4 of the logit range, the
    f32 parity bound of these tests) at 80 positions, past the 64 of
    original_max_position_embeddings where the scaling acts; without the tensor it does not."""
    model = tiny("llama3", num_attention_heads=4, num_key_value_heads=2)
    plain = write_gguf(model, tmp_path / "plain.gguf", "F32")
    factors = _llama31_rope_freqs(model.config)
    assert len(set(factors.tolist())) > 2  # low, high and smoothed frequencies all occur
    path = rewrite_gguf(
        plain, tmp_path / "m.gguf", add=lambda w: w.add_tensor("rope_freqs.weight", factors)
    )
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    assert pkg.config["rope_scaling"]["rope_type"] == "factors"
    assert "rope_freqs.weight" not in pkg.tensors
    ids = models.prompt(80)
    want = models.hf_logits(model, ids)
    assert models.relative_error(reference_logits(pkg, ids), want) < 1e-4
    assert models.relative_error(tierlm.load(pkg.path, kv_dtype="f32").logits(ids), want[-1]) < 1e-4
    unscaled = Package.open(tierlm.export(plain, tmp_path / "plain-pkg", progress=False))
    assert models.relative_error(reference_logits(unscaled, ids), want) > 1e-2
    bad = rewrite_gguf(
        plain, tmp_path / "bad.gguf", add=lambda w: w.add_tensor("rope_freqs.weight", factors[:5])
    )
    with pytest.raises(tierlm.UnsupportedError, match=r"rope_freqs.weight is F32 of 5 values"):
        tierlm.export(bad, tmp_path / "bad-pkg", progress=False)


def _gpt2_vocab(tok):
    """A byte-level tokenizers.Tokenizer as GGUF's gpt2 vocabulary (tokens, merges, types)."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    special = {a["content"] for a in data["added_tokens"] if a["special"]}
    kinds = [3 if t in special else 1 for t in tokens]
    return tokens, merges, kinds


TEXTS = [
    "the quick brown fox",
    "def f(x):\n\treturn x**2  # square\n\n",
    "naïve café 日本語 🤖",
    "   runs   of    spaces   ",
    "numbers 12345 and 3.14159",
    "<s>special</s> tokens<pad>",
    "",
]


def test_gpt2_vocabulary_gives_the_same_ids(tmp_path):
    from tokenizers import Tokenizer

    models.hf_checkpoint("llama", tmp_path / "tok", tokenizer=True)  # its tokenizer files
    original = Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    tokens, merges, kinds = _gpt2_vocab(original)
    model = tiny(vocab_size=len(tokens))
    path = write_gguf(model, tmp_path / "m.gguf", "Q8_0", vocab=(tokens, merges, kinds, "gpt-2"))
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    ours = Tokenizer.from_file(os.path.join(pkg.tokenizer_dir(), "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text).ids == original.encode(text).ids, text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    config = json.load(open(os.path.join(pkg.tokenizer_dir(), "tokenizer_config.json")))
    assert (config["bos_token"], config["eos_token"]) == ("<s>", "</s>")
    assert config["chat_template"].startswith("{% for m in messages %}")


def test_llama_vocabulary_against_transformers(tmp_path):
    """SentencePiece-style vocabulary: transformers' GGUF conversion is the reference (it
    prefixes "▁" only to the text's start, llama.cpp also after special tokens: texts here
    have no special tokens inside)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tmodels

    sp = Tokenizer(tmodels.BPE(unk_token="<unk>", byte_fallback=True))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "tiered memory for language models"]
    sp.train_from_iterator(corpus * 8 + TEXTS, trainer)
    sp.decoder = decoders.Metaspace()
    data = json.loads(sp.to_str())
    vocab = data["model"]["vocab"]
    pieces = sorted(vocab, key=vocab.get)
    tokens = pieces[:3] + [f"<0x{i:02X}>" for i in range(256)] + pieces[3:]
    kinds = [2, 3, 3] + [6] * 256 + [1] * (len(pieces) - 3)
    path = write_gguf(tiny(vocab_size=len(tokens)), tmp_path / "m.gguf", "Q8_0")
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces) - 3)]

    def vocabulary(w):
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(kinds)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)

    rewrite_gguf(path, tmp_path / "sp.gguf", drop=("tokenizer.ggml.",), add=vocabulary)
    pkg = Package.open(tierlm.export(tmp_path / "sp.gguf", tmp_path / "pkg", progress=False))
    ours = Tokenizer.from_file(os.path.join(pkg.tokenizer_dir(), "tokenizer.json"))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="sp.gguf")
    for text in TEXTS[:5] + ["ünïcödé ≠ ascii", "x"]:
        assert ours.encode(text).ids == ref(text)["input_ids"], text
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=True) == ref.decode(
            ref(text)["input_ids"], skip_special_tokens=True
        )


def test_bench_converter_reads_rope_parameters(tmp_path):
    """bench/_llamacpp.py's HF -> GGUF converter takes rope_theta from transformers 5's
    rope_parameters (it used the top-level key only and wrote 10000); its file imports back to
    the checkpoint's logits."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "_llamacpp", os.path.join(here, "..", "..", "bench", "_llamacpp.py")
    )
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    model, hf_dir = models.hf_checkpoint(
        "llama", tmp_path / "hf", rope_parameters={"rope_type": "default", "rope_theta": 123456.0}
    )
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    assert "rope_theta" not in config and config["rope_parameters"]["rope_theta"] == 123456.0
    path = converter.convert(hf_dir, str(tmp_path / "m.gguf"), "f32")
    reader = gguf.GGUFReader(path)
    assert reader.fields["llama.rope.freq_base"].contents() == 123456.0
    pkg = Package.open(tierlm.export(path, tmp_path / "pkg", progress=False))
    assert pkg.config["rope_theta"] == 123456.0
    ids = models.prompt(6)
    assert models.relative_error(reference_logits(pkg, ids), models.hf_logits(model, ids)) < 1e-4
