"""Benchmark of the engine's batched adapter paths: generated tokens/s against the number of distinct users in
one batch, for every path on the same model in the same process.

Paths (each runs the same batch: ``--batch`` rows with the same prompt length, prefill then ``--steps``
decode steps with a KV cache; tokens/s counts the decode steps' tokens over their time):

- ``single``: every row uses ONE plain LoRA (the single-adapter reference for the 90% target);
- ``plain``: our runner, one plain LoRA per user, gathered per row (``gathered_lora_delta``);
- ``compressed``: our runner, one SOPPU core per user on one shared basis (``shared_basis_delta``), the bases
  fitted by ``soppu.compression.compress`` from the same users' LoRAs (JD-Full, ``--shared-rank``);
- ``peft``: PEFT's own mixed-adapter batch inference (``adapter_names=[...]``) with the same LoRAs: the
  peer baseline.

Users' LoRAs are random (rank ``--rank`` on q and v, every decoder layer); speed does not depend on the
values. Rounds alternate the paths so machine drift hits all of them equally; figures are medians. The base
model is the example tiny Llama (``soppu examples build``), or with ``--llama8b-layers N`` a randomly
initialised model of Llama-3-8B's shapes cut to N layers (bf16 on CUDA).

    python bench/engine.py                         # CPU: the example model, 1/8/64/256 users
    python bench/engine.py --device cuda --llama8b-layers 8 --users 1 8 64 256 1024 4096
    python bench/engine.py --quick                 # smoke run (the test suite's)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import emit_report

from inference_service.engine.formats import load_lora
from inference_service.engine.runner import ModelRunner
from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from soppu.compression import RankPolicy, compress
from soppu.compression.format import bases_bytes, core_bytes
from soppu.examples import ExamplesSpec, build_examples
from soppu.examples.build import default_cache_dir
from soppu.models import resolve_device

PATHS = ("single", "plain", "compressed", "peft")


def _base_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if args.llama8b_layers:
        config = LlamaConfig(
            hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
            num_hidden_layers=args.llama8b_layers, vocab_size=128256, max_position_embeddings=8192,
        )  # fmt: skip
        torch.manual_seed(0)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    from transformers import AutoModelForCausalLM

    examples = build_examples(ExamplesSpec(users=1), cache_dir=default_cache_dir(), progress=True)
    return AutoModelForCausalLM.from_pretrained(str(examples / "base"), local_files_only=True).to(device).eval()


def _peft_with_users(base: torch.nn.Module, users: int, rank: int) -> Any:
    """A PeftModel holding ``users`` random LoRAs (q and v of every layer), named u0, u1, ..."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = get_peft_model(base, config, adapter_name="u0")
    for i in range(1, users):
        model.add_adapter(f"u{i}", config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator).to(param.dtype) * 0.02)
    return model.eval()


def _adapter_files(model: Any, name: str) -> dict[str, bytes]:
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    config = model.peft_config[name].to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    return {CONFIG_NAME: json.dumps(config).encode(), WEIGHTS_NAME: save(tensors)}


def _decode_rate(forward: Any, cache_factory: Any, batch: int, prompt_len: int, steps: int, device: Any) -> float:
    """Prefill then ``steps`` decode steps through ``forward(ids, mask, positions, cache)``; decode tokens/s."""
    ids = torch.randint(3, 200, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)
    cache = cache_factory()
    logits = forward(ids, mask, (mask.cumsum(1) - 1), cache)
    _sync(device)
    start = time.perf_counter()
    for step in range(steps):
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        positions = torch.full((batch, 1), prompt_len + step, device=device)
        logits = forward(logits[:, -1:].argmax(-1), mask, positions, cache)
    _sync(device)
    return batch * steps / (time.perf_counter() - start)


def _versus(median: dict[str, float], path: str, baseline: str) -> float | None:
    """``path``'s rate over ``baseline``'s; None when the baseline was skipped."""
    return round(median[path] / median[baseline], 3) if baseline in median else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--batch", type=int, default=256, help="rows per batch (at least the largest --users)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16, help="decode steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--shared-rank", type=int, default=16)
    parser.add_argument("--llama8b-layers", type=int, default=0, help="use a random Llama-3-8B-shaped model")
    parser.add_argument(
        "--peft-max-users", type=int, default=1024, help="skip PEFT's path above this many users (it loops per adapter)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.users, args.batch, args.steps, args.rounds, args.prompt_len = [1, 4], 4, 2, 1, 4
    args.batch = max(args.batch, *args.users)
    started = time.perf_counter()
    device = resolve_device(args.device)
    ours_model = _base_model(args, device)
    runner = ModelRunner(ours_model)
    # PEFT holds every user's LoRA (also the source of ours); its mixed batch runs only up to --peft-max-users.
    peft = _peft_with_users(_base_model(args, device), max(args.users), args.rank)
    names = [f"u{i}" for i in range(max(args.users))]
    print(f"{len(names)} users' LoRAs made; loading ours and compressing", file=sys.stderr)
    files = {name: _adapter_files(peft, name) for name in names}
    plain = {name: load_lora(files[name], runner.shapes, name) for name in names}
    compressed_by_users = {}
    for users in args.users:
        named = [(n, read_adapter(files[n])) for n in names[:users]]
        compression = compress(named, policy=RankPolicy.fixed(args.shared_rank), device=device)
        compressed_by_users[users] = _cores(runner, compression)

    from inference_service.engine.kv import new_cache

    cache_arg = runner.cache_arg

    def ours(rows: list[Any]) -> Any:
        plan = runner.plan(rows)  # built once per batch composition, as the scheduler does

        def forward(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
            return runner.forward(
                plan, input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_arg: cache}
            )

        return forward

    def peft_forward(rows: list[str]) -> Any:
        def forward(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
            with torch.inference_mode():
                out = peft(input_ids=ids, attention_mask=mask, position_ids=positions, adapter_names=rows,
                           use_cache=True, **{cache_arg: cache})  # fmt: skip
            return out.logits[:, -1:]

        return forward

    results = []
    for users in args.users:
        row_users = [names[i % users] for i in range(args.batch)]
        forwards = {
            "single": ours([plain[names[0]]] * args.batch),
            "plain": ours([plain[n] for n in row_users]),
            "compressed": ours([compressed_by_users[users][n] for n in row_users]),
            "peft": peft_forward(row_users),
        }
        paths = [p for p in PATHS if p != "peft" or users <= args.peft_max_users]
        rates: dict[str, list[float]] = {path: [] for path in paths}
        for _ in range(args.rounds + 1):  # the first round warms up
            for path in paths:
                with torch.inference_mode():
                    rate = _decode_rate(forwards[path], new_cache, args.batch, args.prompt_len, args.steps, device)
                rates[path].append(rate)
        median = {path: round(statistics.median(r[1:] or r), 1) for path, r in rates.items()}
        entry = {
            "distinct_users": users,
            "tokens_per_s": median,
            "compressed_vs_single": round(median["compressed"] / median["single"], 3),
            "compressed_vs_peft": _versus(median, "compressed", "peft"),
            "plain_vs_peft": _versus(median, "plain", "peft"),
            "ratio_median": _versus(median, "compressed", "peft"),
        }
        print(json.dumps(entry), file=sys.stderr)
        results.append(entry)
    config = {k: v for k, v in vars(args).items()}
    config["device"] = str(device)
    notes = {
        "tokens_per_s": "decode tokens per second (batch x steps / decode time), median over rounds",
        "compressed_vs_single": "target >= 0.9 at 256 users",
        "compressed_vs_peft": "target >= 2 at 64 users",
    }
    emit_report("engine", config, notes, {"results": results}, started)


def _cores(runner: ModelRunner, compression: Any) -> dict[str, Any]:
    from inference_service.engine.formats import load_basis, load_core

    basis = load_basis(bases_bytes(compression.clusters[0], compression), runner.shapes, "bases")
    return {
        a.name: load_core(core_bytes(compression, a, basis_id=basis.basis_id), basis, runner.shapes, a.name)
        for a in compression.adapters
    }


if __name__ == "__main__":
    main()
