"""``soppu dev``: the stack as local processes until Ctrl-C (``soppu demo``, in :mod:`soppu.cli.demo`, runs the
same stack end to end)."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from soppu.cli.stack import Stack, StackConfig

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = subparsers.add_parser(
        "dev",
        help="run the stack (S3 server, engine, compressor, gateway) as local processes until Ctrl-C",
        description="The docker stack's topology without docker: moto's S3 server (or a local directory store), "
        "our engine, the compressor and the gateway, under one supervisor. Ctrl-C stops them all. "
        "SOPPU_ADMIN_KEY is used if set, otherwise one is generated and printed.",
    )
    dev.add_argument("--model", type=Path, default=Path(".cache/examples/base"), help="base model directory")
    dev.add_argument("--workdir", type=Path, default=Path(".cache/dev"), help="logs (and a local store) go here")
    dev.add_argument("--store", choices=["s3", "local"], default="s3", help="moto's S3 server, or a directory")
    dev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    for name, port in (("gateway", 8080), ("compressor", 8081), ("engine", 8082), ("s3", 9000)):
        dev.add_argument(f"--{name}-port", type=int, default=port, help=f"default {port}")
    dev.set_defaults(handler=_dev)


def _config(args: argparse.Namespace, **extra: Any) -> StackConfig:
    return StackConfig(
        model=args.model.resolve(),
        workdir=args.workdir,
        store=args.store,
        device=args.device,
        gateway_port=args.gateway_port,
        compressor_port=args.compressor_port,
        engine_port=args.engine_port,
        s3_port=args.s3_port,
        **extra,
    )


def _dev(args: argparse.Namespace) -> int:
    if not (args.model / "config.json").is_file():
        raise FileNotFoundError(f"no model at {args.model}: run `soppu examples build` (or `make demo`) first")
    stack = Stack(_config(args))
    # SIGTERM (docker, systemd, kill) stops the stack the same way Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"starting the stack (logs in {args.workdir / 'logs'}) ...", flush=True)
    with stack:
        print(f"gateway     {stack.gateway}   POST /generate, /docs")
        print(f"compressor  {stack.compressor}   POST /v1/users/{{user}}/adapters, /docs")
        print(f"engine      {stack.engine}   LoRAX API, /docs")
        print(f"store       {stack.store_url()}")
        print(f"admin key   {stack.config.admin_key}")
        print("Ctrl-C stops everything.", flush=True)
        try:
            while all(s.alive() for s in stack.services.values()):
                time.sleep(0.5)
            dead = [s.name for s in stack.services.values() if not s.alive()]
            print(f"{', '.join(dead)} exited; stopping the stack. Its log:\n{stack.services[dead[0]].tail()}")
            return 1
        except KeyboardInterrupt:
            print("stopping ...", flush=True)
    return 0
