"""Numeric options against libtierlm's range table (tierlm/core/limits.hpp).

Python integers have no size, so they are checked here before they reach a fixed-width C++
parameter; the message is libtierlm's, the same as the C API and the CLI print.
"""

import operator

from tierlm import _core
from tierlm.errors import InvalidArgumentError

_RANGES = {r.name: r for r in _core.option_ranges()}


def check(name, value):
    """value as an int inside option `name`'s range; InvalidArgumentError otherwise."""
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    r = _RANGES[name]
    if not r.min <= number <= r.max:
        raise InvalidArgumentError(_core.option_range_error(name, str(number)))
    return number
