"""The HTTP routes, one module per API family: ``lorax`` (LoRAX's own), ``openai`` (OpenAI-style and the model
list), ``ops`` (health, readiness, metrics, admin invalidation). Each exports a ``router``; routes are thin:
schema in, a :mod:`gateway_service.forward` call, response out."""

from . import lorax, openai, ops

__all__ = ["lorax", "openai", "ops"]
