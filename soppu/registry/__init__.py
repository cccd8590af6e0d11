"""The registry: what the bucket says about users' adapters (jobs, versions, manifests, pointers, cohorts),
and the pipeline that turns an upload into a served version. The compressor service is a thin HTTP layer
over it; the gateway reads the pointers and manifests it writes."""

from soppu.registry.records import (
    CohortState,
    IdempotencyRecord,
    JobRecord,
    JobState,
    Manifest,
    Pointer,
    ServedFrom,
    Tombstone,
)

__all__ = [
    "CohortState",
    "IdempotencyRecord",
    "JobRecord",
    "JobState",
    "Manifest",
    "Pointer",
    "ServedFrom",
    "Tombstone",
]
