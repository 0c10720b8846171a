"""The Mixtral-shaped random model of bench_moe.py, made the way people get a Mixtral GGUF: an
F16 file (llama architecture with expert_count, experts stacked as ffn_{gate,up,down}_exps,
written one tensor at a time with the gguf package) quantized by llama.cpp's own quantizer
(_llamacpp.quantize, llama_model_quantize). Its routers are biased for a SYNTHETIC Zipf-like
skew: dimension 0 of every embedding row is 1.0, a constant the residual stream carries, and
router row e of layer l reads it with weight -zipf * ln(rank_l(e) + 1) / sqrt(hidden), ranks
permuted per layer, so expert e's logit is lowered by about that much on every token.
hf_from_gguf writes the same weights (dequantized) as a bf16 Hugging Face checkpoint for
accelerate.
"""

import json
import os
from pathlib import Path

import numpy as np


def write_random_mixtral(path, hidden, inter, layers, experts, heads, kv_heads, vocab, zipf):
    """Writes the F16 GGUF (1-D tensors and routers in F32). Matrices are N(0, 0.02) values
    taken from one random pool at random offsets, which keeps 4 GB of them cheap to make."""
    import gguf

    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 26, dtype=np.float32) * 0.02).astype(np.float16)
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    matrix = {
        "attn_q": (hidden, hidden),
        "attn_k": (kv, hidden),
        "attn_v": (kv, hidden),
        "attn_output": (hidden, hidden),
        "ffn_gate_exps": (experts, inter, hidden),
        "ffn_up_exps": (experts, inter, hidden),
        "ffn_down_exps": (experts, hidden, inter),
    }
    tensors = [("token_embd.weight", (vocab, hidden)), ("output_norm.weight", (hidden,))]
    tensors.append(("output.weight", (vocab, hidden)))
    for i in range(layers):
        tensors += [(f"blk.{i}.{norm}.weight", (hidden,)) for norm in ("attn_norm", "ffn_norm")]
        tensors += [(f"blk.{i}.{name}.weight", shape) for name, shape in matrix.items()]
        tensors.append((f"blk.{i}.ffn_gate_inp.weight", (experts, hidden)))

    def data(name, shape):
        n = int(np.prod(shape))
        if len(shape) == 1:
            return np.ones(n, np.float32)
        if name.endswith("ffn_gate_inp.weight"):  # the router, with the skew's bias
            layer = int(name.split(".")[1])
            ranks = np.random.default_rng(100 + layer).permutation(experts)
            w = np.random.default_rng(200 + layer).standard_normal(shape, np.float32) * 0.02
            w[:, 0] = -zipf * np.log1p(ranks) / np.sqrt(hidden)
            return w
        chunks, left = [], n
        while left:
            take = min(left, len(pool) // 2)
            start = int(rng.integers(0, len(pool) - take))
            chunks.append(pool[start : start + take])
            left -= take
        a = np.concatenate(chunks).reshape(shape)
        if name == "token_embd.weight":
            a = a.copy()
            a[:, 0] = 1.0  # the constant the routers' bias reads
        return a

    tmp = str(path) + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("tierlm bench random mixtral")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(experts)
    w.add_expert_used_count(2)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"tok{i}".encode() for i in range(len(tokens), vocab)]
    kinds = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    kinds += [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * vocab)
    w.add_token_types(kinds)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    for name, shape in tensors:  # the header first, then the data one tensor at a time
        f32 = len(shape) == 1 or name.endswith("ffn_gate_inp.weight")
        dtype = np.float32 if f32 else np.float16
        t = gguf.GGMLQuantizationType.F32 if f32 else gguf.GGMLQuantizationType.F16
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in tensors:
        w.write_tensor_data(data(name, shape))
    w.close()
    os.replace(tmp, path)
    return str(path)


def hf_from_gguf(gguf_path, out_dir):
    """The GGUF's weights, dequantized, as a bf16 MixtralForCausalLM checkpoint (Q/K rows back
    in Hugging Face's rotate-half order), one safetensors shard per layer; for accelerate's
    row."""
    import gguf
    import torch
    import transformers
    from safetensors.torch import save_file
    from tierlm.gguf.source import GGUFSource, unpermute_rows

    source = GGUFSource.open(gguf_path)
    cfg = source.hf_config
    config = transformers.MixtralConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        num_local_experts=cfg["num_local_experts"],
        num_experts_per_tok=cfg["num_experts_per_tok"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_parameters"]["rope_theta"],
        tie_word_embeddings=False,
        experts_implementation="eager",
    )
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate_inp": "block_sparse_moe.gate",
    }
    # the checkpoint layout save_pretrained writes for Mixtral: one matrix per expert
    experts = {"ffn_gate_exps": "w1", "ffn_down_exps": "w2", "ffn_up_exps": "w3"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weight_map, total, shard = {}, 0, {}

    def write(group):
        """The shard of one layer (or of the tensors outside the layers), in bf16."""
        nonlocal total, shard
        name = f"model-{group}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        for key, t in shard.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()
        shard = {}

    # one tensor at a time, each layer's shard written as it completes: the f32 copy of the
    # whole model would not fit in memory at the bench's 4 GB (16 GB in f32)
    group = None
    for t in source.reader.tensors:
        parts = t.name.split(".")
        here = f"layer{int(parts[1]):03d}" if parts[0] == "blk" else "outer"
        if group is not None and here != group and shard:
            write(group)
        group = here
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        kind = parts[-2]
        if kind in heads:
            a = unpermute_rows(a, heads[kind])
        prefix = f"model.layers.{parts[1]}." if parts[0] == "blk" else ""
        if kind in experts:
            for e in range(a.shape[0]):
                key = f"{prefix}block_sparse_moe.experts.{e}.{experts[kind]}.weight"
                shard[key] = torch.from_numpy(np.ascontiguousarray(a[e])).to(torch.bfloat16)
        else:
            shard[prefix + names[kind] + ".weight"] = torch.from_numpy(a).to(torch.bfloat16)
    if shard:
        write(group)
    config.save_pretrained(out)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return str(out_dir)
