"""atheris target: a training checkpoint's manifest.json read by OffloadTrainer.resume.

One tiny Llama trainer saves a real checkpoint once; each input replaces that checkpoint's
manifest and the trainer resumes from it. A damaged or foreign manifest must raise a
TierlmError naming the file; any other exception is a defect. A manifest that resumes must
leave a trainer that still trains. Run: python3 tests/fuzz/fuzz_checkpoint.py CORPUS_DIR
"""

import os
import sys

from fuzz_python import instrumented, run_fuzzer, scratch_dir

with instrumented():
    import tierlm.train as tt
    from tierlm.errors import TierlmError


def _trainer():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=11,
        hidden_size=8,
        intermediate_size=6,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    root = scratch_dir("checkpoint")
    trainer = tt.offload(model, disk_dir=root, lr=1e-3)
    ids = torch.arange(6).reshape(1, 6) % config.vocab_size
    model(ids, labels=ids).loss.backward()
    trainer.step()
    directory = os.path.join(root, "ckpt")
    path = trainer.save(directory)
    return model, trainer, directory, os.path.join(path, "manifest.json")


_MODEL, _TRAINER, _DIR, _MANIFEST = _trainer()


def seed():
    """The manifest of the saved checkpoint (what tests/fuzz/corpus/checkpoint/seed-* hold)."""
    with open(_MANIFEST, "rb") as f:
        return f.read()


def test_one_input(data):
    with open(_MANIFEST, "wb") as f:
        f.write(data)
    try:
        _TRAINER.resume(_DIR)
    except TierlmError:
        return
    ids = (data[:4] or b"\0").ljust(4, b"\0")
    batch = [[b % _MODEL.config.vocab_size for b in ids]]
    import torch

    batch = torch.tensor(batch)
    _MODEL(batch, labels=batch).loss.backward()
    _TRAINER.step()


if __name__ == "__main__":
    run_fuzzer(sys.argv, test_one_input)
