"""What people use today to run a model larger than memory, for bench_offload.py.

- HF accelerate disk offload: device_map + max_memory + offload_folder.
- Per-layer streaming without overlap (AirLLM's method): read one layer's weights from
  safetensors, compute, free, next layer.
Both read through the page cache, so the caller drops it before every decode step.
"""

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def drop_page_cache(paths):
    """posix_fadvise(DONTNEED) on every file: the next read goes to the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def process_read_bytes():
    """Bytes this process made the block layer read (page cache hits excluded)."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def make_random_llama(out_dir, hidden, layers, intermediate, heads, kv_heads, vocab, seed=0):
    """Writes a random bf16 Llama checkpoint (config + sharded safetensors), one layer at a
    time so memory stays small. Returns the weight bytes."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        return sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def rand(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

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
                    p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                    p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
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
        self.untimed = 0.0

    def put(self, _value):
        start = time.perf_counter()
        drop_page_cache(self.paths)
        self.untimed += time.perf_counter() - start
        self.stamps.append((time.perf_counter(), self.untimed, process_read_bytes()))

    def end(self):
        pass


def _decode_steps(stamps):
    """Seconds and disk bytes of each decode step from streamer stamps (first = prompt)."""
    steps = []
    for (t0, u0, b0), (t1, u1, b1) in zip(stamps[1:], stamps[2:], strict=False):
        steps.append(((t1 - t0) - (u1 - u0), b1 - b0))
    return steps


def accelerate_decode(model_dir, budget_bytes, offload_dir, prompt_ids, new_tokens, files):
    """Decode steps (seconds, bytes read) of accelerate's disk offload at a CPU budget."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        device_map="auto",
        max_memory={"cpu": budget_bytes},
        offload_folder=str(offload_dir),
        dtype=torch.bfloat16,
    )
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
    return _decode_steps(streamer.stamps)


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
            drop_page_cache(files)
            untimed = time.perf_counter() - start
            stamps.append((time.perf_counter(), untimed, process_read_bytes()))
    cumulative, total = [], 0.0
    for t, u, b in stamps:
        total += u
        cumulative.append((t, total, b))
    return _decode_steps([cumulative[0]] + cumulative), tokens


def fio_read_bandwidth(path, block="1M", depth=32, seconds=5):
    """Random-read bandwidth (bytes/s) of fio with io_uring and O_DIRECT, or None."""
    import shutil
    import subprocess

    if shutil.which("fio") is None:
        return None
    out = subprocess.run(
        [
            "fio",
            "--name=bound",
            f"--filename={path}",
            "--rw=randread",
            f"--bs={block}",
            f"--iodepth={depth}",
            "--ioengine=io_uring",
            "--direct=1",
            "--time_based",
            f"--runtime={seconds}",
            "--output-format=json",
            "--readonly",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return None
    job = json.loads(out.stdout)["jobs"][0]["read"]
    return job["bw_bytes"]


def median(values):
    return float(np.median(values)) if values else float("nan")
