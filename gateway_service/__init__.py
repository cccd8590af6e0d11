"""The gateway (FastAPI on uvicorn, port 8080): the security boundary in front of the backends.

It owns authentication (API keys through ``soppu.auth``), resolving a user's adapter name to the stored
version a backend can load, routing (consistent hashing with bounded load, health checks, failover, retries),
per-user limits, and relaying LoRAX and OpenAI-style requests and streams. It talks to backends over HTTP only
and never forwards a client's credentials. ``python -m gateway_service --help`` lists the settings.
"""

from .app import create_app
from .settings import BackendConfig, BackendKind, GatewaySettings

__all__ = ["BackendConfig", "BackendKind", "GatewaySettings", "create_app"]
