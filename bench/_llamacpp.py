"""llama.cpp as a bench baseline: a small HF Llama safetensors -> GGUF converter (gguf package)
and greedy decode timing through llama-cpp-python. Both are bench-only dependencies:

    pip install llama-cpp-python gguf

The converter follows llama.cpp's convert_hf_to_gguf.py for LlamaForCausalLM: the same tensor
names, Q and K rows permuted from HF's rotate-half rotary layout to llama.cpp's interleaved
pairs, 1-D tensors (norms) kept in f32, matrices in the requested dtype. The vocabulary is a
placeholder (SentencePiece-style: <unk> <s> </s>, 256 byte tokens, then dummies): the bench
feeds token ids, never text.
"""

import contextlib
import json
import os
import sys
import time

import numpy as np


def missing():
    """None when llama-cpp-python and gguf import, else the reason they do not."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a llama.cpp shared library that fails to load
        return f"{type(e).__name__}: {e} (pip install llama-cpp-python gguf)"
    return None


def permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py's LlamaModel.permute: within each head, rows [x0..x(d/2-1),
    y0..y(d/2-1)] (HF rotate-half) become [x0, y0, x1, y1, ...] (llama.cpp rope pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name):
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"] or ".".join(parts[3:]) not in _LAYER_NAMES:
        raise ValueError(f"tensor {hf_name!r} has no GGUF name in the Llama layout")
    return f"blk.{int(parts[2])}.{_LAYER_NAMES['.'.join(parts[3:])]}"


def convert(hf_dir, out_path, dtype):
    """Writes hf_dir's LlamaForCausalLM (config.json + *.safetensors) as a GGUF file with
    matrices in dtype ("f32", "f16", "bf16"); tensors stream one at a time to the file."""
    import gguf
    import torch
    from safetensors import safe_open
    from tierlm.rope import rope_parameters

    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    if cfg.get("architectures", ["LlamaForCausalLM"])[0] != "LlamaForCausalLM":
        raise ValueError(f"{hf_dir}: only LlamaForCausalLM converts, not {cfg['architectures']}")
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    vocab = cfg["vocab_size"]
    # transformers 5 writes rope_theta under rope_parameters, 4.x at the top of config.json:
    # tierlm's exporter reads both the same way, so the two engines run the same frequencies
    rope_type, rope_theta, _ = rope_parameters(cfg)
    if rope_type != "default":
        raise ValueError(f"{hf_dir}: rope scaling {rope_type!r} is not converted")

    files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
    handles = [safe_open(os.path.join(hf_dir, f), framework="pt") for f in files]
    where = {name: h for h in handles for name in h.keys()}

    types = {
        "f32": (torch.float32, gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (torch.float16, gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (torch.bfloat16, gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    }
    torch_dtype, ggml_type, file_type = types[dtype]

    def array(name):
        t = where[name].get_tensor(name)
        if name.endswith("q_proj.weight"):
            t = permute(t, n_head, n_head)
        elif name.endswith("k_proj.weight"):
            t = permute(t, n_head, n_kv)
        if t.dim() == 1:
            return t.float().numpy(), gguf.GGMLQuantizationType.F32
        t = t.to(torch_dtype).contiguous()
        if dtype == "bf16":  # numpy has no bfloat16: raw bit patterns
            return t.view(torch.int16).numpy().view(np.uint16), ggml_type
        return t.numpy(), ggml_type

    tmp = out_path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("tierlm bench random llama")
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_vocab_size(vocab)
    w.add_file_type(file_type)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"tok{i}".encode() for i in range(len(tokens), vocab)]
    kinds = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    kinds += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (vocab - 259)
    tokens, kinds = tokens[:vocab], kinds[:vocab]  # one entry per embedding row, even below 259
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(kinds)
    w.add_unk_token_id(0)
    w.add_bos_token_id(cfg.get("bos_token_id", 1) or 1)
    w.add_eos_token_id(cfg.get("eos_token_id", 2) or 2)
    w.add_add_bos_token(False)

    names = [n for n in where if not n.endswith("rotary_emb.inv_freq")]
    order = sorted(names, key=lambda n: (not n.startswith("model.embed"), gguf_name(n)))
    item = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[dtype]
    for name in order:  # shapes first (header), data after, one tensor in memory at a time
        shape = tuple(where[name].get_slice(name).get_shape())
        a_dtype, t = (
            (np.float32, gguf.GGMLQuantizationType.F32) if len(shape) == 1 else (item, ggml_type)
        )
        nbytes = int(np.prod(shape)) * np.dtype(a_dtype).itemsize
        w.add_tensor_info(gguf_name(name), shape, np.dtype(a_dtype), nbytes, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name in order:
        w.write_tensor_data(array(name)[0])
    w.close()
    os.replace(tmp, out_path)
    return out_path


# llama.cpp's quantizer recipes by the names the benches use (llama_model_quantize ftypes)
QUANTIZE_RECIPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1", "q4_k_m": "Q4_K_M"}


def quantize(src_gguf, out_path, recipe, threads):
    """llama.cpp's own quantizer (llama_model_quantize, as the llama-quantize tool runs it) on
    src_gguf (f16/bf16/f32) with a recipe of QUANTIZE_RECIPES; writes out_path."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{QUANTIZE_RECIPES[recipe]}")
    params.nthread = threads
    tmp = out_path + ".tmp"
    with suppress_stdout_stderr(disable=False):  # its per-tensor log, a line per tensor
        status = llama_cpp.llama_model_quantize(src_gguf.encode(), tmp.encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize {src_gguf} -> {recipe} failed ({status})")
    os.replace(tmp, out_path)
    return out_path


@contextlib.contextmanager
def _model_defaults(**fields):
    """llama-cpp-python's Llama() takes its model parameters from llama_model_default_params()
    and exposes no switch for some fields (use_extra_bufts): set them there while it loads."""
    import llama_cpp.llama as module

    default = module.llama_cpp.llama_model_default_params

    def patched():
        params = default()
        for key, value in fields.items():
            setattr(params, key, value)
        return params

    module.llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        module.llama_cpp.llama_model_default_params = default


_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import _llamacpp
_llamacpp.LlamaCpp(sys.argv[2], 1, n_ctx=32).logits([3, 4])
"""


def repack_works(gguf_path):
    """None when llama.cpp runs gguf_path with its repacked CPU buffers (the default), else why
    not: some llama-cpp-python builds crash in decode on quantized weights repacked at load
    (signal 11 on this machine's 0.3.36 build), so the probe runs in a child process."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, here, gguf_path], capture_output=True, check=False
    )
    if run.returncode == 0:
        return None
    how = f"signal {-run.returncode}" if run.returncode < 0 else f"exit {run.returncode}"
    return f"llama.cpp with repacked CPU buffers fails on {os.path.basename(gguf_path)} ({how})"


class LlamaCpp:
    """A GGUF model in llama.cpp; greedy decode on token ids.

    repack=False keeps every weight in the mapped file: llama.cpp otherwise copies the block
    types it has interleaved kernels for (Q4_0, Q4_K on AVX2) into its own memory at load,
    which would hold a mapped model's weights in RAM whatever the budget."""

    def __init__(self, gguf_path, threads, n_ctx=256, use_mmap=True, repack=True):
        import llama_cpp

        with _model_defaults(**({} if repack else {"use_extra_bufts": False})):
            self.llm = llama_cpp.Llama(
                model_path=gguf_path,
                n_threads=threads,
                n_threads_batch=threads,
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                logits_all=False,
                use_mmap=use_mmap,
                verbose=False,
            )

    def _last(self):
        """The last evaluated position's logits, a view of llama.cpp's buffer (Llama.scores
        stays empty without logits_all)."""
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))

    def logits(self, prompt):
        """Last-position logits of prompt (float32), from an empty cache."""
        self.llm.reset()  # n_tokens = 0 only: the KV cache must be cleared too
        self.llm._ctx.kv_cache_clear()
        self.llm.eval(list(prompt))
        return np.array(self._last(), dtype=np.float32)

    def greedy(self, prompt, n, logits=None):
        """Greedy tokens after prompt and the decode seconds (single-token evals of tokens 2..n,
        prompt eval and the first token's argmax excluded); a list given as logits receives a
        copy of each step's logits (the step that chose each token)."""
        first = self.logits(prompt)
        out = [int(np.argmax(first))]
        if logits is not None:
            logits.append(first)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            self.llm.eval([out[-1]])
            out.append(int(np.argmax(self._last())))
            if logits is not None:
                logits.append(np.array(self._last(), dtype=np.float32))
        return out, time.perf_counter() - t0

    def prefill_seconds(self, prompt):
        """Seconds of one evaluation of prompt from an empty cache (batches of n_batch)."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        t0 = time.perf_counter()
        self.llm.eval(list(prompt))
        return time.perf_counter() - t0


def mmap_decode(gguf, threads, prompt, n):
    """Decode steps (seconds, disk bytes, residency) and n greedy tokens of llama.cpp reading
    gguf through its mmap (repack off: every weight stays in the mapped file), the file's pages
    evicted before every step (not timed)."""
    import offload_baselines as ob  # beside this file, on the benches' path

    llm = LlamaCpp(gguf, threads, n_ctx=len(prompt) + n + 2, repack=False)
    llm.logits(prompt[:2])  # load-time page faults out of the way
    ob.drop_page_cache([gguf])
    stamps, untimed, ids = [], 0.0, []

    def stamp():
        nonlocal untimed
        start = time.perf_counter()
        cached = ob.drop_page_cache([gguf])
        untimed += time.perf_counter() - start
        stamps.append((time.perf_counter(), untimed, ob.process_read_bytes(), cached))

    ids.append(int(llm.logits(prompt).argmax()))
    stamp()
    while len(ids) < n:
        llm.llm.eval([ids[-1]])
        ids.append(int(llm._last().argmax()))
        stamp()
    del llm
    return ob.decode_steps(stamps), ids


def require_same_as_tierlm(what, model, llm, prompt, n, min_top1=0.9, max_error=0.05):
    """tierlm's model fed llama.cpp's (LlamaCpp llm) n greedy tokens after prompt: its top-1
    must be llama.cpp's token at min_top1 of the steps and its logits within max_error
    (relative L2) at every step, else the bench exits (_common.require_agreement). Returns
    llama.cpp's tokens."""
    from _common import require_teacher_forced  # beside this file, on the benches' path

    theirs = []
    tokens, _ = llm.greedy(prompt, n, logits=theirs)
    ours = [model.logits(prompt)] + [model.logits([t], append=True) for t in tokens[:-1]]
    require_teacher_forced(what, ours, theirs, tokens, min_top1, max_error)
    return tokens
