"""OPT: pre-norm LayerNorm blocks, learned positions (offset 2), ReLU (or GELU) FFN, biases.

The post-norm variant (do_layer_norm_before false, opt-350m) and the projected embeddings
(word_embed_proj_dim != hidden_size) are refused.
"""

import re

from tierlm.archs import ArchPlan, TensorSpec, context_length, option_refuse
from tierlm.errors import UnsupportedError
from tierlm.graph import GraphBuilder

NAME = "opt"
MODEL_TYPES = ("opt",)
POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding looks up position + 2
NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; OPT does not configure it


def plan(hf, max_positions=None):
    option_refuse(hf, "do_layer_norm_before", (True,), "opt")
    option_refuse(hf, "_remove_final_layer_norm", (False,), "opt")
    option_refuse(hf, "layer_norm_elementwise_affine", (True,), "opt")
    option_refuse(hf, "activation_function", ("relu", "gelu"), "opt")
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("word_embed_proj_dim", hidden) != hidden:
        raise UnsupportedError(
            f"config.json: opt word_embed_proj_dim {hf['word_embed_proj_dim']} != hidden_size "
            f"{hidden} (project_in/project_out) is not supported by tierlm"
        )
    if hidden % heads:
        raise UnsupportedError(f"config.json: hidden_size {hidden} is not a multiple of {heads}")
    layers, inter, vocab = hf["num_hidden_layers"], hf["ffn_dim"], hf["vocab_size"]
    head_dim = hidden // heads
    table = hf.get("max_position_embeddings", 2048)
    bias = bool(hf.get("enable_bias", True))
    tied = bool(hf.get("tie_word_embeddings", True))
    activation = hf.get("activation_function", "relu")
    eos = hf.get("eos_token_id")
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": head_dim,
        "intermediate_size": inter,
        "max_positions": context_length(table, max_positions, None, "opt"),
        "norm_eps": NORM_EPS,
        "rope_theta": None,
        "rope_inv_freq": None,
        "rope_scaling": None,
        "tie_embeddings": tied,
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": eos,
        "eos_token_ids": [] if eos is None else [eos],
        "position_offset": POSITION_OFFSET,
        "norm": "layernorm",
        "ffn": activation,
        "model_type": "opt",
    }

    def src(name):
        return (f"model.decoder.{name}", f"decoder.{name}")

    tensors = [
        # tied: the shared matrix may be stored only as lm_head.weight (see archs/llama.py)
        TensorSpec(
            "embed.weight",
            src("embed_tokens.weight") + (("lm_head.weight",) if tied else ()),
            (vocab, hidden),
        ),
        TensorSpec(
            "embed.positions", src("embed_positions.weight"), (table + POSITION_OFFSET, hidden)
        ),
    ]
    for i in range(layers):
        p, q = f"layers.{i}.", f"layers.{i}."
        entries = [
            ("attn_norm", "self_attn_layer_norm", hidden, hidden, True),
            ("attn.q", "self_attn.q_proj", hidden, hidden, bias),
            ("attn.k", "self_attn.k_proj", hidden, hidden, bias),
            ("attn.v", "self_attn.v_proj", hidden, hidden, bias),
            ("attn.o", "self_attn.out_proj", hidden, hidden, bias),
            ("ffn_norm", "final_layer_norm", hidden, hidden, True),
            ("ffn.up", "fc1", inter, hidden, bias),
            ("ffn.down", "fc2", hidden, inter, bias),
        ]
        for name, hf_name, rows, cols, has_bias in entries:
            norm = name.endswith("norm")
            shape = (rows,) if norm else (rows, cols)
            tensors.append(TensorSpec(f"{p}{name}.weight", src(f"{q}{hf_name}.weight"), shape, i))
            if has_bias:
                spec = TensorSpec(f"{p}{name}.bias", src(f"{q}{hf_name}.bias"), (rows,), i)
                tensors.append(spec)
    tensors.append(TensorSpec("final_norm.weight", src("final_layer_norm.weight"), (hidden,)))
    tensors.append(TensorSpec("final_norm.bias", src("final_layer_norm.bias"), (hidden,)))
    if not tied:
        tensors.append(TensorSpec("lm_head.weight", ("lm_head.weight",), (vocab, hidden)))

    names = {spec.name for spec in tensors}
    g = GraphBuilder()
    g.embedding("h", "embed.weight", hidden)
    g.position_embedding("h", "embed.positions", POSITION_OFFSET)
    for i in range(layers):
        g.layer = i
        p = f"layers.{i}."

        def b(name, p=p):
            return p + name if p + name in names else None

        g.layernorm("h", "x", p + "attn_norm.weight", p + "attn_norm.bias", NORM_EPS)
        g.linear("x", "q", p + "attn.q.weight", hidden, b("attn.q.bias"))
        g.linear("x", "k", p + "attn.k.weight", hidden, b("attn.k.bias"))
        g.linear("x", "v", p + "attn.v.weight", hidden, b("attn.v.bias"))
        g.attention("q", "k", "v", "a", heads, heads, head_dim, head_dim**-0.5)
        g.linear("a", "o", p + "attn.o.weight", hidden, b("attn.o.bias"))
        g.add("h", "o", "h")
        g.layernorm("h", "x", p + "ffn_norm.weight", p + "ffn_norm.bias", NORM_EPS)
        g.linear("x", "u", p + "ffn.up.weight", inter, b("ffn.up.bias"))
        g.relu("u") if activation == "relu" else g.gelu("u")
        g.linear("u", "d", p + "ffn.down.weight", hidden, b("ffn.down.bias"))
        g.add("h", "d", "h")
    g.layer = -1
    g.layernorm("h", "x", "final_norm.weight", "final_norm.bias", NORM_EPS)
    g.lm_head("x", "logits", "embed.weight" if tied else "lm_head.weight", vocab)
    ignore = r"lm_head\.weight$" if tied else r"$^"
    return ArchPlan(NAME, config, tensors, g.build(), re.compile(ignore))
