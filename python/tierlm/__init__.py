"""tierlm: run and fine-tune transformer language models that do not fit in fast memory."""

from tierlm import _core, io
from tierlm.errors import (
    BudgetError,
    CorruptError,
    InvalidArgumentError,
    NotFoundError,
    TierlmError,
    UnsupportedError,
)
from tierlm.sizes import format_size, parse_size
from tierlm.tiers import DiskExtent, DiskTier, HostTier

__version__ = _core.build_info()["version"]

__all__ = [
    "BudgetError",
    "CorruptError",
    "DiskExtent",
    "DiskTier",
    "HostTier",
    "InvalidArgumentError",
    "NotFoundError",
    "TierlmError",
    "UnsupportedError",
    "format_size",
    "io",
    "parse_size",
]


def __getattr__(name):
    # tierlm.train imports torch, so it loads on first use rather than with `import tierlm`.
    if name == "train":
        import importlib

        return importlib.import_module("tierlm.train")
    raise AttributeError(f"module 'tierlm' has no attribute {name!r}")
