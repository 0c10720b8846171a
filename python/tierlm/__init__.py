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
