"""The compose stack validates and exposes only what the README's "Security" section says (tested on
`docker-compose config` output, so interpolation and overrides count)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.deploy.compose import COMPOSE, DEBUG, ROOT, compose_config, run_compose


def _published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of every published port, from docker-compose v1's strings or v2's mappings."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split("/")[0].split(":")
            found.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) > 1 else ""))
    return found


def _members(config: dict) -> dict[str, set[str]]:
    members: dict[str, set[str]] = {name: set() for name in config.get("networks", {})}
    for name, service in config["services"].items():
        networks = service.get("networks") or {"default": None}
        for network in networks:
            members.setdefault(network, set()).add(name)
    return members


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, DEBUG)], ids=["stack", "with-debug-ports"])
def test_compose_file_validates(files: tuple[Path, ...]) -> None:
    result = run_compose(*files, quiet=True)
    assert result.returncode == 0, result.stderr


# What the README's Security section says is published, and where: service -> port.
PUBLISHED = {"gateway": "8080", "compressor": "8081", "compressor-gpu": "8081", "prometheus": "9090"}
BACKENDS = {"engine", "lorax"}


def test_only_the_gateway_compressor_and_prometheus_publish_ports_on_loopback() -> None:
    services = compose_config(COMPOSE)["services"]
    published = {name: _published(service) for name, service in services.items() if service.get("ports")}
    assert {name: [port for _, port in ports] for name, ports in published.items()} == {
        name: [port] for name, port in PUBLISHED.items()
    }
    assert all(address == "127.0.0.1" for ports in published.values() for address, _ in ports), published


def _security_table() -> dict[str, tuple[str, str]]:
    """service -> (port, bound to), from the first table of the README's Security section."""
    section = (ROOT / "README.md").read_text().split("\n## Security\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table[2:]]  # past header and rule
    return {row[0]: (row[1], row[2]) for row in rows}


def test_the_readme_security_section_says_what_compose_publishes() -> None:
    services = compose_config(COMPOSE)["services"]
    table = _security_table()
    said = {name.lower(): port for name, (port, _) in table.items() if port.isdigit()}
    published = {name.removesuffix("-gpu"): ports[0][1] for name, s in services.items() if (ports := _published(s))}
    assert said == published
    for name, (port, bound) in table.items():
        assert bound.startswith("127.0.0.1") if port.isdigit() else port == "none", name
    assert {name.lower() for name, (port, _) in table.items() if port == "none"} == {*BACKENDS, "minio"}


def test_bind_address_opens_the_gateway_and_the_compressor_only() -> None:
    services = compose_config(COMPOSE, bind="0.0.0.0")["services"]
    for name in ("gateway", "compressor", "compressor-gpu"):
        assert _published(services[name])[0][0] == "0.0.0.0", name
    assert _published(services["prometheus"]) == [("127.0.0.1", "9090")]  # no authentication of its own
    assert not any(services[name].get("ports") for name in (*BACKENDS, "minio", "minio-init"))


def test_the_backends_are_reachable_from_the_gateway_only() -> None:
    config = compose_config(COMPOSE)
    internal = {name for name, net in config["networks"].items() if (net or {}).get("internal")}
    for network, members in _members(config).items():
        if members & BACKENDS:
            others = members - BACKENDS
            # Prometheus scrapes them (on 127.0.0.1 only, forwarding nothing); MinIO only answers them.
            assert others <= {"gateway", "prometheus", "minio"}, (network, others)
            assert network in internal or members == {"lorax"}, network  # `hub`: LoRAX's way out, alone
        if "minio" in members:
            assert network in internal, network
        if network not in internal and members != {"lorax"}:  # a network with a way in or out
            assert not members & (BACKENDS | {"minio"}), network
    gateway_networks = set(config["services"]["gateway"]["networks"])
    assert any(members & BACKENDS for net, members in _members(config).items() if net in gateway_networks)


def test_debug_ports_are_opt_in_and_on_loopback() -> None:
    services = compose_config(COMPOSE, DEBUG)["services"]
    for name in (*BACKENDS, "minio"):
        ports = _published(services[name])
        assert ports and all(address == "127.0.0.1" for address, _ in ports), (name, ports)
