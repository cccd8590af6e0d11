"""SOPPU's LoRAX-compatible inference engine (FastAPI, port 8082): one base model serving a LoRA adapter per
request, batched across users.

Where a request goes, in one read::

    routes/lorax.py | routes/openai.py        parse the body into a schemas/ model (422 on bad shapes)
      -> params.py                             LoRAX / OpenAI parameters -> GenerationParams + AdapterRef
      -> generation.begin()                    engine.generate(...), first item awaited before responding,
                                               so errors found up front get their status (422/424/429)
      -> GenerateResponse | sse.EventStreamResponse (one ``data:`` event per token; errors mid-stream
                                               become an ``{"error", "error_type"}`` event on the 200)

``app.create_app()`` wires it: settings (``settings.py``), the engine built in the lifespan, LoRAX-shaped
error bodies (``errors.py`` maps the engine's typed errors onto statuses), metrics (``metrics.py``). The engine
itself (``engine/``: its API in ``engine.py``, batching decisions in ``scheduler.py``, the model in
``runner.py``, the adapter cache, the layers) knows nothing of HTTP.
Run it with ``python -m inference_service --help``.
"""

__all__: list[str] = []
