"""Benchmark of reading and validating PEFT LoRA adapters against an unvalidated plain load.

For a Llama-7B-shaped adapter (32 layers, r=16 on q_proj and v_proj, 4096 wide, fp16 by default) and for the
tiny example adapter shape, it measures in this one process:

- ``read_adapter(dir)`` (header checks, config and shape validation, finiteness) against the baseline
  ``json.loads(adapter_config.json)`` + ``safetensors.torch.load_file`` with no checks at all;
- ``read_adapter(bytes)`` of a .zip and of a .tar.gz upload against unpacking the same archive with
  ``zipfile`` / ``tarfile`` and loading it, again with no checks;
- ``write_adapter`` against ``safetensors.torch.save_file`` + ``json.dump``.

Prints one JSON object to stdout (ratios are ours / baseline, medians); progress goes to stderr.

    python bench/adapter_io.py --iterations 20
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from _timing import compare, emit_report
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_safetensors

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, read_adapter, write_adapter
from soppu.adapter.archive import CONFIG_NAME, WEIGHTS_NAME
from soppu.adapter.writer import adapter_files
from soppu.lora import lora_scaling

SHAPES = {
    "llama7b_r16_qv": {"layers": 32, "hidden": 4096, "kv": 4096, "rank": 16},
    "tiny_example_r8_qv": {"layers": 2, "hidden": 128, "kv": 64, "rank": 8},
}


def _adapter(layers: int, hidden: int, kv: int, rank: int, dtype: torch.dtype) -> LoraAdapter:
    config = AdapterConfig(r=rank, lora_alpha=2 * rank, target_modules=("q_proj", "v_proj"))
    scaling = lora_scaling(2 * rank, rank)
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for layer in range(layers):
        for name, d_out in (("q_proj", hidden), ("v_proj", kv)):
            a = torch.randn(rank, hidden, generator=generator).to(dtype)
            b = torch.randn(d_out, rank, generator=generator).to(dtype)
            modules[f"model.layers.{layer}.self_attn.{name}"] = LoraModule(b=b, a=a, scaling=scaling)
    return LoraAdapter(config, modules)


def _archive(directory: Path, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                archive.write(directory / name, name)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                archive.add(directory / name, name)
    return buffer.getvalue()


def _plain_read(directory: Path) -> object:
    json.loads((directory / CONFIG_NAME).read_text())
    return load_file(directory / WEIGHTS_NAME)


def _plain_read_archive(data: bytes) -> object:
    """Unpack the two files with the standard library and load them, with no checks at all."""
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config, weights = archive.read(CONFIG_NAME), archive.read(WEIGHTS_NAME)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            config = archive.extractfile(CONFIG_NAME).read()  # type: ignore[union-attr]
            weights = archive.extractfile(WEIGHTS_NAME).read()  # type: ignore[union-attr]
    json.loads(config)
    return load_safetensors(weights)


def _bench_shape(name: str, shape: dict[str, int], dtype: torch.dtype, iterations: int, root: Path) -> dict[str, Any]:
    adapter = _adapter(**shape, dtype=dtype)
    directory = write_adapter(adapter, root / name / "adapter")
    size = sum((directory / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME))
    zipped, tarred = _archive(directory, "zip"), _archive(directory, "tar.gz")
    tensors = load_file(directory / WEIGHTS_NAME)
    config = json.loads((directory / CONFIG_NAME).read_text())
    out_ours, out_plain = root / name / "ours", root / name / "plain"
    out_plain.mkdir(parents=True)

    def plain_write(_i: int) -> None:
        save_file(tensors, out_plain / WEIGHTS_NAME, metadata={"format": "pt"})
        (out_plain / CONFIG_NAME).write_text(json.dumps(config))

    results = {
        "read_dir": compare(
            f"{name} read_dir", lambda i: read_adapter(directory), lambda i: _plain_read(directory), iterations, size
        ),
        "read_zip_bytes": compare(
            f"{name} read_zip", lambda i: read_adapter(zipped), lambda i: _plain_read_archive(zipped), iterations, size
        ),
        "read_tar_gz_bytes": compare(
            f"{name} read_tgz", lambda i: read_adapter(tarred), lambda i: _plain_read_archive(tarred), iterations, size
        ),
        "write_dir": compare(
            f"{name} write", lambda i: write_adapter(adapter, out_ours), plain_write, iterations, size
        ),
        "serialize_bytes": compare(
            f"{name} serialize",
            lambda i: adapter_files(adapter),
            lambda i: (save_safetensors(tensors, metadata={"format": "pt"}), json.dumps(config)),
            iterations,
            size,
        ),
    }
    return {"shape": shape, "dtype": str(dtype), "bytes": size, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per op (default 20)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-adapter-"))
    try:
        shapes = {name: _bench_shape(name, shape, dtype, args.iterations, root) for name, shape in SHAPES.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit_report(
        "soppu.adapter read/validate/write",
        {"iterations": args.iterations, "dtype": args.dtype},
        {
            "baseline": "json.loads(config) + safetensors load of the weights (from the dir, or unpacked from the same"
            " archive with zipfile/tarfile), no validation",
            "ours": "read_adapter: archive/size rules, header checks, config + shape validation, a finiteness"
            " check of every tensor; .tar.gz is inflated in-process",
            "serialize_bytes": "baseline is safetensors.torch.save(tensors) + json.dumps(config)",
        },
        {"shapes": shapes},
        started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
