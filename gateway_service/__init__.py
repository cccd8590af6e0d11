"""The gateway (FastAPI, port 8080): per-user ``/generate``, authentication, adapter resolution, routing.

Not built yet: it lands with the gateway issue. It talks to backends over HTTP only.
"""
