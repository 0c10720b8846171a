"""Byte sizes as users write them ("512MiB", "4GB", 1048576) and as tierlm prints them."""

import re

from tierlm.errors import InvalidArgumentError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(value, what="size"):
    """Returns a byte count from an int or a string such as "512MiB" or "1.5GB"."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what}: expected a byte count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgumentError(f"{what}: {value} is negative")
        return value
    match = _PATTERN.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise InvalidArgumentError(
            f"{what}: cannot read {value!r} as a size; write bytes or e.g. 512MiB, 4GiB, 2GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def round_up(nbytes, multiple):
    """nbytes rounded up to a multiple of `multiple`."""
    return -(-nbytes // multiple) * multiple


def format_size(nbytes):
    """Returns "4.0 MiB"-style text for a byte count."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
