"""The demo model's text: the Python standard library's own sources, which every machine with
Python has offline. Files in sorted order; a file is held out when a hash of its path says
so, which does not depend on which other files exist."""

import sys
import zlib
from pathlib import Path

_SKIP = {"site-packages", "dist-packages", "test", "tests", "__pycache__"}


def stdlib_root():
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return Path(sys.base_prefix) / "lib" / version


def stdlib_files(root=None):
    """Every .py file of the standard library (relative paths, sorted), minus tests and
    installed packages."""
    root = Path(root or stdlib_root())
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIP.intersection(rel.parts[:-1]):
            continue
        files.append(rel.as_posix())
    return sorted(files)


def is_held_out(rel):
    return zlib.crc32(rel.encode()) % 50 == 0


def load_texts(root=None):
    """(train texts, held-out texts) in file order."""
    root = Path(root or stdlib_root())
    train, held = [], []
    for rel in stdlib_files(root):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        (held if is_held_out(rel) else train).append(text)
    return train, held


def held_out_text(max_chars=None, root=None):
    text = "".join(load_texts(root)[1])
    return text[:max_chars] if max_chars else text


def train_text(max_chars=None, root=None, stride=7):
    """Training-split text, deterministic: every stride-th training file until max_chars."""
    root = Path(root or stdlib_root())
    out, size = [], 0
    for rel in [f for f in stdlib_files(root) if not is_held_out(f)][::stride]:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        out.append(text)
        size += len(text)
        if max_chars and size >= max_chars:
            break
    text = "".join(out)
    return text[:max_chars] if max_chars else text
