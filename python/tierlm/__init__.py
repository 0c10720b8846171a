"""tierlm: run and fine-tune transformer language models that do not fit in fast memory."""

from tierlm import _core, io, plan
from tierlm.errors import (
    BudgetError,
    CorruptError,
    InvalidArgumentError,
    NotFoundError,
    TierlmError,
    UnsupportedError,
)
from tierlm.expert_usage import profile_experts
from tierlm.export import export  # noqa: E402  (binds the function over the submodule name)
from tierlm.package import Package  # noqa: E402
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
    "export",
    "Package",
    "plan",
    "profile_experts",
]

from tierlm.model import GenerateResult, Model, Token, load  # noqa: E402

__all__ += ["GenerateResult", "Model", "Token", "load"]

from tierlm.paths import cmake_dir, include_dir, library_path  # noqa: E402

__all__ += ["cmake_dir", "include_dir", "library_path"]


def __getattr__(name):
    # tierlm.train imports torch, so it loads on first use rather than with `import tierlm`.
    if name == "train":
        import importlib

        return importlib.import_module("tierlm.train")
    raise AttributeError(f"module 'tierlm' has no attribute {name!r}")
