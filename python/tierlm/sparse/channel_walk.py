"""Model-level allocation of input-channel sparsity, measured on the loss: starting from every
site at a fraction `start` of the target, repeatedly raise by `step` the site type (attn_in,
attn_out, ffn_in, ffn_down; the same level in every layer) whose next step adds the least
calibration loss per weight element it saves, until the model skips the target fraction of its
linears' weights (the last step interpolated to meet it exactly). The loss is the mean KL
divergence of the sparse model's next-token distribution from the dense model's on calibration
tokens: a measure of the whole model, unlike the squared error of one layer's output
(channel_alloc), which moved sparsity where the model's loss paid for it (docs/sparse.md); and,
unlike the next-token NLL the walk used first, one that does not reward a sparse model for
guessing one window's tokens better than dense does (the NLL walk's levels did not carry to
held-out text). Works on rotated inputs too (the thresholds are quantiles of whatever the
histograms hold). Lazy greedy: a site's marginal cost is measured when it moves and kept while
the others move, so a walk costs one model run per step plus one per site at the start, and one
more each time the cheapest site's cost was measured before another site moved (it is measured
again at the current levels before it is chosen, so the loss the walk stands on is always the
current one: the first walk took the loss of the moved site's stale measurement as the new
base)."""

from tierlm.sparse.channel import SITES, ChannelThresholds, channel_sparse_mode


def _log_probs(loaded, ids):
    """log softmax of the model's next-token logits on ids (one window): torch [n, vocab]."""
    import torch

    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([list(ids)])).logits[0].float()
    return torch.log_softmax(logits, -1)


def _thresholds(hists, levels, rotation, scales):
    layers = [{s: h[s].quantile(levels[s]) for s in SITES} for h in hists]
    return ChannelThresholds(0.0, layers, scales=scales, rotation=rotation)


def walk_site_levels(
    loaded,
    ids,
    hists,
    sizes,
    target,
    rotation=None,
    scales=None,
    step=0.05,
    start=0.5,
    cap=0.95,
    log=None,
):
    """{site: level} (every layer the same) whose size-weighted mean is `target`. hists: per
    layer {site: MagnitudeHistogram} (of the rotated inputs where `rotation` rotates a site,
    of the inputs times `scales` for the criterion weight_norm);
    sizes: {site: weight elements of one layer}; ids: the calibration tokens the loss is
    measured on (one window). log(line) receives one line per step."""
    total = sum(sizes.values())
    level = dict.fromkeys(SITES, min(cap, target * start))
    dense = _log_probs(loaded, ids)
    dense_p = dense.exp()

    def loss(levels):  # mean KL(dense || sparse) per token
        with channel_sparse_mode(loaded, _thresholds(hists, levels, rotation, scales)):
            sparse = _log_probs(loaded, ids)
        return float((dense_p * (dense - sparse)).sum(-1).mean())

    def marginal(site, base):
        got = loss({**level, site: level[site] + step})
        return (got - base) / (step * sizes[site]), got

    def mean(levels):
        return sum(levels[s] * sizes[s] for s in SITES) / total

    base = loss(level)  # the loss at the current levels, always measured there
    moves = 0
    cost = {s: (*marginal(s, base), moves) for s in SITES if level[s] + step <= cap + 1e-9}
    while cost and mean(level) < target - 1e-9:
        best = min(cost, key=lambda s: cost[s][0])
        if cost[best][2] != moves:  # measured before others moved: measure again, then choose
            cost[best] = (*marginal(best, base), moves)
            continue
        short = (target - mean(level)) * total / sizes[best]
        if short <= step + 1e-12:  # the last step: only as far as the target
            level[best] += short
            break
        level[best] = round(level[best] + step, 6)
        base, moves = cost[best][1], moves + 1
        del cost[best]
        if level[best] + step <= cap + 1e-9:
            cost[best] = (*marginal(best, base), moves)
        if log:
            levels = " ".join(f"{s} {level[s]:.2f}" for s in SITES)
            log(f"walk: {mean(level):.3f} of the weights, KL {base:.6g} ({levels})")
    return level
