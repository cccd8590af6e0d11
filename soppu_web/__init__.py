"""The web pieces every SOPPU service shares and the core may not hold (it imports no web framework): the
Server-Sent Events response (:mod:`soppu_web.sse`) and serving an app from command-line flags
(:mod:`soppu_web.serve`). Depends on Starlette and uvicorn only; never on a service."""
