"""SOPPU's core library: the PEFT adapter format, the object store and its layout, compression and the CLI.

It depends on torch, safetensors, transformers/tokenizers and boto3, never on a web framework: the services in
``compressor_service``, ``gateway_service`` and ``inference_service`` are thin layers over it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
