"""The shape of manifest.json and graph.json as JSON values (objects, lists, integers,
strings), checked before any field is used, so a damaged or crafted document is a CorruptError
naming the file and the field instead of a KeyError or TypeError further on."""

from tierlm.errors import CorruptError


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(ok, where, what):
    if not ok:
        raise CorruptError(f"{where}: {what}")


def _fields(entry, where, kinds, optional=()):
    """entry must be an object whose keys in `kinds` (required unless in optional) pass their
    predicate (None allowed for optional ones)."""
    _require(isinstance(entry, dict), where, "is not an object")
    for key, (ok, expected) in kinds.items():
        if key not in entry:
            _require(key in optional, where, f"lacks {key!r}")
            continue
        value = entry[key]
        _require((key in optional and value is None) or ok(value), f"{where}.{key}", expected)


_NAME = (lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v, "not a name")
_COUNT = (lambda v: _integer(v) and v >= 0, "not an integer 0 or more")
_TENSOR = {
    "dtype": (lambda v: isinstance(v, str), "not a string"),
    "shape": (lambda v: isinstance(v, list) and all(_integer(d) and d > 0 for d in v), "no shape"),
    "file": _NAME,
    "offset": _COUNT,
    "nbytes": _COUNT,
    "crc32": (lambda v: _integer(v) and 0 <= v < 2**32, "not a CRC-32"),
}


def check_manifest_types(manifest, where):
    _require(isinstance(manifest, dict), where, "is not a JSON object")
    kinds = {
        "config": (lambda v: isinstance(v, dict), "not an object"),
        "files": (lambda v: isinstance(v, list), "not a list"),
        "tensors": (lambda v: isinstance(v, dict), "not an object"),
    }
    _fields(manifest, where, kinds)
    for i, entry in enumerate(manifest["files"]):
        _fields(entry, f"{where}: files[{i}]", {"name": _NAME, "size": _COUNT})
    for name, entry in manifest["tensors"].items():
        _fields(entry, f"{where}: tensors.{name}", _TENSOR, optional=("crc32",))
    tokenizer = manifest.get("tokenizer")
    _require(tokenizer is None or isinstance(tokenizer, dict), f"{where}: tokenizer", "not object")


_STRING = (lambda v: isinstance(v, str), "not a string")
_OP = {
    "op": _STRING,
    "in": (lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "not names"),
    "out": _STRING,
    "layer": (_integer, "not an integer"),
    "weight": _STRING,
    "bias": _STRING,
    "heads": (lambda v: _integer(v) and v > 0, "not a positive integer"),
    "kv_heads": (lambda v: _integer(v) and v > 0, "not a positive integer"),
    "head_dim": (lambda v: _integer(v) and v > 0, "not a positive integer"),
    "eps": (_number, "not a number"),
    "scale": (_number, "not a number"),
    "offset": (_integer, "not an integer"),
}
_OPTIONAL = tuple(k for k in _OP if k not in ("op", "in", "out"))


def check_graph_types(graph, where):
    _require(isinstance(graph, dict), where, "is not a JSON object")
    kinds = {
        "inputs": (lambda v: isinstance(v, dict | list), "not an object"),
        "output": _STRING,
        "values": (lambda v: isinstance(v, dict), "not an object"),
        "ops": (lambda v: isinstance(v, list), "not a list"),
    }
    _fields(graph, where, kinds)
    for name, width in graph["values"].items():
        _require(_integer(width) and width > 0, f"{where}: values.{name}", "not a positive width")
    for i, op in enumerate(graph["ops"]):
        _fields(op, f"{where}: ops[{i}]", _OP, optional=_OPTIONAL)
