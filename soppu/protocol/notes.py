"""Per-service notes on shared fields. A request shape is defined once in :mod:`soppu.protocol`; what each service
does with a field (the engine refuses it, the gateway never forwards it) is that service's to document. A
service's subclass passes :func:`schema_notes` as its ``json_schema_extra``, so its OpenAPI schema says so
without redeclaring the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["schema_notes"]


def schema_notes(
    descriptions: dict[str, str], examples: list[dict[str, Any]] | None = None
) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` setting each named field's description (and the model's examples). A name that is
    not a field fails when the schema is built, not silently."""

    def extra(schema: dict[str, Any]) -> None:
        properties = schema["properties"]
        for name, description in descriptions.items():
            if name not in properties:
                raise KeyError(f"schema note for {name!r}, which is not a field of {schema.get('title')!r}")
            properties[name]["description"] = description
        if examples is not None:
            schema["examples"] = examples

    return extra
