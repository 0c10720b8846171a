"""The Llama family: Llama 2/3, Mistral, Qwen2. Pre-norm RMSNorm blocks, RoPE, grouped-query
attention, SwiGLU FFN; optional q/k/v(/o) and FFN biases; tied or untied embeddings.
"""

import re

from tierlm.archs import ArchPlan, TensorSpec, option_refuse, rope_decoder_config
from tierlm.errors import UnsupportedError
from tierlm.graph import GraphBuilder

NAME = "llama"
MODEL_TYPES = ("llama", "mistral", "qwen2")


def _window(hf, model_type):
    """The sliding window transformers applies to some layer, or None."""
    if model_type == "mistral":
        return hf.get("sliding_window")
    if model_type == "qwen2":
        types = hf.get("layer_types")
        if types is not None:
            return hf.get("sliding_window") if "sliding_attention" in types else None
        if hf.get("use_sliding_window") and hf.get("sliding_window") is not None:
            if hf.get("max_window_layers", 28) < hf["num_hidden_layers"]:
                return hf["sliding_window"]
    return None


def plan(hf, max_positions=None):
    model_type = hf["model_type"]
    option_refuse(hf, "hidden_act", ("silu",), model_type)
    option_refuse(hf, "pretraining_tp", (1, None), model_type)
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "logits_scaling"):
        option_refuse(hf, key, (None,), model_type)
    layers = hf["num_hidden_layers"]
    for kind in hf.get("layer_types") or []:
        if kind not in ("full_attention", "sliding_attention"):
            raise UnsupportedError(f"config.json: {model_type} layer type {kind!r} is unknown")
    config = rope_decoder_config(
        hf, hf["intermediate_size"], "swiglu", _window(hf, model_type), max_positions
    )
    hidden, heads, kv_heads = config["hidden_size"], config["num_heads"], config["num_kv_heads"]
    head_dim, inter, vocab = config["head_dim"], config["intermediate_size"], config["vocab_size"]
    qkv_bias = model_type == "qwen2" or bool(hf.get("attention_bias"))
    o_bias = model_type == "llama" and bool(hf.get("attention_bias"))
    ffn_bias = model_type == "llama" and bool(hf.get("mlp_bias"))
    tied = config["tie_embeddings"]

    def src(name):
        return (f"model.{name}", name)

    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    # a tied checkpoint may hold the shared matrix only as lm_head.weight (safetensors'
    # save_model keeps one name of tied tensors), so that name is the embedding's fallback
    embed = src("embed_tokens.weight") + (("lm_head.weight",) if tied else ())
    tensors = [TensorSpec("embed.weight", embed, (vocab, hidden))]
    for i in range(layers):
        hf_layer, layer = f"layers.{i}", f"layers.{i}"
        shapes = {
            "attn_norm.weight": ("input_layernorm.weight", (hidden,)),
            "attn.q.weight": ("self_attn.q_proj.weight", (q_width, hidden)),
            "attn.q.bias": ("self_attn.q_proj.bias", (q_width,)) if qkv_bias else None,
            "attn.k.weight": ("self_attn.k_proj.weight", (kv_width, hidden)),
            "attn.k.bias": ("self_attn.k_proj.bias", (kv_width,)) if qkv_bias else None,
            "attn.v.weight": ("self_attn.v_proj.weight", (kv_width, hidden)),
            "attn.v.bias": ("self_attn.v_proj.bias", (kv_width,)) if qkv_bias else None,
            "attn.o.weight": ("self_attn.o_proj.weight", (hidden, q_width)),
            "attn.o.bias": ("self_attn.o_proj.bias", (hidden,)) if o_bias else None,
            "ffn_norm.weight": ("post_attention_layernorm.weight", (hidden,)),
            "ffn.gate.weight": ("mlp.gate_proj.weight", (inter, hidden)),
            "ffn.gate.bias": ("mlp.gate_proj.bias", (inter,)) if ffn_bias else None,
            "ffn.up.weight": ("mlp.up_proj.weight", (inter, hidden)),
            "ffn.up.bias": ("mlp.up_proj.bias", (inter,)) if ffn_bias else None,
            "ffn.down.weight": ("mlp.down_proj.weight", (hidden, inter)),
            "ffn.down.bias": ("mlp.down_proj.bias", (hidden,)) if ffn_bias else None,
        }
        for name, entry in shapes.items():
            if entry:
                tensors.append(
                    TensorSpec(f"{layer}.{name}", src(f"{hf_layer}.{entry[0]}"), entry[1], i)
                )
    tensors.append(TensorSpec("final_norm.weight", src("norm.weight"), (hidden,)))
    if not tied:
        tensors.append(TensorSpec("lm_head.weight", ("lm_head.weight",), (vocab, hidden)))

    names = {spec.name for spec in tensors}
    g = GraphBuilder()
    g.embedding("h", "embed.weight", hidden)
    for i in range(layers):
        g.layer = i
        p = f"layers.{i}."

        def bias(name, p=p):
            return p + name if p + name in names else None

        g.attention_block("h", p, names, heads, kv_heads, head_dim, config["norm_eps"])
        g.rmsnorm("h", "x", p + "ffn_norm.weight", config["norm_eps"])
        g.linear("x", "g", p + "ffn.gate.weight", inter, bias("ffn.gate.bias"))
        g.linear("x", "u", p + "ffn.up.weight", inter, bias("ffn.up.bias"))
        g.silu_mul("g", "u", "f")
        g.linear("f", "d", p + "ffn.down.weight", hidden, bias("ffn.down.bias"))
        g.add("h", "d", "h")
    g.layer = -1
    g.rmsnorm("h", "x", "final_norm.weight", config["norm_eps"])
    g.lm_head("x", "logits", "embed.weight" if tied else "lm_head.weight", vocab)
    # a tied checkpoint may still store lm_head.weight; transformers ignores it, so do we
    ignore = r".*rotary_emb\.inv_freq$" + (r"|lm_head\.weight$" if tied else "")
    return ArchPlan(NAME, config, tensors, g.build(), re.compile(ignore))
