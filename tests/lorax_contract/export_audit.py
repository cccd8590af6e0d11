"""The audit of every export the test suite's pipelines published: each must load on LoRAX 0.12.1 (as
:mod:`lorax_semantics` reads it) as exactly what SOPPU stored for that version.

Run by session fixtures of tests/conftest.py when the session ends, over every local store under pytest's
temporary directory and every bucket of the moto server, so an export written by any test, through any path
(the pipeline in-process, a compressor process, a refit), is checked, not only the ones a test looked at. A
version counts when its manifest carries the pipeline's report (``served_by``); hand-made fixtures (placeholder
files for stub backends) and versions whose objects a refit or a deletion has since removed are left out.

For each: the export's config is the served form's (``r = lora_alpha``, a rank LoRAX has kernels for, no rsLoRA
or patterns), and the deltas LoRAX applies equal PEFT's on the stored original, or ``U S V^T`` of the stored core
and basis, to the export dtype's rounding; a module the upload left out must be all zeros.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, read_adapter
from soppu.adapter.served_form import SERVED_RANKS
from soppu.compression.factors import core_to_factors
from soppu.compression.format import read_bases, read_core
from soppu.compression.model import Mode
from soppu.errors import ObjectNotFound
from soppu.registry import Manifest, ServedFrom
from soppu.store import LocalStore, ObjectStore
from soppu.store.layout import MANIFESTS, AdapterVersion
from tests.lorax_contract.lorax_semantics import LoraxLoadError, LoraxModel, lorax_deltas

__all__ = ["audit_store", "local_stores"]

# The worst relative difference per module: float32 exports are exact up to the product's rounding; a bf16 or
# fp16 export rounds each factor once.
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def local_stores(root: Path) -> Iterator[LocalStore]:
    """Every local store under ``root``: a folder holding a ``manifests`` folder."""
    for manifests in root.rglob(MANIFESTS):
        if manifests.is_dir():
            yield LocalStore(manifests.parent)


class _Removed(Exception):
    """A refit or a deletion has removed some of the version's objects since: nothing left to audit."""


def _stored(store: ObjectStore, manifest: Manifest, version: AdapterVersion) -> dict[str, torch.Tensor]:
    """The deltas SOPPU stored for ``version``."""
    try:
        if manifest.served_from == ServedFrom.COMPRESSED:
            assert manifest.basis_key is not None
            bases = read_bases(store.get(manifest.basis_key).data)
            core = read_core(store.get(version.core_key).data, bases=bases)
            mode = Mode(core.meta.mode)
            factors = {m: core_to_factors(bases.bases[m], c, mode) for m, c in core.adapter.cores.items()}
            return {m: (b @ a).float() for m, (b, a) in factors.items()}
        config_key, weights_key = version.original_keys()
        files = {CONFIG_NAME: store.get(config_key).data, WEIGHTS_NAME: store.get(weights_key).data}
    except ObjectNotFound as e:
        raise _Removed from e
    original = read_adapter(files).to(dtype=torch.float32)
    return {module: lora.delta() for module, lora in original}


def _check(store: ObjectStore, manifest: Manifest) -> str | None:
    """Why LoRAX would not serve the version's export as stored; None when it would."""
    version = AdapterVersion(manifest.user_id, manifest.adapter, manifest.version)
    config_key, weights_key = version.export_keys()
    try:
        config_raw, weights_raw = store.get(config_key).data, store.get(weights_key).data
    except ObjectNotFound as e:
        raise _Removed from e
    stored = _stored(store, manifest, version)
    config = json.loads(config_raw)
    if config["r"] != config["lora_alpha"] or config["r"] not in SERVED_RANKS:
        return f"r={config['r']} lora_alpha={config['lora_alpha']} is not a served form"
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        return "the export keeps rsLoRA or a pattern, which LoRAX drops"
    tensors = load_safetensors(weights_raw)
    dtype = next(iter(tensors.values())).dtype
    layers = 1 + max(int(name.split(".layers.")[1].split(".")[0]) for name in tensors if ".layers." in name)
    try:
        loaded = lorax_deltas(config_raw, weights_raw, LoraxModel(layers, dtype=dtype))
    except LoraxLoadError as e:
        return f"LoRAX fails to load it: {e}"
    for module, want in stored.items():
        if module not in loaded:
            return f"LoRAX drops {module}"
        worst = float((loaded[module] - want).abs().max()) / (float(want.abs().max()) or 1.0)
        if worst > _TOLERANCE[dtype]:
            return f"{module}: LoRAX applies a delta {worst:.3g} (relative) away from the stored form"
    extra = [m for m in loaded if m not in stored and loaded[m].any()]
    return f"LoRAX applies non-zero deltas to {extra[:3]}, which the stored form leaves alone" if extra else None


def audit_store(store: ObjectStore, where: str) -> tuple[int, list[str]]:
    """(how many exports were checked, one line per one that LoRAX would not serve as stored)."""
    checked, problems = 0, []
    for info in store.list(f"{MANIFESTS}/"):
        try:
            manifest = Manifest.from_json(store.get(info.key).data)
        except (ObjectNotFound, ValueError, TypeError, KeyError):
            continue  # a test's deliberately broken or half-written record
        if "served_by" not in manifest.report:
            continue  # a hand-made fixture, not a pipeline's version
        try:
            problem = _check(store, manifest)
        except _Removed:
            continue
        checked += 1
        if problem is not None:
            problems.append(f"{where} {info.key}: {problem}")
    return checked, problems
