"""Offline quality of sparse FFN execution (torch): perplexity and greedy agreement of an OPT
model whose FFNs compute only the neurons a predictor (or an oracle) selects, and the FFN
bytes a token would read with and without the neuron window."""

import contextlib
import math
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def sparse_ffn_mode(loaded, predictors=None, oracle=False, record=None):
    """Within the block, each FFN computes only the selected neurons: the predictor's set
    (or, with oracle=True, the neurons that are truly positive). Neurons outside the set
    contribute nothing. `record` (a list per layer) receives each token's predicted mask."""
    import torch

    if predictors is None and not oracle:
        raise ValueError("give predictors or oracle=True")

    def make_hook(i, p):
        if p is None:
            return None  # oracle: the ReLU already keeps exactly the positive neurons
        down, up = torch.from_numpy(p.down), torch.from_numpy(p.up)
        up_bias = torch.from_numpy(p.up_bias)
        cut = math.log(p.threshold / (1.0 - p.threshold))

        def hook(module, args, output):
            mask = ((args[0] @ down.T) @ up.T + up_bias) > cut
            if record is not None:
                record[i].append(mask.reshape(-1, mask.shape[-1]).numpy().copy())
            return output * mask  # zero before the ReLU: the neuron's row is never used

        return hook

    hooks = []
    for i, layer in enumerate(loaded.layers):
        hook = make_hook(i, None if oracle else predictors.layers[i])
        if hook is not None:
            hooks.append(layer.fc1.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def perplexity(loaded, ids, context=None):
    """exp(mean NLL) over non-overlapping windows of `context` tokens (the model's maximum)."""
    return perplexity_and_top1(loaded, ids, context)[0]


def perplexity_and_top1(loaded, ids, context=None):
    """(perplexity, top-1 ids [n-1]) teacher-forced over windows of `context` tokens (the
    model's maximum)."""
    import torch

    context = context or loaded.model.config.max_position_embeddings
    ids = np.asarray(ids, dtype=np.int64)
    nll, count, tops = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            chunk = torch.from_numpy(ids[start : start + context])[None]
            if chunk.shape[1] < 2:
                break
            logits = loaded.model(input_ids=chunk).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
            tops.append(logits.argmax(-1).numpy())
    return math.exp(nll / count), np.concatenate(tops)


def greedy(loaded, prompt_ids, n_new):
    """Greedy continuation with transformers' generate (the new ids only)."""
    import torch

    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = loaded.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_new,
            do_sample=False,
            pad_token_id=loaded.model.config.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def greedy_agreement(loaded, predictors, prompts, n_new):
    """Top-1 agreement with dense: for each prompt the dense model generates n_new greedy
    tokens; the sparse model, fed the same tokens, picks its own top-1 at every one of those
    positions. Returns (agreement fraction, positions compared, sparse free-running texts)."""
    import torch

    agree, total = 0, 0
    for prompt in prompts:
        dense_new = greedy(loaded, prompt, n_new)
        seq = torch.tensor([list(prompt) + dense_new])
        with sparse_ffn_mode(loaded, predictors), torch.no_grad():
            logits = loaded.model(input_ids=seq).logits[0]
        picks = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(picks, dense_new, strict=True))
        total += len(dense_new)
    return agree / total, total


def bytes_per_token(masks, row_bytes, k=4):
    """FFN bytes read per token for one layer, given its per-token predicted masks
    [tokens, ffn]: dense (every row), sparse without window (the predicted rows) and with
    the native neuron window of k tokens (only rows not already cached)."""
    from tierlm.sparse.cache import NeuronWindow

    masks = np.asarray(masks, bool)
    tokens, ffn = masks.shape
    window = NeuronWindow(ffn, k)
    loaded_rows = 0
    for t in range(tokens):
        load, _ = window.step(np.flatnonzero(masks[t]))
        loaded_rows += load.size
    return {
        "dense": ffn * row_bytes,
        "sparse": masks.sum() / tokens * row_bytes,
        "window": loaded_rows / tokens * row_bytes,
    }


class NativeSparseFfn:
    """Runs every FFN of a loaded OPT model through the native sparse path, token by token
    as decode would: the predicted (or oracle) neurons go through the neuron window, the
    rows it asks for are read from the layer's bundled file (coalesced preads) into the
    host-tier neuron cache, evicted rows leave it, and the native kernel computes on the
    cache's slots of this token's neurons. Counts rows and bytes read and read requests.

    Use as a context manager around model calls; `bundle_dir` holds the files written by
    tierlm.sparse.bundle.write_model_bundles (or a package exported with --sparse).
    all_cached=True computes over every cached row (the window's union, a superset of the
    prediction; exact for ReLU), as the native executor (tierlm.load(..., sparse=True)) does.
    """

    def __init__(self, loaded, bundle_dir, predictors=None, k=4, tier=None, all_cached=False):
        from tierlm.sparse.bundle import load_layouts
        from tierlm.sparse.cache import NeuronCache, NeuronWindow
        from tierlm.tiers import HostTier

        self.loaded, self.predictors, self.k = loaded, predictors, k
        self.all_cached = all_cached
        self.bundle_dir = Path(bundle_dir)
        self.layouts = load_layouts(bundle_dir)
        ffn = loaded.ffn_dim
        need = sum(lay.row_bytes * ffn + 8 * ffn for lay in self.layouts) + 64 * 4096
        self.tier = tier or HostTier(need)
        self.caches = [
            NeuronCache(self.tier, ffn, ffn, lay.row_elems, lay.dtype) for lay in self.layouts
        ]
        self.windows = [NeuronWindow(ffn, k) for _ in self.layouts]
        self.biases = [loaded.ffn(i) for i in range(loaded.num_layers)]
        from tierlm.io import File

        self.files = [File(self.bundle_dir / lay.file, "r") for lay in self.layouts]
        self.stats = {
            "tokens": 0,
            "rows_predicted": 0,
            "rows_read": 0,
            "bytes_read": 0,
            "requests": 0,
            "rows_true": 0,
            "rows_missed": 0,
        }
        self._hooks = []

    def _select(self, i, x):
        """Neuron ids to compute for one token's FFN input x [d]."""
        up, up_bias, _, _ = self.biases[i]
        true = np.flatnonzero(up @ x + up_bias > 0)
        if self.predictors is None:
            chosen = true
        else:
            chosen = np.flatnonzero(self.predictors.layers[i].predict(x[None])[0])
        self.stats["rows_true"] += true.size
        self.stats["rows_missed"] += np.setdiff1d(true, chosen, assume_unique=True).size
        return chosen

    def _token(self, i, x):
        from tierlm.sparse.bundle import read_requests, read_rows

        cache, window, layout = self.caches[i], self.windows[i], self.layouts[i]
        active = self._select(i, x)
        load, evict = window.step(active)
        if evict.size:
            cache.erase(evict)
        if load.size:
            load = np.sort(load)
            cache.insert(load, read_rows(self.files[i], layout, load))
            self.stats["rows_read"] += load.size
            self.stats["bytes_read"] += load.size * layout.row_bytes
            self.stats["requests"] += len(read_requests(layout, load))
        self.stats["rows_predicted"] += active.size
        _, up_bias, _, down_bias = self.biases[i]
        if self.all_cached:
            return cache.ffn(x, layout.dim, up_bias, down_bias)
        slot_of = np.full(cache.n_neurons, -1, np.int32)
        slot_of[cache.neurons()] = np.arange(len(cache), dtype=np.int32)
        slots = slot_of[active]
        return cache.ffn(x, layout.dim, up_bias, down_bias, slots=slots)

    def __enter__(self):
        import torch

        for i, layer in enumerate(self.loaded.layers):
            inputs = {}

            def pre(module, args, inputs=inputs):
                inputs["x"] = args[0]

            def post(module, args, output, i=i, inputs=inputs):
                x = inputs.pop("x").detach().reshape(-1, output.shape[-1]).numpy()
                ys = np.stack([self._token(i, row) for row in x])
                if i == 0:
                    self.stats["tokens"] += x.shape[0]
                return torch.from_numpy(ys).reshape(output.shape).to(output.dtype)

            self._hooks.append(layer.fc1.register_forward_pre_hook(pre))
            self._hooks.append(layer.fc2.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def reset(self):
        for c, w in zip(self.caches, self.windows, strict=True):
            c.clear()
            w.reset()
        self.stats = dict.fromkeys(self.stats, 0)

    def summary(self):
        """Per token, summed over layers: rows and bytes read, requests, cache hit rate."""
        s, layers = self.stats, self.loaded.num_layers
        t = max(1, s["tokens"])
        row_bytes = self.layouts[0].row_bytes
        return {
            "tokens": s["tokens"],
            "rows_predicted_per_token": s["rows_predicted"] / t,
            "rows_read_per_token": s["rows_read"] / t,
            "bytes_read_per_token": s["bytes_read"] / t,
            "requests_per_token": s["requests"] / t,
            "dense_bytes_per_token": layers * self.loaded.ffn_dim * row_bytes,
            "cache_hit_rate": 1.0 - s["rows_read"] / max(1, s["rows_predicted"]),
            "recall": 1.0 - s["rows_missed"] / max(1, s["rows_true"]),
        }


@contextlib.contextmanager
def thresholded_silu_mode(loaded, predictors, oracle=False):
    """Gated SiLU FFNs (lossy): within the block each FFN keeps only neurons whose
    |silu(x·gate)| passes the layer's calibrated threshold and, unless oracle, that the
    predictor selects: down(silu(g) * u * mask)."""
    import torch

    cuts = predictors.act_thresholds
    hooks = []
    for i, layer in enumerate(loaded.layers):
        p = predictors.layers[i]
        down, up = torch.from_numpy(p.down), torch.from_numpy(p.up)
        up_bias = torch.from_numpy(p.up_bias)
        cut = math.log(p.threshold / (1.0 - p.threshold))

        def forward_hook(module, args, output, cut_act=cuts[i], down=down, up=up, b=up_bias, c=cut):
            x = args[0]
            s = torch.nn.functional.silu(module.gate_proj(x))
            mask = s.abs() > cut_act
            if not oracle:
                mask = mask & (((x @ down.T) @ up.T + b) > c)
            return module.down_proj(s * module.up_proj(x) * mask)

        hooks.append(layer.mlp.register_forward_hook(forward_hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def gated_quality(loaded, predictors, ids):
    """Quality cost of thresholded SiLU sparsity against dense on ids (teacher-forced, one
    window of the model's context): mean over positions of max|Δlogit| / max|logit|, and
    top-1 agreement, with the predictors and with the threshold alone (oracle)."""
    import torch

    context = loaded.model.config.max_position_embeddings
    seq = torch.tensor([list(ids)[:context]])
    with torch.no_grad():
        dense = loaded.model(input_ids=seq).logits[0]
        out = {"tokens": int(seq.shape[1]), "target_sparsity": predictors.target_sparsity}
        for name, oracle in (("predicted", False), ("threshold_only", True)):
            with thresholded_silu_mode(loaded, predictors, oracle=oracle):
                sparse = loaded.model(input_ids=seq).logits[0]
            err = (sparse - dense).abs().amax(-1) / dense.abs().amax(-1)
            agree = (sparse.argmax(-1) == dense.argmax(-1)).float().mean()
            out[name] = {"logit_error": float(err.mean()), "top1_agreement": float(agree)}
    return out
