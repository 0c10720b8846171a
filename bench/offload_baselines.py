"""What people use today to run a model larger than memory, for bench_offload.py.

- HF accelerate disk offload: device_map + max_memory + offload_folder.
- Per-layer streaming without overlap (AirLLM's method): read one layer's weights from
  safetensors, compute, free, next layer.
Both read through the page cache (and accelerate keeps files memory-mapped), so before every
decode step the weight files are unmapped from the page tables and dropped from the page
cache (drop_page_cache), and their residency is checked with mincore.
"""

import contextlib
import ctypes
import json
import mmap
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MADV_DONTNEED = 4
_MADV_PAGEOUT = 21  # Linux 5.4+
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _mappings(paths):
    """(start, end, perms) of this process's mappings of the given files (/proc/self/maps)."""
    real = {os.path.realpath(p) for p in paths}
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].rstrip("\n") in real:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end, parts[1]))
    return out


def drop_page_cache(paths):
    """Makes the next read of every file go to the disk, even where the process keeps it
    memory-mapped (accelerate's offload .dat files, safetensors): the file's mappings are
    unmapped from the page tables (madvise PAGEOUT, then DONTNEED where no private copy can
    be lost), dirty pages written back, and the page cache dropped (posix_fadvise DONTNEED).
    Returns the files' page-cache residency afterwards (fraction, 0..1)."""
    for start, end, perms in _mappings(paths):
        _libc.madvise(start, end - start, _MADV_PAGEOUT)
        if "w" not in perms or "s" in perms:  # a private writable page may hold a copy
            _libc.madvise(start, end - start, _MADV_DONTNEED)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return residency(paths)


def residency(paths):
    """Fraction of the files' pages in the page cache (mincore on a fresh read-only mapping,
    which reports the page cache as root or as the file's owner)."""
    resident = total = 0
    for path in paths:
        size = os.path.getsize(path)
        if size == 0:
            continue
        pages = -(-size // _PAGE)
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            try:
                vec = (ctypes.c_ubyte * pages)()
                if _libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
                resident += sum(b & 1 for b in bytes(vec))
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += pages
    return resident / total if total else 0.0


def process_read_bytes():
    """Bytes this process made the block layer read (page cache hits excluded)."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def make_random_llama(
    out_dir, hidden, layers, intermediate, heads, kv_heads, vocab, seed=0, norm_spread=0.0
):
    """Writes a random bf16 Llama checkpoint (config + sharded safetensors), one layer at a
    time so memory stays small. Returns the weight bytes. norm_spread: the RMSNorm weights
    are exp(norm_spread * N(0, 1)) per channel (0: all ones), as trained models' vary."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        return sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def rand(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    def norm(n):
        return torch.exp(norm_spread * torch.randn(n, generator=generator)).to(torch.bfloat16)

    weight_map, total = {}, 0
    shards = [
        ("embed", {"model.embed_tokens.weight": rand(vocab, hidden)}),
        (
            "head",
            {
                "lm_head.weight": rand(vocab, hidden),
                "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
            },
        ),
    ]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append(
            (
                f"layer{i}",
                {
                    p + "self_attn.q_proj.weight": rand(heads * head_dim, hidden),
                    p + "self_attn.k_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.v_proj.weight": rand(kv_heads * head_dim, hidden),
                    p + "self_attn.o_proj.weight": rand(hidden, heads * head_dim),
                    p + "mlp.gate_proj.weight": rand(intermediate, hidden),
                    p + "mlp.up_proj.weight": rand(intermediate, hidden),
                    p + "mlp.down_proj.weight": rand(hidden, intermediate),
                    p + "input_layernorm.weight": norm(hidden),
                    p + "post_attention_layernorm.weight": norm(hidden),
                },
            )
        )
    for name, tensors in shards:
        file = f"model-{name}.safetensors"
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = file
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


class _DropCacheStreamer:
    """A transformers streamer that drops the page cache after each token (not timed)."""

    def __init__(self, paths):
        self.paths = paths
        self.stamps = []
        self.tokens = []  # the new tokens (the first put is the prompt)
        self.untimed = 0.0

    def put(self, value):
        if self.stamps:
            self.tokens.extend(int(t) for t in value.reshape(-1))
        start = time.perf_counter()
        cached = drop_page_cache(self.paths)
        self.untimed += time.perf_counter() - start
        self.stamps.append((time.perf_counter(), self.untimed, process_read_bytes(), cached))

    def end(self):
        pass


def decode_steps(stamps):
    """(seconds, disk bytes, page-cache residency of the weight files when the step began) of
    each decode step from stamps (time, untimed so far, read bytes, residency); the first
    stamp ends the prompt."""
    steps = []
    for (t0, u0, b0, c0), (t1, u1, b1, _c1) in zip(stamps, stamps[1:], strict=False):
        steps.append(((t1 - t0) - (u1 - u0), b1 - b0, c0))
    return steps


def _keep_in_ram(model):
    """Copies the parameters accelerate placed on the CPU into anonymous memory, so dropping
    the weight files' page cache only evicts what it offloaded (its CPU budget is RAM; mapped
    safetensors pages would otherwise be re-read each step and count against it)."""
    with torch.no_grad():
        for module in model.modules():
            tensors = list(module._parameters.values()) + list(module._buffers.values())
            for tensor in tensors:
                if tensor is not None and tensor.device.type == "cpu":
                    tensor.data = tensor.data.clone()


def accelerate_decode(model_dir, budget_bytes, offload_dir, prompt_ids, new_tokens, files):
    """Decode steps (seconds, bytes read), the offload files and the greedy tokens of
    accelerate's disk offload at a CPU budget."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        device_map="auto",
        max_memory={"cpu": budget_bytes},
        offload_folder=str(offload_dir),
        dtype=torch.bfloat16,
    )
    _keep_in_ram(model)
    offloaded = [str(p) for p in Path(offload_dir).rglob("*") if p.is_file()]
    streamer = _DropCacheStreamer(list(files) + offloaded)
    drop_page_cache(streamer.paths)
    with torch.inference_mode():
        model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=streamer,
        )
    del model
    return decode_steps(streamer.stamps[1:]), offloaded, streamer.tokens


def layer_streaming_decode(model_dir, prompt_ids, new_tokens, files):
    """Decode steps and greedy tokens of per-layer streaming: each layer's weights are read
    from safetensors right before it runs and freed after, no overlap (AirLLM's method)."""
    from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    index = json.loads((Path(model_dir) / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]

    def load(prefix):
        tensors = {}
        for key, file in weight_map.items():
            if key.startswith(prefix):
                with safe_open(str(Path(model_dir) / file), "pt") as f:
                    tensors[key[len(prefix) :]] = f.get_tensor(key)
        return tensors

    @contextlib.contextmanager
    def loaded(module, prefix):
        module.load_state_dict(load(prefix), assign=True, strict=False)
        try:
            yield module
        finally:
            module.to_empty(device="meta")

    inner = model.model
    rotary = inner.rotary_emb.__class__(config=config)
    cache = DynamicCache(config=config)
    ids = torch.tensor([prompt_ids])
    stamps, tokens = [], []
    with torch.inference_mode():
        position = 0
        for _step in range(new_tokens + 1):
            positions = torch.arange(position, position + ids.shape[1])[None]
            with loaded(inner.embed_tokens, "model.embed_tokens."):
                h = inner.embed_tokens(ids)
            embeddings = rotary(h, positions)
            mask = None
            if ids.shape[1] > 1:
                n = ids.shape[1]
                mask = torch.full((n, n), float("-inf")).triu(1)[None, None].to(h.dtype)
            for i, layer in enumerate(inner.layers):
                with loaded(layer, f"model.layers.{i}."):
                    h = layer(
                        h,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        position_embeddings=embeddings,
                        use_cache=True,
                    )
                h = h[0] if isinstance(h, tuple) else h
            with loaded(inner.norm, "model.norm."):
                h = inner.norm(h)
            with loaded(model.lm_head, "lm_head."):
                logits = model.lm_head(h[:, -1])
            tokens.append(int(logits.argmax(-1)))
            position += ids.shape[1]
            ids = torch.tensor([[tokens[-1]]])
            start = time.perf_counter()
            cached = drop_page_cache(files)
            untimed = time.perf_counter() - start
            stamps.append((time.perf_counter(), untimed, process_read_bytes(), cached))
    cumulative, total = [], 0.0
    for t, u, b, c in stamps:
        total += u
        cumulative.append((t, total, b, c))
    return decode_steps(cumulative), tokens


def median(values):
    return float(np.median(values)) if values else float("nan")
