"""``python -m gateway_service --workers N``: uvicorn is given the worker factory by name (workers need an import
string), and each worker builds its app from the launch's flags, passed on through the environment. One process
stays the plain launch, with the app object itself. (``bench/gateway.py --quick`` runs two real workers.)"""

from __future__ import annotations

from typing import Any

import pytest

from gateway_service import __main__ as launch


def test_workers_get_the_launch_flags_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(launch.uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    monkeypatch.setenv(launch._LAUNCH_ENV, "{}")  # restored afterwards: main() sets it
    argv = ["--workers", "3", "--port", "8123", "--backend", "lorax=http://lorax:80", "--no-adapter", "base"]
    launch.main([*argv, "--log-level", "warning"])
    assert (seen["app"], seen["factory"], seen["workers"]) == ("gateway_service.__main__:worker_app", True, 3)
    assert (seen["port"], seen["access_log"]) == (8123, False)
    app = launch.worker_app()
    settings = app.state.settings
    assert (settings.port, settings.no_adapter) == (8123, "base")
    assert [(b.url, b.kind.value) for b in settings.backends] == [("http://lorax:80", "lorax")]


def test_one_process_is_served_from_the_app_object(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(launch.uvicorn, "run", lambda app, **options: seen.update(app=app, **options))
    launch.main(["--port", "8124"])
    assert "workers" not in seen and seen["app"].state.settings.port == 8124
    with pytest.raises(SystemExit):
        launch.main(["--workers", "0"])
