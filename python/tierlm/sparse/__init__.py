"""Sparse-neuron flash loading (LLM in a flash): activation predictors, the row-column
bundled FFN layout, the neuron window, and offline quality checks."""
