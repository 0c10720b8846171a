"""Claim: on a trained ReLU model, the predicted-sparse FFN keeps quality (perplexity within
1% of dense) while reading a small fraction of the FFN bytes per token, and the neuron
window (k tokens) cuts that further.

Measures the shipped demo model (python/tierlm/data/demo-opt) on held-out standard-library
text: activation sparsity and predictor recall/precision per layer, perplexity dense vs
predicted-sparse (torch masking, and the native path: window -> bundled-file preads ->
neuron cache -> sparse kernel), top-1 greedy agreement over 256 tokens, and FFN bytes read
per token for dense, sparse and sparse + window. The numbers are deterministic (no timing),
so one run is the median.

    python bench/bench_sparse_quality.py [--tokens 4096] [--retrain] [--k 4]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the shipped demo model")
    parser.add_argument("--tokens", type=int, default=4096, help="held-out tokens measured")
    parser.add_argument("--k", type=int, default=4, help="window of tokens")
    parser.add_argument("--dtype", default="f16", help="bundled row dtype")
    parser.add_argument("--retrain", action="store_true", help="train predictors afresh")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tierlm.sparse import DEMO_MODEL_DIR
    from tierlm.sparse.bundle import write_model_bundles
    from tierlm.sparse.corpus import held_out_text, train_text
    from tierlm.sparse.model import collect_ffn_inputs, load_model
    from tierlm.sparse.predictor import (
        Predictors,
        activation_labels,
        default_ranks,
        layer_metrics,
        train_predictors,
    )
    from tierlm.sparse.quality import (
        NativeSparseFfn,
        bytes_per_token,
        greedy_agreement,
        perplexity,
        sparse_ffn_mode,
    )

    model_dir = Path(args.model) if args.model else DEMO_MODEL_DIR
    loaded = load_model(model_dir)
    held = np.array(loaded.encode(held_out_text()))[: args.tokens]
    t0 = time.time()
    if args.retrain or not (model_dir / "predictors.json").exists():
        calib = np.array(loaded.encode(train_text(max_chars=400_000)))
        ranks = default_ranks(loaded.num_layers, loaded.hidden_size, args.rank)
        predictors = train_predictors(loaded, calib, held[: len(held) // 2], ranks)
        source = f"trained now ({time.time() - t0:.0f} s)"
    else:
        predictors = Predictors.load(model_dir)
        source = f"loaded from {model_dir}"

    c = loaded.model.config
    print(
        f"model {model_dir.name}: OPT, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
        f"ffn {c.ffn_dim}, vocab {c.vocab_size}; predictors {source}, ranks {predictors.ranks}"
    )
    print(f"held-out: {len(held)} tokens of standard-library files held out from training\n")

    # Per layer: true sparsity, recall/precision, bytes per token.
    xs = collect_ffn_inputs(loaded, held)
    row_bytes = 2 * c.hidden_size * (4 if args.dtype == "f32" else 2)
    print(
        f"{'layer':>5} {'rank':>5} {'sparsity':>9} {'recall':>7} {'precision':>9} "
        f"{'predicted':>9} {'dense B/tok':>12} {'sparse B/tok':>13} {'window B/tok':>13}"
    )
    totals = {"dense": 0.0, "sparse": 0.0, "window": 0.0}
    oracle_totals = {"dense": 0.0, "sparse": 0.0, "window": 0.0}
    for i in range(loaded.num_layers):
        up, up_bias, _, _ = loaded.ffn(i)
        truth = activation_labels(xs[i], up, up_bias)
        pred = predictors.layers[i].predict(xs[i])
        m = layer_metrics(pred, truth)
        b = bytes_per_token(pred, row_bytes, args.k)
        bo = bytes_per_token(truth, row_bytes, args.k)  # the true active sets
        for key in totals:
            totals[key] += b[key]
            oracle_totals[key] += bo[key]
        print(
            f"{i:>5} {predictors.layers[i].rank:>5} {1 - m['true_density']:>9.3f} "
            f"{m['recall']:>7.3f} {m['precision']:>9.3f} {m['predicted_density']:>9.3f} "
            f"{b['dense']:>12.0f} {b['sparse']:>13.0f} {b['window']:>13.0f}"
        )
    print(
        f"{'all':>5} {'':>5} {'':>9} {'':>7} {'':>9} {'':>9} {totals['dense']:>12.0f} "
        f"{totals['sparse']:>13.0f} {totals['window']:>13.0f}"
    )

    # Perplexity: dense, torch masking, native path with window and bundled reads.
    ppl_dense = perplexity(loaded, held)
    with sparse_ffn_mode(loaded, predictors):
        ppl_sparse = perplexity(loaded, held)
    with tempfile.TemporaryDirectory() as tmp:
        write_model_bundles(loaded, Path(tmp), args.dtype)
        with NativeSparseFfn(loaded, Path(tmp), predictors, k=args.k) as native:
            ppl_native = perplexity(loaded, held)
        s = native.summary()
        with NativeSparseFfn(loaded, Path(tmp), None, k=args.k):
            ppl_oracle = perplexity(loaded, held)
    prompts = [loaded.encode(p) for p in ("def ", "import ", "class ", "    return ")]
    agree, n_agree = greedy_agreement(loaded, predictors, prompts, 64)

    print()
    print(
        f"{'configuration':<46} {'value':>10} {'baseline':>10} {'ratio':>7} {'bound':>10}"
        f" {'bound ratio':>11}"
    )
    k = args.k
    dense_b = totals["dense"]
    rows = [
        # name, value, baseline (dense unless said), bound (oracle)
        ("perplexity, predicted sparse (torch mask)", ppl_sparse, ppl_dense, ppl_oracle),
        (f"perplexity, native window k={k} + bundles", ppl_native, ppl_dense, ppl_oracle),
        (f"top-1 greedy agreement ({n_agree} tokens)", agree, 1.0, 1.0),
        ("FFN bytes/token, sparse, no window", totals["sparse"], dense_b, oracle_totals["sparse"]),
        (
            f"FFN bytes/token, sparse, window k={k}",
            totals["window"],
            dense_b,
            oracle_totals["window"],
        ),
        (
            "FFN bytes/token, native run (window)",
            s["bytes_read_per_token"],
            s["dense_bytes_per_token"],
            oracle_totals["window"],
        ),
        (
            "read requests/token, native (coalesced)",
            s["requests_per_token"],
            s["rows_read_per_token"],
            None,
        ),
        ("neuron cache hit rate, native", s["cache_hit_rate"], 1.0, None),
    ]
    for name, value, base, bound in rows:
        tail = f" {bound:>10.4g} {value / bound:>11.3f}" if bound else f" {'-':>10} {'-':>11}"
        print(f"{name:<46} {value:>10.4g} {base:>10.4g} {value / base:>7.3f}{tail}")
    print(
        "\nbaseline: dense (perplexity, bytes: every FFN row each token); for read requests,"
        " one request per row read (no coalescing). bound: the oracle, i.e. exactly the truly"
        " active neurons (perplexity: native oracle run, equal to dense; bytes: true active"
        " rows without / with the window)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
