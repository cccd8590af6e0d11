"""Our LoRAX-compatible inference engine (FastAPI, port 8082): the embedded default backend, serving plain
and compressed adapters with batching across users.

Not built yet: it lands with the engine issue.
"""
