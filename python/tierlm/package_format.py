"""The package format's names and numbers (docs/package-format.md), in one place: the exporter
writes them and the reader checks them, so neither imports the other. Dtype names and sizes
live in tierlm.dtypes, which both use too."""

FORMAT = "tierlm-package"  # manifest["format"]
FORMAT_VERSION = 1  # the newest manifest["format_version"] this tierlm writes and reads
ALIGN = 4096  # every tensor starts at a multiple of this in its weight file
MANIFEST = "manifest.json"
GRAPH = "graph.json"
TOKENIZER_DIR = "tokenizer"


def weight_file(index):
    """Name of the index-th weight file."""
    return f"weights-{index}.bin"


EXPERT_USAGE = "expert_usage.json"  # a mixture-of-experts package's usage profile (optional)
