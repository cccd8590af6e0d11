"""The example fixture: a tiny Llama base model and per-user LoRA adapters, generated locally and deterministically."""

from soppu.examples.build import ExamplesSpec, build_examples

__all__ = ["ExamplesSpec", "build_examples"]
