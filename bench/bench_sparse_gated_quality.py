"""Claim: thresholded SiLU sparsity on a gated (Llama-family) FFN is lossy; this prints its
quality cost against dense for several target sparsities, with the threshold alone, with the
trained predictors (torch), and in the native executor (tierlm.load(..., sparse=True)).

A random small Llama (hidden 200, 3 layers, ffn 307, GQA 10/2, random weights: no real
activation structure, so the predictors are weak and the costs are upper bounds of what a
trained model shows); predictors trained on random tokens; logit error = mean over positions
of max|dlogit| / max|logit|, agreement = teacher-forced top-1 agreement with dense. The
numbers are deterministic (no timing): one run is the median. The baseline is dense (error 0,
agreement 1); the bound is the threshold-only column (a perfect predictor).

    python bench/bench_sparse_gated_quality.py [--targets 0.3,0.5,0.7,0.9]
"""

import argparse
import math
import os
import shutil
import tempfile

import numpy as np
import torch


def random_llama(path, seed=1):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=211,
        hidden_size=200,
        num_hidden_layers=3,
        num_attention_heads=10,
        num_key_value_heads=2,
        intermediate_size=307,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-model scales, as tests/python/models.py
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() == 1:
                p.copy_(1 + 0.1 * noise)
            elif "embed" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))
    model.save_pretrained(path)


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.3,0.5,0.7,0.9")
    parser.add_argument("--train-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=4)
    args = parser.parse_args()

    import tierlm
    from tierlm.sparse.model import load_model
    from tierlm.sparse.predictor import default_ranks, train_predictors
    from tierlm.sparse.quality import gated_quality

    work = tempfile.mkdtemp(prefix="bench_sparse_gated-")
    base = os.path.join(work, "hf")
    random_llama(base)
    rng = np.random.default_rng(0)
    train = rng.integers(0, 211, args.train_tokens).tolist()
    held = rng.integers(0, 211, 200).tolist()
    print(
        "| target sparsity | recall / precision | logit error: threshold only / predicted "
        "(torch) | top-1: threshold only / predicted | executor: logit error / top-1 | "
        "FFN bytes read / token vs dense |"
    )
    print("|---|---|---|---|---|---|")
    for target in (float(t) for t in args.targets.split(",")):
        hf = os.path.join(work, f"hf-{target}")
        shutil.copytree(base, hf)
        lm = load_model(hf)
        ranks = default_ranks(lm.num_layers, lm.hidden_size)
        pred = train_predictors(
            lm, train, held, ranks, epochs=4, min_steps=200, target_sparsity=target
        )
        q = gated_quality(lm, pred, held)
        pred.save(hf)
        pkg = os.path.join(work, f"pkg-{target}")
        tierlm.export(hf, pkg, progress=False, sparse=True)
        dense = tierlm.load(pkg)
        sparse = tierlm.load(pkg, sparse=True, sparse_window=args.window)
        errors, agree = [], []
        for n in range(1, 65, 4):
            a, b = dense.logits(held[:n]), sparse.logits(held[:n])
            errors.append(relative_error(b, a))
            agree.append(int(np.argmax(a) == np.argmax(b)))
        s = sparse.generate(held[:16], max_new_tokens=32, stop_at_eos=False).stats
        layers = pred.metrics["layers"]
        recall = np.mean([m["recall"] for m in layers])
        precision = np.mean([m["precision"] for m in layers])
        t, p = q["threshold_only"], q["predicted"]
        ratio = 100 * s["sparse_bytes_read_per_token"] / s["dense_ffn_bytes_per_token"]
        print(
            f"| {target} | {recall:.2f} / {precision:.2f} | {t['logit_error']:.3f} / "
            f"{p['logit_error']:.3f} | {t['top1_agreement']:.2f} / {p['top1_agreement']:.2f} | "
            f"{np.mean(errors):.3f} / {np.mean(agree):.2f} | {ratio:.0f}% |"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
