"""The quality half of ``bench/compression.py``: every user of an example set compressed at each mode, rank and
cluster count, exported as plain LoRA, and checked on their answers and behaviour against the originals.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _compression_cases import say, time_call

from soppu.adapter import LoraAdapter, read_adapter
from soppu.compression.accounting import account
from soppu.compression.compress import compress
from soppu.compression.export import to_lora
from soppu.compression.model import Mode
from soppu.compression.rank import RankPolicy
from soppu.examples.check import check_examples
from soppu.examples.sets import build_example_set, default_users
from soppu.models import load_causal_lm
from soppu.verify.behaviour import check_behaviour

__all__ = ["default_cache_dir", "quality"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_cache_dir() -> Path:
    # The Makefile exports SOPPU_CACHE_DIR=<repo>/.cache/soppu and the tests fall back to that same directory, so
    # the trained fixture is shared; soppu's own default (~/.cache/soppu) would retrain it for a plain run.
    return Path(os.environ.get("SOPPU_CACHE_DIR", REPO_ROOT / ".cache" / "soppu"))


def _compress_groups(
    pairs: list[tuple[str, LoraAdapter]], mode: Mode, rank: int, clusters: int, args: argparse.Namespace, device
) -> tuple[list[Any], list[Any]]:
    """Compress each group of adapters with the same target modules on its own (a cohort each, as the service
    does): one basis per module can only be shared by adapters that have that module. Returns the compressions
    and their accountings."""
    groups: dict[tuple[str, ...], list[tuple[str, LoraAdapter]]] = {}
    for name, adapter in pairs:
        groups.setdefault(tuple(sorted(adapter.modules)), []).append((name, adapter))
    originals = dict(pairs)
    compressions, accounts = [], []
    for members in groups.values():
        k = min(clusters, len(members))
        compression = compress(
            members, mode=mode, policy=RankPolicy.fixed(rank), clusters=k, device=device, seed=args.seed
        )
        compressions.append(compression)
        accounts.append(account(compression, [originals[a.name] for a in compression.adapters]))
    return compressions, accounts


def quality_row(
    directory: Path,
    pairs: list[tuple[str, LoraAdapter]],
    model: torch.nn.Module,
    tokenizer: Any,
    probes: list[str],
    mode: Mode,
    rank: int,
    clusters: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    originals = dict(pairs)
    elapsed, (compressions, accounts) = time_call(
        device, lambda: _compress_groups(pairs, mode, rank, clusters, args, device)
    )
    original_parameters = sum(a["original"]["parameters"] for a in accounts)
    ratio = original_parameters / sum(a["compressed"]["parameters"] for a in accounts)
    errors = [e for c in compressions for a in c.adapters for e in a.errors.values()]
    exports = {a.name: to_lora(c, a) for c in compressions for a in c.adapters}
    # check_examples loads the base model itself; the behaviour check reuses the one loaded model.
    checks = check_examples(directory, device=str(device), adapters=exports)
    users: dict[str, list[bool]] = {}
    for check in checks:
        users.setdefault(check.user_id, []).append(check.ok)
    behaviour = {}
    if not args.answers_only:
        adapters = check_behaviour(model, tokenizer, originals, exports, probes).adapters
        behaviour = {
            "kl_mean": round(sum(a.kl_mean for a in adapters) / len(adapters), 4),
            "kl_max": round(max(a.kl_max for a in adapters), 4),
            "agreement": round(sum(a.agreement for a in adapters) / len(adapters), 4),
            "behaviour_passed": round(sum(a.passed for a in adapters) / len(adapters), 3),
        }
    return {
        "mode": mode.value,
        "R": rank,
        "K": clusters,
        "cohorts": len(compressions),
        "bases_ranks": sorted({b.rank for c in compressions for k in c.clusters for b in k.bases.values()}),
        "ratio": round(ratio, 3),
        "error_mean": round(sum(errors) / len(errors), 4),
        "error_worst": round(max(errors), 4),
        "users_all_answers": round(sum(all(ok) for ok in users.values()) / len(users), 3),
        "answers": round(sum(c.ok for c in checks) / len(checks), 3),
        "held_out_answers": _share([c.ok for c in checks if c.held_out]),
        **behaviour,
        "compress_s": round(elapsed, 3),
    }


def _share(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 3) if flags else None


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    keep = [r for r in rows if r["users_all_answers"] == 1.0]
    best = max(keep, key=lambda r: r["ratio"], default=None)
    if best is None:
        return None
    # A ratio below 1 means the compressed form is larger than the originals: worth flagging, not hiding.
    return {**{k: best.get(k) for k in ("ratio", "mode", "R", "K", "kl_mean")}, "compresses": best["ratio"] > 1}


def quality(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    users = args.users or default_users(args.base)
    directory = build_example_set(
        args.base, users, args.cache_dir / "bench" / f"{args.base}-{users}", cache_dir=args.cache_dir, progress=True
    )
    manifest = json.loads((directory / "users.json").read_text())
    pairs = [
        (u["user_id"], read_adapter(directory / u["adapter"], expected_base_model=manifest["base_model_id"]))
        for u in manifest["users"]
    ]
    model, tokenizer = load_causal_lm(directory / manifest["base_model"], str(device))
    probes = sorted({p["prompt"] for u in manifest["users"] for p in u["prompts"]})
    reference = check_examples(directory, device=str(device))
    say(
        f"[quality] {len(pairs)} users, {len(probes)} probes; originals answer {sum(c.ok for c in reference)}/"
        f"{len(reference)}"
    )
    rows = []
    ranks, clusters = ([8], [1]) if args.quick else (args.ranks, args.clusters)
    for mode in args.modes:
        for k in clusters:
            if k > len(pairs):
                continue
            for rank in ranks:
                row = quality_row(directory, pairs, model, tokenizer, probes, Mode(mode), rank, k, args, device)
                say(f"[quality] {row}")
                rows.append(row)
    return {
        "base": args.base,
        "examples": str(directory),
        "users": len(pairs),
        "probes": probes,
        "originals_answers": round(sum(c.ok for c in reference) / len(reference), 3),
        "rows": rows,
        "best_all_users_survive": {
            "overall": _best(rows),
            **{mode: _best([r for r in rows if r["mode"] == mode]) for mode in args.modes},
        },
    }
