"""``soppu inspect``: what an adapter or a compressed artifact holds (modules, ranks, shapes, bytes)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from soppu.cli.tables import print_table

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an adapter or a compressed artifact: modules, ranks, bytes",
        description="PATH is a PEFT adapter (directory, .zip or .tar.gz), a directory written by `soppu compress`, "
        "or one of its .safetensors files (bases or core).",
    )
    parser.add_argument("path", type=Path, help="what to inspect")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_inspect)


def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    modules = info.pop("modules", {})
    for key, value in info.items():
        print(f"{key:>16}: {value}")
    if modules:
        columns = sorted({column for row in modules.values() for column in row})
        print()
        print_table(["module", *columns], [[m, *(row.get(c, "") for c in columns)] for m, row in modules.items()])


def _adapter_info(path: Path) -> dict[str, Any]:
    from soppu.adapter import read_adapter

    adapter = read_adapter(path)
    config = adapter.config
    dtypes = sorted({str(m.a.dtype).removeprefix("torch.") for m in adapter.modules.values()})
    return {
        "kind": "PEFT LoRA adapter",
        "base_model": config.base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "use_rslora": config.use_rslora,
        "target_modules": config.target_modules,
        "dtype": ", ".join(dtypes),
        "parameters": adapter.num_parameters(),
        "bytes": sum(m.a.nbytes + m.b.nbytes for m in adapter.modules.values()),
        "modules": {
            name: {"rank": m.rank, "d_out": m.shape[0], "d_in": m.shape[1], "scaling": round(m.scaling, 6)}
            for name, m in adapter
        },
    }


def _compression_info(directory: Path) -> dict[str, Any]:
    from soppu.compression.format import read_compression

    compression = read_compression(directory)
    files = [p for p in directory.rglob("*.safetensors")]
    first = compression.clusters[0].bases
    return {
        "kind": "SOPPU compression",
        "mode": compression.mode.value,
        "base_model": compression.base_model,
        "target_modules": compression.target_modules,
        "clusters": len(compression.clusters),
        "adapters": len(compression.adapters),
        "bases bytes": sum(p.stat().st_size for p in files if p.name.startswith("bases-")),
        "cores bytes": sum(p.stat().st_size for p in files if p.parent.name == "cores"),
        "modules": {
            module: {
                "d_out": basis.shape[0],
                "d_in": basis.shape[1],
                "R": "/".join(str(c.bases[module].rank) for c in compression.clusters),
            }
            for module, basis in sorted(first.items())
        },
    }


def _artifact_info(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        shapes = {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - not a dict
    info: dict[str, Any] = {key: metadata[key] for key in sorted(metadata) if key != "modules"}
    info["bytes"] = path.stat().st_size
    info["modules"] = {name: {"shape": shape} for name, shape in sorted(shapes.items())}
    return info


def _inspect(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        raise FileNotFoundError(f"nothing at {path}")
    if path.is_dir() and (path / "compression.json").exists():
        info = _compression_info(path)
    elif path.suffix == ".safetensors":
        info = _artifact_info(path)
    else:
        info = _adapter_info(path)
    _print(info, args.json)
    return 0
