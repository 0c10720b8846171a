"""Train the demo model: a small OPT (ReLU FFN, pre-LayerNorm) causal LM on the Python
standard library's own sources, which every machine with Python has offline.

Deterministic: fixed file order, fixed seeds, one thread. The held-out split is chosen by a
hash of each file's path so it does not depend on which other files exist. Output is a
Hugging Face directory (config.json, model.safetensors in f16, tokenizer files) plus
train_info.json with the run's numbers.

    python scripts/train_demo_model.py --out python/tierlm/data/demo-opt --steps 750
    python scripts/train_demo_model.py --out /tmp/x --steps 5 --time-steps   # measure speed
    python scripts/train_demo_model.py --out DIR --predictors-only           # predictors only
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from tierlm.sparse.corpus import load_texts, stdlib_root

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids: pad 1, bos = eos = 2, unk 3


def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Like OPT's tokenizer: every encoded text starts with </s> (id 2).
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", 2)]
    )
    return tok


def encode_corpus(tok, texts):
    """Token ids of the texts, each document preceded by </s> (as the model sees prompts)."""
    import numpy as np

    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
    return np.asarray(ids, dtype=np.int64)


def build_model(vocab_size, args):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        ffn_dim=args.ffn,
        num_attention_heads=args.heads,
        max_position_embeddings=args.context,
        do_layer_norm_before=True,
        word_embed_proj_dim=args.hidden,
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        enable_bias=True,
        layer_norm_elementwise_affine=True,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=True,
        init_std=0.02,
    )
    return OPTForCausalLM(config)


def evaluate(model, ids, context, max_blocks=None):
    """Perplexity over non-overlapping blocks of the held-out ids."""
    import torch

    n_blocks = len(ids) // context
    if max_blocks:
        n_blocks = min(n_blocks, max_blocks)
    blocks = torch.from_numpy(ids[: n_blocks * context].reshape(n_blocks, context))
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, n_blocks, 16):
            batch = blocks[start : start + 16]
            logits = model(input_ids=batch).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += batch[:, 1:].numel()
    model.train()
    return math.exp(total / count)


def train_demo_predictors(out, threads=1):
    """Activation predictors for the saved model (tierlm.sparse.predictor), deterministic:
    calibration = training-split files, measured on held-out files."""
    import numpy as np
    import torch
    from tierlm.sparse.corpus import held_out_text, train_text
    from tierlm.sparse.model import load_model
    from tierlm.sparse.predictor import default_ranks, train_predictors

    torch.set_num_threads(threads)
    loaded = load_model(out)
    calib = np.array(loaded.encode(train_text(max_chars=400_000)))
    held = np.array(loaded.encode(held_out_text()))
    ranks = default_ranks(loaded.num_layers, loaded.hidden_size)
    t0 = time.time()
    predictors = train_predictors(loaded, calib, held, ranks, max_tokens=32768, seed=0)
    predictors.metrics["seconds"] = round(time.time() - t0, 1)
    predictors.save(out)
    for m in predictors.metrics["layers"]:
        print(
            f"layer {m['layer']} rank {m['rank']}: recall {m['recall']:.3f} "
            f"precision {m['precision']:.3f} active {m['true_density']:.3f}",
            flush=True,
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=6144)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-steps", action="store_true", help="only time a few steps")
    parser.add_argument(
        "--predictors-only", action="store_true", help="only train predictors for --out"
    )
    parser.add_argument("--stdlib", type=Path, default=None, help="default: this Python's")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import torch
    from transformers import PreTrainedTokenizerFast

    torch.set_num_threads(args.threads)
    if args.predictors_only:
        return train_demo_predictors(args.out, args.threads)
    torch.manual_seed(args.seed)
    root = args.stdlib or stdlib_root()
    t0 = time.time()
    train_texts, held_texts = load_texts(root)
    tok = train_tokenizer(train_texts, args.vocab)
    train_ids = encode_corpus(tok, train_texts)
    held_ids = encode_corpus(tok, held_texts)
    print(
        f"corpus: {len(train_texts)} train files ({len(train_ids)} tokens), "
        f"{len(held_texts)} held-out files ({len(held_ids)} tokens), "
        f"tokenizer {time.time() - t0:.1f}s",
        flush=True,
    )

    model = build_model(tok.get_vocab_size(), args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(args.seed)
    train_t = torch.from_numpy(train_ids)
    n_start = len(train_ids) - args.context - 1
    model.train()
    t_train = time.time()
    for step in range(args.steps):
        starts = torch.randint(0, n_start, (args.batch,), generator=gen)
        batch = torch.stack([train_t[s : s + args.context] for s in starts.tolist()])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            elapsed = time.time() - t_train
            print(
                f"step {step} loss {loss.item():.3f} lr {lr_at(step):.2e} "
                f"{elapsed:.0f}s ({elapsed / (step + 1):.2f}s/step)",
                flush=True,
            )
    train_seconds = time.time() - t_train
    if args.time_steps:
        return

    model.eval()
    ppl_f32 = evaluate(model, held_ids, args.context)
    args.out.mkdir(parents=True, exist_ok=True)
    model = model.to(torch.float16)
    model.config.dtype = "float16"
    model.save_pretrained(args.out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=args.context,
    )
    fast.save_pretrained(args.out)
    # Perplexity of the shipped f16 weights, computed in f32.
    ppl_f16 = evaluate(model.float(), held_ids, args.context)
    info = {
        "python": sys.version.split()[0],
        "stdlib_root": str(root),
        "train_files": len(train_texts),
        "held_out_files": len(held_texts),
        "train_tokens": int(len(train_ids)),
        "held_out_tokens": int(len(held_ids)),
        "parameters": int(n_params),
        "steps": args.steps,
        "batch": args.batch,
        "context": args.context,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "held_out_perplexity_f32": round(ppl_f32, 3),
        "held_out_perplexity": round(ppl_f16, 3),
    }
    (args.out / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2), flush=True)
    train_demo_predictors(args.out, args.threads)


if __name__ == "__main__":
    main()
