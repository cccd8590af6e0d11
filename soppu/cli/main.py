"""The ``soppu`` command line. Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from soppu import __version__
from soppu.cli import compress, demo, dev, examples, inspect
from soppu.errors import SoppuError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soppu",
        description="SOPPU: Scalable One PEFT Per User. Compress, store and serve one LoRA adapter per user.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compress.add_parsers(subparsers)
    inspect.add_parser(subparsers)
    examples.add_parser(subparsers)
    dev.add_parser(subparsers)
    demo.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # every subcommand sets its handler with set_defaults(handler=...)
    handler: Callable[[argparse.Namespace], int] = args.handler
    if os.environ.get("SOPPU_DEBUG"):
        return handler(args)  # full tracebacks for debugging
    try:
        return handler(args)
    except SoppuError as e:
        # Bad input ends with one clear line, never a traceback.
        print(f"error [{e.code}]: {e.message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
