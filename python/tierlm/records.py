"""Native records (stats, placement, config) as plain dicts and columns.

libtierlm binds each record once, with read-only fields and derived properties
(bindings/records.cpp); these two walks over the bound properties are the only conversion,
so a field added in C++ shows up here, in `model.stats()` and in `--json`, with its name.
"""


def _is_record(value):
    return getattr(type(value), "_record", False)


def fields(record_type):
    """Names of a bound record type's fields and derived properties, in binding order."""
    return [name for name, attr in vars(record_type).items() if isinstance(attr, property)]


def _plain(value):
    if _is_record(value):
        return as_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def as_dict(record):
    """{field: value} of a bound record, nested records and lists of them converted too."""
    return {name: _plain(getattr(record, name)) for name in fields(type(record))}


def columns(records, record_type):
    """{field: [value per record]} of a list of bound records of one type."""
    names = fields(record_type)
    return {name: [getattr(r, name) for r in records] for name in names}
