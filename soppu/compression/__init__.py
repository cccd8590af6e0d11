"""Joint compression of many LoRA adapters into shared bases plus per-adapter cores (pure torch, no I/O here
except in ``format``)."""
