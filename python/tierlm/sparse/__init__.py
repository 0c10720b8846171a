"""Sparse-neuron flash loading (LLM in a flash): activation predictors, the row-column
bundled FFN layout, the neuron window, and offline quality checks."""

from pathlib import Path

# The OPT model trained by scripts/train_demo_model.py, shipped inside the package.
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "data" / "demo-opt"
