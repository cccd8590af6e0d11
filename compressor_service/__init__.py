"""The compressor service (FastAPI, port 8081): adapter uploads, compression jobs, publishing, users and keys.

Where a request goes, in one read::

    deps.get_principal                      API key (Bearer / X-API-Key) -> Principal via soppu.auth.KeyRing (401)
    routes/<resource>.py                    access.authorize (403), names checked (422), then a function of
      -> views.py (in a thread)             views.py run in a worker thread, since boto3 and torch block
    upload: uploads.receive_form            multipart parsed as it streams, parts to temp files (413 over the cap)
      -> views.accept                       soppu.adapter collect + validate (4xx), then
                                            soppu.registry.versions.accept_upload (original stored, job queued)
      -> jobs.JobRunner.enqueue             bounded asyncio.Queue -> worker task -> Pipeline.run_job in a thread
      -> 202 {job_id, version, status_url}  state and report are read back from the job record in the bucket
    errors.py                               every failure -> {"error": {"code", "message"}}, one status per code

``app.create_app()`` wires it: settings (``settings.py``), the runtime built in the lifespan (store, key ring,
gate and pipeline, job runner, gateway notifier), error handlers, metrics (``metrics.py``).
Run it with ``python -m compressor_service --help``.
"""

__all__: list[str] = []
