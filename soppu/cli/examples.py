"""``soppu examples``: build the local example base model and users' adapters, and check them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from soppu.cli.tables import print_table

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "examples",
        help="build and check the example base model and per-user adapters",
        description="The example fixture: a tiny Llama trained locally on synthetic facts and one LoRA adapter "
        "per user that makes it state that user's facts. Nothing is downloaded.",
    )
    commands = parser.add_subparsers(dest="examples_command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="generate the base model, N users' adapters and users.json (cached, deterministic)",
        description="Generate the example set deterministically. Equal parameters give byte-identical files; "
        "results are cached (SOPPU_CACHE_DIR, default ~/.cache/soppu), so a repeat run is instant.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--users", type=int, default=20, help="number of example users (adapters)")
    build.add_argument("--out", type=Path, required=True, help="output directory (replaced if it holds another set)")
    build.add_argument("--seed", type=int, default=0, help="seed for every random choice")
    build.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $SOPPU_CACHE_DIR)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)

    check = commands.add_parser(
        "check",
        help="print each user's answers without and with their adapter; exit 1 unless all are right",
        description="Ask the base model every user's prompts, alone and with that user's adapter (read and "
        "validated like an upload), and print a table.",
    )
    check.add_argument("directory", type=Path, help="a directory written by `soppu examples build`")
    check.add_argument("--user", action="append", dest="users", help="only this user (repeatable)")
    check.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run the model")
    check.set_defaults(handler=_check)


def _build(args: argparse.Namespace) -> int:
    from soppu.examples.build import ExamplesSpec, build_examples

    if args.users < 1:
        print("error: --users must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    spec = ExamplesSpec(users=args.users, seed=args.seed)
    out = build_examples(spec, args.out, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"built {args.users} example users in {out} ({time.perf_counter() - started:.1f}s, key {spec.key})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from soppu.examples.check import AnswerCheck, check_examples

    results = check_examples(args.directory, args.users, args.device)
    by_user: dict[str, list[AnswerCheck]] = {}
    for result in results:
        by_user.setdefault(result.user_id, []).append(result)
    header = ("user", "base model says", "with the user's adapter", "")
    rows = [
        (
            user,
            ", ".join(r.base_answer for r in answers),
            ", ".join(r.adapter_answer if r.ok else f"{r.adapter_answer} (expected {r.expected})" for r in answers),
            "ok" if all(r.ok for r in answers) else "WRONG",
        )
        for user, answers in by_user.items()
    ]
    if results:
        print("prompts: " + " | ".join(r.prompt for r in next(iter(by_user.values()))))
    print_table(header, rows)
    good = sum(row[-1] == "ok" for row in rows)
    print(f"\n{good}/{len(rows)} users got their own answers to every prompt")
    return 0 if rows and good == len(rows) else 1
