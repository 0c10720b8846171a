"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE. Llama-style blocks (RMSNorm,
RoPE, grouped-query attention) whose FFN is a `moe` op: a router, top-k of E SwiGLU experts
(probabilities renormalised or not), plus Qwen2-MoE's shared expert behind a sigmoid gate.
Qwen3-MoE normalises q and k per head, OLMoE over the whole projection. Layers that
mlp_only_layers / decoder_sparse_step leave dense keep a SwiGLU FFN.
"""

import re

from tierlm.archs import ArchPlan, TensorSpec, option_refuse, rope_decoder_config
from tierlm.errors import UnsupportedError
from tierlm.graph import EXPERT_PARTS, GraphBuilder

NAME = "moe"
MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
# checkpoint names of (router, expert e's gate/up/down, shared expert prefix) per family
_MIXTRAL = ("block_sparse_moe.gate", "block_sparse_moe.experts.{e}.{part}", ("w1", "w3", "w2"))
_DENSE = ("gate_proj", "up_proj", "down_proj")
_QWEN = ("mlp.gate", "mlp.experts.{e}.{part}", _DENSE)


def _experts(hf, model_type):
    experts = hf.get("num_local_experts") if model_type == "mixtral" else None
    experts = experts or hf.get("num_experts") or hf.get("num_local_experts")
    top_k = hf.get("num_experts_per_tok")
    if not experts or not top_k or not 1 <= top_k <= experts:
        raise UnsupportedError(
            f"config.json: {model_type} needs 1 <= num_experts_per_tok ({top_k}) <= the number "
            f"of experts ({experts})"
        )
    return experts, top_k


def _sparse_layers(hf, model_type, layers):
    """The layers whose FFN is routed (Qwen MoE may keep some dense)."""
    if model_type not in ("qwen2_moe", "qwen3_moe"):
        return set(range(layers))
    step, dense = hf.get("decoder_sparse_step", 1) or 1, set(hf.get("mlp_only_layers") or [])
    return {i for i in range(layers) if i not in dense and (i + 1) % step == 0}


def _window(hf, model_type):
    if model_type == "mixtral":
        return hf.get("sliding_window")
    if hf.get("use_sliding_window") and hf.get("sliding_window"):
        return hf["sliding_window"]
    return None


def plan(hf, max_positions=None):
    model_type = hf["model_type"]
    option_refuse(hf, "hidden_act", ("silu",), model_type)
    option_refuse(hf, "clip_qkv", (None,), model_type)
    layers = hf["num_hidden_layers"]
    experts, top_k = _experts(hf, model_type)
    sparse = _sparse_layers(hf, model_type, layers)
    dense_inter = hf.get("intermediate_size")
    inter = hf.get("moe_intermediate_size") or dense_inter  # Mixtral's experts use the latter
    shared_inter = hf.get("shared_expert_intermediate_size") if model_type == "qwen2_moe" else 0
    norm_topk = model_type == "mixtral" or bool(hf.get("norm_topk_prob", False))
    config = rope_decoder_config(hf, inter, "moe", _window(hf, model_type), max_positions)
    config |= {
        "num_experts": experts,
        "experts_per_token": top_k,
        "norm_topk_prob": norm_topk,
        "moe_layers": sorted(sparse),
        "shared_expert_intermediate_size": shared_inter or 0,
        "dense_intermediate_size": dense_inter if len(sparse) < layers else 0,
    }
    hidden, heads, kv_heads = config["hidden_size"], config["num_heads"], config["num_kv_heads"]
    head_dim, vocab, tied = config["head_dim"], config["vocab_size"], config["tie_embeddings"]
    eps = config["norm_eps"]
    qkv_bias = hf.get("qkv_bias", True) if model_type == "qwen2_moe" else hf.get("attention_bias")
    qk_norm = {"qwen3_moe": head_dim, "olmoe": None}.get(model_type, 0)  # per head / whole
    router, expert_src, parts = _MIXTRAL if model_type == "mixtral" else _QWEN
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    tensors = []

    def add(name, source, shape, layer=-1, when=True):
        if when:
            tensors.append(TensorSpec(name, (f"model.{source}", source), shape, layer))

    add("embed.weight", "embed_tokens.weight", (vocab, hidden))
    tensors[0].sources += ("lm_head.weight",) if tied else ()
    for i in range(layers):
        p, s = f"layers.{i}.", f"layers.{i}."
        add(p + "attn_norm.weight", s + "input_layernorm.weight", (hidden,), i)
        for proj, width in (("q", q_width), ("k", kv_width), ("v", kv_width)):
            add(f"{p}attn.{proj}.weight", f"{s}self_attn.{proj}_proj.weight", (width, hidden), i)
            add(f"{p}attn.{proj}.bias", f"{s}self_attn.{proj}_proj.bias", (width,), i, qkv_bias)
        add(p + "attn.o.weight", s + "self_attn.o_proj.weight", (hidden, q_width), i)
        for proj, width in (("q", q_width), ("k", kv_width)):
            name, norm = f"{proj}_norm.weight", (qk_norm or width,)
            add(f"{p}attn.{name}", f"{s}self_attn.{name}", norm, i, qk_norm != 0)
        add(p + "ffn_norm.weight", s + "post_attention_layernorm.weight", (hidden,), i)
        if i not in sparse:
            for part, src in zip(EXPERT_PARTS, _DENSE, strict=True):
                shape = (hidden, dense_inter) if part == "down" else (dense_inter, hidden)
                add(f"{p}ffn.{part}.weight", f"{s}mlp.{src}.weight", shape, i)
            continue
        add(p + "moe.router.weight", s + router + ".weight", (experts, hidden), i)
        for e in range(experts):  # gate, up, down of one expert back to back: one read
            for part, src in zip(EXPERT_PARTS, parts, strict=True):
                shape = (hidden, inter) if part == "down" else (inter, hidden)
                name = s + expert_src.format(e=e, part=src) + ".weight"
                add(f"{p}moe.experts.{e}.{part}.weight", name, shape, i)
        if shared_inter:
            for part, src in zip(EXPERT_PARTS, _DENSE, strict=True):
                shape = (hidden, shared_inter) if part == "down" else (shared_inter, hidden)
                add(f"{p}moe.shared.{part}.weight", f"{s}mlp.shared_expert.{src}.weight", shape, i)
            add(p + "moe.shared_gate.weight", s + "mlp.shared_expert_gate.weight", (1, hidden), i)
    add("final_norm.weight", "norm.weight", (hidden,))
    if not tied:
        tensors.append(TensorSpec("lm_head.weight", ("lm_head.weight",), (vocab, hidden)))

    names = {spec.name for spec in tensors}
    g = GraphBuilder()
    g.embedding("h", "embed.weight", hidden)
    for i in range(layers):
        g.layer = i
        p = f"layers.{i}."

        g.attention_block("h", p, names, heads, kv_heads, head_dim, eps, qk_norm)
        g.rmsnorm("h", "x", p + "ffn_norm.weight", eps)
        if i in sparse:
            g.moe("x", "d", p + "moe.router.weight", experts, top_k, norm_topk, p + "moe.experts")
        if shared_inter and i in sparse:
            _swiglu(g, "x", "s", p + "moe.shared", shared_inter, hidden)
            g.sigmoid_gate("x", "s", "s", p + "moe.shared_gate.weight")
            g.add("d", "s", "d")
        if i not in sparse:
            _swiglu(g, "x", "d", p + "ffn", dense_inter, hidden)
        g.add("h", "d", "h")
    g.layer = -1
    g.rmsnorm("h", "x", "final_norm.weight", eps)
    g.lm_head("x", "logits", "embed.weight" if tied else "lm_head.weight", vocab)
    ignore = r".*rotary_emb\.inv_freq$" + (r"|lm_head\.weight$" if tied else "")
    return ArchPlan(NAME, config, tensors, g.build(), re.compile(ignore))


def _swiglu(g, x, out, prefix, inter, hidden):
    g.linear(x, out + ".g", f"{prefix}.gate.weight", inter)
    g.linear(x, out + ".u", f"{prefix}.up.weight", inter)
    g.silu_mul(out + ".g", out + ".u", out + ".f")
    g.linear(out + ".f", out, f"{prefix}.down.weight", hidden)
