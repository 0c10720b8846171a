"""Exceptions raised by tierlm. System failures surface as OSError with errno set."""


class TierlmError(Exception):
    """Base class of tierlm's own errors."""


class BudgetError(TierlmError, MemoryError):
    """A tier cannot hold a request within its byte budget."""


class CorruptError(TierlmError, ValueError):
    """A file's contents are damaged: wrong size, checksum or format."""


class InvalidArgumentError(TierlmError, ValueError):
    """An argument or option is malformed."""


class NotFoundError(TierlmError, LookupError):
    """A tensor, key or entry that should exist does not."""


class UnsupportedError(TierlmError, NotImplementedError):
    """The build, the machine or the model needs a feature tierlm does not have."""
