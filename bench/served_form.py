"""Benchmark of publishing an export in its served form against publishing the adapter as it is.

Every version the compressor publishes is first put in the form LoRAX 0.12.1 serves exactly
(:func:`soppu.adapter.served_form.served_form`: rank padded to 8/16/32/64/128, scalings folded into B, every
layer present, the served dtype) and then serialized. This measures, in one process:

- time: ``adapter_files(served_form(adapter, dtype=served))`` against the baseline ``adapter_files(adapter)``,
  the raw adapter as it was published before;
- size: the bytes of each (what the bucket stores and LoRAX downloads per version).

Shapes: SmolLM2-135M (the example base: 30 layers, q/v, 576 wide, k/v 192) at r = 8 and r = 12 (padded to 16),
and Llama-7B at r = 16 on q/v (4096 wide), from a float32 upload, served in bfloat16 (LoRAX's dtype for both
bases). Prints one JSON object to stdout (ratios are ours / baseline, medians); progress goes to stderr.

    python bench/served_form.py --iterations 10
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _timing import compare, emit_report

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule
from soppu.adapter.served_form import served_form
from soppu.adapter.writer import adapter_files

SHAPES = {
    "smollm2_r8_qv": {"layers": 30, "hidden": 576, "kv": 192, "rank": 8},
    "smollm2_r12_qv": {"layers": 30, "hidden": 576, "kv": 192, "rank": 12},
    "llama7b_r16_qv": {"layers": 32, "hidden": 4096, "kv": 4096, "rank": 16},
}


def _adapter(layers: int, hidden: int, kv: int, rank: int) -> LoraAdapter:
    config = AdapterConfig(r=rank, lora_alpha=2 * rank, target_modules=("q_proj", "v_proj"))
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for layer in range(layers):
        for name, d_out in (("q_proj", hidden), ("v_proj", kv)):
            module = f"model.layers.{layer}.self_attn.{name}"
            a = torch.randn(rank, hidden, generator=generator)
            b = torch.randn(d_out, rank, generator=generator)
            modules[module] = LoraModule(b=b, a=a, scaling=config.scaling_for(module))
    return LoraAdapter(config, modules)


def _bench_shape(name: str, shape: dict[str, int], dtype: torch.dtype, iterations: int) -> dict[str, Any]:
    adapter = _adapter(**shape)
    raw = adapter_files(adapter)
    served = adapter_files(served_form(adapter, dtype=dtype))
    timing = compare(
        f"{name} publish",
        lambda i: adapter_files(served_form(adapter, dtype=dtype)),
        lambda i: adapter_files(adapter),
        iterations,
        len(raw.weights),
    )
    return {
        "shape": shape,
        "served_rank": served_form(adapter).config.r,
        "bytes": {
            "raw_float32": len(raw.weights) + len(raw.config),
            "served": len(served.weights) + len(served.config),
            "ratio_served_over_raw": round(
                (len(served.weights) + len(served.config)) / (len(raw.weights) + len(raw.config)), 3
            ),
        },
        "publish": timing,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per op (default 10)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="bfloat16", help="served dtype")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")
    started = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    shapes = {name: _bench_shape(name, shape, dtype, args.iterations) for name, shape in SHAPES.items()}
    emit_report(
        "soppu.adapter.served_form publish",
        {"iterations": args.iterations, "served_dtype": args.dtype},
        {
            "baseline": "adapter_files(adapter): the float32 upload serialized as it is (what was published before)",
            "ours": "adapter_files(served_form(adapter, dtype)): padded, scalings folded into B, cast, serialized",
        },
        {"shapes": shapes},
        started,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
