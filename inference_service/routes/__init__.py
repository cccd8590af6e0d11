"""The HTTP routes, one module per API family: ``lorax`` (LoRAX's own), ``openai`` (OpenAI-style), ``ops``
(health, tokenize, info, metrics). Each exports a ``router``; routes are thin: schema in, ``begin`` a
generation, response or event stream out."""

from . import lorax, openai, ops

__all__ = ["lorax", "openai", "ops"]
