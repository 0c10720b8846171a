"""GGUF import: a llama.cpp model file (llama, mistral as llama, qwen2) to a tierlm package, its
tensors copied byte for byte and its tokenizer rebuilt as a `tokenizers` tokenizer.json. Files
are read with the `gguf` package's reader; `tierlm.export(MODEL.gguf, OUT)` is the entry point.
"""

GGUF_MAGIC = b"GGUF"


def is_gguf(path):
    """True when path is a file that starts with GGUF's magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False
