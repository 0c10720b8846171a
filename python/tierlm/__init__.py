"""tierlm: run and fine-tune transformer language models that do not fit in fast memory."""

from tierlm import _core, plan
from tierlm.errors import (
    BudgetError,
    CorruptError,
    InvalidArgumentError,
    NotFoundError,
    TierlmError,
    UnsupportedError,
)
from tierlm.sizes import format_size, parse_size
from tierlm.tiers import HostTier

__version__ = _core.build_info()["version"]

__all__ = [
    "BudgetError",
    "CorruptError",
    "HostTier",
    "InvalidArgumentError",
    "NotFoundError",
    "TierlmError",
    "UnsupportedError",
    "format_size",
    "parse_size",
    "plan",
]
