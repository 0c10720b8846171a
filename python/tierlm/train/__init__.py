"""tierlm.train: fused native AdamW and offloaded fine-tuning (see tierlm.train.offload)."""

from tierlm.train.adamw import AdamW, adam_step

__all__ = ["AdamW", "adam_step"]
