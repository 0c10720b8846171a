"""Opening a GGUF file with the `gguf` package's reader, with the checks its reader leaves out:
every tensor's type must be one tierlm stores and its bytes must lie inside the file, so a
truncated or inconsistent file is an error naming the file and the tensor.
"""

import os

import numpy as np

from tierlm.errors import CorruptError, NotFoundError, UnsupportedError

# GGUF type name -> package dtype (the block types are byte-identical, docs/package-format.md)
GGUF_DTYPES = {
    "F32": "f32",
    "F16": "f16",
    "BF16": "bf16",
    "Q8_0": "q8_0",
    "Q4_0": "q4_0",
    "Q4_1": "q4_1",
    "Q5_0": "q5_0",
    "Q5_1": "q5_1",
    "Q4_K": "q4_k",
    "Q5_K": "q5_k",
    "Q6_K": "q6_k",
}
SUPPORTED = ", ".join(GGUF_DTYPES)


def _reader_class():
    import gguf

    class CheckedReader(gguf.GGUFReader):
        """GGUFReader that validates each tensor's type and extent before mapping it (the stock
        reader fails on these with a numpy reshape error that names nothing)."""

        def __init__(self, path, mode="r"):
            self.path = os.fspath(path)
            super().__init__(path, mode)

        def _build_tensors(self, start_offs, fields):
            size = len(self.data)
            for field in fields:
                _, name_data, _, dims, raw_type, offset = field.parts
                name = bytes(name_data).decode("utf-8", "replace")
                shape = [int(d) for d in reversed(dims.tolist())]
                try:
                    kind = gguf.GGMLQuantizationType(int(raw_type[0]))
                except ValueError:
                    raise UnsupportedError(
                        f"{self.path}: tensor {name} has GGML type number {int(raw_type[0])}, "
                        f"unknown to this gguf package; tierlm imports {SUPPORTED}"
                    ) from None
                if kind.name not in GGUF_DTYPES:
                    raise UnsupportedError(
                        f"{self.path}: tensor {name} is {kind.name}, which tierlm does not "
                        f"store; tierlm imports {SUPPORTED} (re-quantize the model to one of "
                        "them with llama.cpp's llama-quantize, e.g. Q4_K_M)"
                    )
                elems, block_bytes = gguf.GGML_QUANT_SIZES[kind]
                if shape and shape[-1] % elems:
                    raise CorruptError(
                        f"{self.path}: tensor {name} {kind.name} has rows of {shape[-1]} "
                        f"elements, not whole blocks of {elems}"
                    )
                nbytes = int(np.prod(shape, dtype=np.int64)) // elems * block_bytes
                begin = start_offs + int(offset[0])
                if begin + nbytes > size:
                    raise CorruptError(
                        f"{self.path}: tensor {name} ({nbytes} B at offset {begin}) lies beyond "
                        f"the end of the file ({size} B): the file is truncated (re-download "
                        "or re-convert it)"
                    )
            super()._build_tensors(start_offs, fields)

    return CheckedReader


def gguf_read(path):
    """Returns a gguf.GGUFReader of path, or raises CorruptError/UnsupportedError naming it."""
    if not os.path.isfile(path):
        raise NotFoundError(f"{path}: no such GGUF file")
    reader_class = _reader_class()
    try:
        reader = reader_class(path, "r")
    except (CorruptError, UnsupportedError):
        raise
    except (ValueError, KeyError, IndexError, OverflowError, UnicodeDecodeError) as error:
        raise CorruptError(
            f"{path}: not a readable GGUF file ({type(error).__name__}: {error}); truncated "
            "or damaged?"
        ) from None
    return reader


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}
_KIND_NAMES[list] = "a list"


def _is(value, kind):
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, int | float) if kind is float else isinstance(value, kind)


def field_value(reader, key, kind, default=None, items=None):
    """The value of a metadata key, checked to be of `kind` (int, float, str, bool, or list
    with entries of type `items`), or default when absent; a value of another type is a
    CorruptError naming the file and the key, never a TypeError further on."""
    field = reader.fields.get(key)
    if field is None:
        return default
    try:
        value = field.contents()
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise CorruptError(f"{reader.path}: GGUF metadata {key} is unreadable ({error})") from None
    if not _is(value, kind) or (items is not None and not all(_is(v, items) for v in value)):
        expected = _KIND_NAMES[kind] + (f" of {_KIND_NAMES[items]}s" if items else "")
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise CorruptError(f"{reader.path}: GGUF metadata {key} is {shown}, not {expected}")
    return float(value) if kind is float else value
