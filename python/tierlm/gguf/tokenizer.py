"""The tokenizer of a GGUF file rebuilt as a `tokenizers` tokenizer.json, to give the ids
llama.cpp's own tokenizer gives (llama-vocab.cpp), plus a tokenizer_config.json with the special
tokens and the chat template, so the package's tokenizer/ reads like a Hugging Face one.

- tokenizer.ggml.model "gpt2": byte-level BPE with the file's merges, split first by the regex
  llama.cpp uses for tokenizer.ggml.pre (PRE_SPLITS);
- "llama": SentencePiece-style BPE: merges ranked by the merged piece's score, "▁" for spaces
  (and before the text and after every special token when add_space_prefix), byte fallback.
"""

import json
import os

from tierlm.errors import CorruptError, UnsupportedError
from tierlm.gguf.reader import field_value

CONTROL, USER_DEFINED, UNKNOWN = 3, 4, 2  # llama.cpp's token types (gguf.TokenType)

# llama.cpp's regexes (llama-vocab.cpp, unicode.cpp) for the pre-tokenizer types it names
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre type -> (regexes applied in turn, ignore_merges: a word that is a token is kept whole)
PRE_SPLITS = {
    "default": ((_GPT2,), False),
    "gpt-2": ((_GPT2,), False),
    "gpt2": ((_GPT2,), False),
    "smollm": ((r"\p{N}", _GPT2), False),
    "starcoder": ((r"\p{N}", _GPT2), False),
    "refact": ((r"\p{N}", _GPT2), False),
    "llama3": ((_LLAMA3,), True),
    "llama-bpe": ((_LLAMA3,), True),
    "llama-v3": ((_LLAMA3,), True),
    "qwen2": ((_QWEN2,), False),
    "deepseek-r1-qwen": ((_QWEN2,), False),
}


def _byte_level(tokens, merges, pre, path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if pre not in PRE_SPLITS:
        raise UnsupportedError(
            f"{path}: tokenizer.ggml.pre {pre!r} is not known to tierlm, so its split regex is "
            f"unknown; known: {', '.join(sorted(PRE_SPLITS))}"
        )
    splits, ignore_merges = PRE_SPLITS[pre]
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _sentencepiece(tokens, scores, add_space_prefix, unk):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores, strict=True):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    # llama.cpp merges the adjacent pair whose joined piece scores highest
    merges.sort()
    tok = Tokenizer(
        models.BPE(
            vocab,
            [(m[3], m[4]) for m in merges],
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always" if add_space_prefix else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _built(path, build, *args):
    """build(*args), with the `tokenizers` library's refusal of a vocabulary (an untyped
    Exception from Rust: a merge of unknown tokens, a bad template) as a CorruptError."""
    try:
        return build(*args)
    except (UnsupportedError, CorruptError):
        raise
    except Exception as error:
        raise CorruptError(f"{path}: the GGUF vocabulary cannot be rebuilt ({error})") from None


def build_tokenizer(reader, path):
    """Returns (tokenizers.Tokenizer, tokenizer_config dict) for the GGUF file's vocabulary."""
    from tokenizers import AddedToken, processors

    def meta(key, kind, default=None, items=None):
        return field_value(reader, f"tokenizer.{key}", kind, default, items)

    model = meta("ggml.model", str)
    tokens = meta("ggml.tokens", list, items=str)
    if tokens is None:
        raise UnsupportedError(f"{path}: the file has no vocabulary (tokenizer.ggml.tokens)")
    types = meta("ggml.token_type", list, items=int) or [1] * len(tokens)
    scores = meta("ggml.scores", list, items=float) or [0.0] * len(tokens)
    for key, values in (("token_type", types), ("scores", scores)):
        if len(values) != len(tokens):
            raise CorruptError(
                f"{path}: tokenizer.ggml.{key} has {len(values)} entries for {len(tokens)} "
                "tokens (inconsistent GGUF vocabulary)"
            )
    names = {}
    for key in ("bos", "eos", "unknown", "padding"):
        token_id = meta(f"ggml.{key}_token_id", int)
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise CorruptError(
                f"{path}: tokenizer.ggml.{key}_token_id {token_id} is not a token of the "
                f"{len(tokens)}-token vocabulary"
            )
        names[key] = tokens[token_id] if token_id is not None else None
    if model == "gpt2":
        merges = meta("ggml.merges", list, [], items=str)
        if any(" " not in m for m in merges):
            raise CorruptError(f"{path}: tokenizer.ggml.merges has an entry without a space")
        tok = _built(path, _byte_level, tokens, merges, meta("ggml.pre", str, "default"), path)
        add_bos = meta("ggml.add_bos_token", bool, False)
    elif model == "llama":
        prefix = meta("ggml.add_space_prefix", bool, True)
        tok = _built(path, _sentencepiece, tokens, scores, prefix, names["unknown"])
        add_bos = meta("ggml.add_bos_token", bool, True)
    else:
        raise UnsupportedError(
            f"{path}: tokenizer.ggml.model {model!r} is not supported; tierlm rebuilds gpt2 "
            "(byte-level BPE) and llama (SentencePiece BPE) vocabularies"
        )
    add_eos = meta("ggml.add_eos_token", bool, False)
    # llama.cpp matches control and user-defined tokens whole before splitting the text
    special = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types, strict=True)
        if kind in (CONTROL, UNKNOWN)
    ]
    plain = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, types, strict=True)
        if kind == USER_DEFINED
    ]
    tok.add_special_tokens(special)
    tok.add_tokens(plain)
    bos, eos = add_bos and names["bos"], add_eos and names["eos"]
    _built(path, _post_process, tok, processors, bos, eos, tokens)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": names["bos"],
        "eos_token": names["eos"],
        "unk_token": names["unknown"],
        "pad_token": names["padding"],
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(1e30),
        "chat_template": meta("chat_template", str),
    }
    return tok, config


def _post_process(tok, processors, bos, eos, tokens):
    """Adds bos/eos around encoded text as llama.cpp's add_special does."""
    if not bos and not eos:
        return
    ids = {t: i for i, t in enumerate(tokens)}
    single = ([f"{bos}:0"] if bos else []) + ["$A:0"] + ([f"{eos}:0"] if eos else [])
    pair = single + ([f"{bos}:1"] if bos else []) + ["$B:1"] + ([f"{eos}:1"] if eos else [])
    specials = [(t, ids[t]) for t in (bos, eos) if t]
    steps = [processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)]
    if tok.post_processor is not None:
        steps.insert(0, tok.post_processor)
    tok.post_processor = processors.Sequence(steps)


def write_tokenizer(reader, path, directory):
    """Writes tokenizer.json and tokenizer_config.json into directory; returns their names."""
    tok, config = build_tokenizer(reader, path)
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return ["tokenizer.json", "tokenizer_config.json"]
