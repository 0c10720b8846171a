"""Runs of consecutive integers as text, for the layer and expert lists the CLI prints."""


def format_ranges(values, sep=","):
    """[0, 1, 2, 5, 7, 8] -> "0-2,5,7-8" (values sorted first; "" for none)."""
    runs = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return sep.join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
