"""Writes python/tierlm/data/calibration/{calibration,held_out}.txt: English prose from the
Python Language Reference and Library topics that CPython ships inside its standard library
(Lib/pydoc_data/topics.py, the text `help()` shows; PSF License Version 2, see README.md
there). Topics in sorted order; every 8th topic is held out, so the two files share no text.
Rerun with the same Python (3.11) to reproduce the files byte for byte."""

import argparse
import pydoc_data.topics
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "python" / "tierlm" / "data" / "calibration"
HELD_OUT_EVERY = 8


def split_topics(max_calibration_chars):
    names = sorted(pydoc_data.topics.topics)
    calibration, held = [], []
    for k, name in enumerate(names):
        (held if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else calibration).append(
            pydoc_data.topics.topics[name].strip() + "\n"
        )
    text = "\n".join(calibration)
    return text[:max_calibration_chars], "\n".join(held)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-calibration-chars", type=int, default=240_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    calibration, held = split_topics(args.max_calibration_chars)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.txt").write_text(calibration, encoding="utf-8")
    (args.out / "held_out.txt").write_text(held, encoding="utf-8")
    print(f"calibration {len(calibration)} chars, held out {len(held)} chars -> {args.out}")


if __name__ == "__main__":
    main()
