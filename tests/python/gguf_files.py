"""GGUF files written for the tests with the `gguf` package's writer, the way llama.cpp's
convert_hf_to_gguf.py writes them (tensor names, Q/K rows permuted for llama, 1-D in F32,
experts stacked per matrix), from the tiny random transformers models of models.py (llama,
qwen2, Mixtral as llama, qwen2moe, olmoe); matrices in a chosen type.
"""

import numpy as np

_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "block_sparse_moe.gate": "ffn_gate_inp",
    "mlp.gate": "ffn_gate_inp",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp",
    "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(name):
    if name in _GLOBAL:
        return _GLOBAL[name]
    _, _, layer, *rest = name.split(".")
    module, kind = ".".join(rest[:-1]), rest[-1]
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def permute(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute (rotate-half rows -> interleaved pairs)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def gguf_arrays(model, arch):
    """(gguf name, f32 numpy array) of a transformers model, Q/K permuted for llama."""
    cfg = model.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    out = []
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if "experts" in parts:  # transformers 5 holds them stacked: gate_up_proj, down_proj
            a = tensor.float().numpy()
            inner = a.shape[1] // 2
            if parts[-1] == "gate_up_proj":
                out.append((f"blk.{parts[2]}.ffn_gate_exps.weight", a[:, :inner]))
                out.append((f"blk.{parts[2]}.ffn_up_exps.weight", a[:, inner:]))
            else:
                out.append((f"blk.{parts[2]}.ffn_down_exps.weight", a))
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        a = tensor.float().numpy()
        if name.endswith("shared_expert_gate.weight"):
            a = a.reshape(-1)  # llama.cpp's ffn_gate_inp_shexp is [hidden]
        if arch == "llama" and ".q_proj." in name:
            a = permute(a, heads)
        elif arch == "llama" and ".k_proj." in name:
            a = permute(a, kv)
        out.append((gguf_name(name), a))
    return out


def write_gguf(model, path, matrix_type="F32", arch="llama", types=None, vocab=None, truncate=0):
    """Writes model as a GGUF file. matrix_type: a GGMLQuantizationType name for the matrices
    (quantized with gguf.quants where it can, else tierlm.quant); types: {gguf name: type} to
    override; vocab: (tokens, merges, token_types, pre) for a gpt2 vocabulary, else a placeholder
    llama one. truncate cuts that many bytes off the end."""
    import gguf
    from tierlm.quant import quantize

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    if vocab is None:
        n = cfg.vocab_size
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
        tokens = (tokens + [f"tok{i}" for i in range(len(tokens), n)])[:n]
        kinds = ([2, 3, 3] + [6] * 256 + [1] * n)[:n]
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([-float(i) for i in range(n)])
        w.add_token_types(kinds)
    else:
        tokens, merges, kinds, pre = vocab
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_merges(merges)
        w.add_token_types(kinds)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    if getattr(cfg, "moe_intermediate_size", None):
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if getattr(cfg, "shared_expert_intermediate_size", None):
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    w.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    for name, a in gguf_arrays(model, arch):
        kind = (types or {}).get(name, matrix_type if a.ndim >= 2 else "F32")
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        if kind == "F32":
            w.add_tensor(name, a.astype(np.float32))
        elif kind == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            try:
                raw = gguf.quants.quantize(a, qtype)
            except NotImplementedError:
                raw = quantize(kind.lower(), a)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if truncate:
        with open(path, "r+b") as f:
            f.seek(0, 2)
            f.truncate(f.tell() - truncate)
    return str(path)


def rewrite_gguf(src, dst, drop=(), tensors=None, add=None):
    """Copies GGUF src to dst without the metadata keys starting with drop, with tensors
    {name: (raw bytes, type name)} replaced, and add(writer) called to add metadata."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith(("GGUF.", "general.architecture", *drop)):
            continue
        kind, value = field.types[0], field.contents()
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_array(field.name, value)
        else:
            w.add_key_value(field.name, value, kind)
    if add:
        add(w)
    for t in reader.tensors:
        raw, kind = (tensors or {}).get(t.name, (t.data, t.tensor_type.name))
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        w.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)
