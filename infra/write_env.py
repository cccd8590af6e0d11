"""Write or complete the compose stack's .env: ``python infra/write_env.py [.env]`` (``make up`` runs it).

- No .env yet: a copy of .env.example with a fresh random value for every secret.
- An existing .env is kept line by line, except that a secret that is missing, empty or a placeholder (what
  ``soppu.secret_checks`` refuses) gets a fresh random value, and any other variable .env.example has and .env
  lacks is appended with the example's value. So an old .env picks up a secret added since, and a .env copied
  from .env.example becomes usable.

The file is written with mode 0600. Only the names of the variables written are printed, never their values.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # soppu, when run without the package installed

from soppu.secret_checks import secret_problem  # noqa: E402

# The secrets docker-compose.yml requires (each one ${NAME:?...}); every one is generated here.
SECRETS = (
    "MINIO_ROOT_PASSWORD",
    "SOPPU_SERVE_SECRET_KEY",
    "SOPPU_WRITE_SECRET_KEY",
    "SOPPU_GATEWAY_S3_SECRET_KEY",
    "SOPPU_ADMIN_KEY",
)


def _variables(lines: list[str]) -> dict[str, int]:
    """NAME -> index of its line, for every ``NAME=value`` line."""
    found = {}
    for i, line in enumerate(lines):
        name, sep, _ = line.partition("=")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            found[name.strip()] = i
    return found


def _value(line: str) -> str:
    return line.partition("=")[2].strip().strip("'\"")


def complete(env: Path, example: Path) -> list[str]:
    """Write ``env`` as described above; return the names of the variables written or replaced."""
    template = example.read_text().splitlines()
    lines = env.read_text().splitlines() if env.exists() else list(template)
    present = _variables(lines)
    written = []
    for name, index in _variables(template).items():
        if name in SECRETS:
            continue
        if name not in present:
            lines.append(template[index])
            written.append(name)
    for name in SECRETS:
        fresh = f"{name}={secrets.token_urlsafe(32)}"
        if name not in present:
            lines.append(fresh)
        elif secret_problem(_value(lines[present[name]])) is not None:
            lines[present[name]] = fresh
        else:
            continue
        written.append(name)
    tmp = env.with_name(env.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write("\n".join(lines) + "\n")
    tmp.chmod(0o600)  # an old .tmp keeps its mode through O_CREAT
    tmp.replace(env)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env", nargs="?", type=Path, default=ROOT / ".env", help="default: .env at the top")
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    args = parser.parse_args(argv)
    written = complete(args.env, args.example)
    print(f"{args.env.name}: wrote {', '.join(written)}" if written else f"{args.env.name}: complete")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
