"""The HTTP routes, one module per resource: ``adapters`` (upload, list, report plot, delete), ``jobs``,
``users`` (delete a user, issue a user key), ``keys`` (service keys, revocation), ``cohorts`` (refit) and ``ops``
(health, readiness, metrics). Each exports a ``router``; routes are thin: authorize, call a function of
:mod:`compressor_service.views` in a thread, return a response model."""

from . import adapters, cohorts, jobs, keys, ops, users

__all__ = ["adapters", "cohorts", "jobs", "keys", "ops", "users"]
