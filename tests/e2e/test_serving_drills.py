"""The fault drills of ``bench/drills.py`` in their quick sizes, on real processes (the session's moto server, two
engines on the example model, a gateway): an engine killed mid-stream ends the stream with a clean error event
and serves no one a wrong answer; the gateway killed and restarted under load answers every request right or
fails it cleanly, and serves every user right afterwards.

Both drills share one topology (the engines' start is most of the cost). Nothing here is timed: every timeout in
the drills is a hang guard, and the recovery times they measure are reported, never asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# bench/ is no package (a namespace import): its scripts put bench/ on sys.path for their own imports.
from bench import drills

pytestmark = pytest.mark.slow

SIZES = drills.QUICK


@pytest.fixture(scope="module")
def topology(
    examples_dir: Path, moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[drills.Topology]:
    with drills.Topology(examples_dir, tmp_path_factory.mktemp("drills"), s3_endpoint=moto_server) as top:
        drills.take_references(top, SIZES)
        yield top


def _check(name: str, result: dict[str, Any], top: drills.Topology) -> None:
    assert drills.failures(name, result) == [], f"{result}\n{top.log_tails()}"


def test_an_engine_killed_mid_stream_ends_the_stream_cleanly_and_serves_nobody_wrong(
    topology: drills.Topology,
) -> None:
    result = drills.engine_kill_drill(topology, SIZES)
    _check("engine_kill", result, topology)
    victim = result["victim"]
    assert (victim["end"], victim["detail"]) == ("clean", "stream_error:upstream_disconnected")
    assert 0 < victim["tokens_before_the_end"] < victim["of_tokens"] and victim["tokens_match_reference"]
    for part in (result["during"], result["after"]):
        assert (part["wrong_answers"], part["answers_of_another_user"], part["hangs"]) == (0, 0, 0), part
        assert part["unclean_failures"] == {}, part
    assert result["after"]["every_user_served_right"] and result["gateway_alive"]


def test_the_gateway_killed_under_load_answers_right_or_fails_cleanly(topology: drills.Topology) -> None:
    result = drills.gateway_restart_drill(topology, SIZES)
    _check("gateway_restart", result, topology)
    load = result["load"]
    assert load["requests"] == load["requests_planned"] == load["ok"]  # every request, tried again, ended right
    assert (load["wrong_answers"], load["hangs"], load["unclean_failures"]) == (0, 0, {}), load
    assert result["ok_sent_before_the_kill"] and result["ok_sent_after_the_kill"]
    assert result["after"]["every_user_served_right"] and result["gateway_alive"]
