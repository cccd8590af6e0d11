"""The adapter cache's bookkeeping of shared cohort bases, in-process on local files (no model is loaded): a
basis stays while any cached core uses it and is counted once, a core loaded later reuses it, and it goes with
the last core that held it, and cores loading together read it once. Also: a core whose bases are missing names
only the adapter it was asked for."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_service.engine import AdapterCache, AdapterLoadFailed, AdapterRef, AdapterSourceKind, SourceRules
from inference_service.engine.formats import LoadedCore, LoadedLora, ModelShapes
from soppu.adapter import read_adapter
from soppu.compression import RankPolicy, compress
from soppu.compression.format import bases_bytes, core_bytes
from soppu.store.layout import CORE_NAME

LOCAL = AdapterSourceKind.LOCAL
BASES_REF = "../bases/bases.safetensors"  # from a core's folder to the cohort's bases


@pytest.fixture(scope="module")
def cohort(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelShapes, list[str]]:
    """A root holding the example users' cores on one shared basis (``root/<user>/core.safetensors``), their
    plain LoRAs (``root/lora-<user>/``), and the model shapes the adapters fit."""
    users = [u["user_id"] for u in json.loads((examples_dir / "users.json").read_text())["users"]]
    named = [(user, read_adapter(examples_dir / "adapters" / user)) for user in users]
    compression = compress(named, policy=RankPolicy.fixed(4), device="cpu")
    root = tmp_path_factory.mktemp("cohort")
    (root / "bases").mkdir()
    (root / "bases" / "bases.safetensors").write_bytes(bases_bytes(compression.clusters[0], compression))
    for user in users:
        (root / user).mkdir()
        core = core_bytes(compression, compression.adapter(user), bases_ref=BASES_REF)
        (root / user / CORE_NAME).write_bytes(core)
        lora = root / f"lora-{user}"
        lora.mkdir()
        for file in (examples_dir / "adapters" / user).iterdir():
            (lora / file.name).write_bytes(file.read_bytes())
    shapes = {name: tuple(module.shape) for name, module in named[0][1]}
    return root, ModelShapes(shapes, torch.device("cpu"), torch.float32), users  # type: ignore[arg-type]


def _cache(root: Path, shapes: ModelShapes, budget: int) -> AdapterCache:
    return AdapterCache(shapes, budget_bytes=budget, revalidate_s=0.0, rules=SourceRules(local_roots=(root,)))


def _get(cache: AdapterCache, root: Path, *names: str) -> list[Any]:
    async def load() -> list[Any]:
        return [await cache.get(AdapterRef(LOCAL, str(root / name))) for name in names]

    return asyncio.run(load())


def test_a_basis_stays_while_a_cached_core_uses_it_and_is_counted_once(cohort) -> None:
    root, shapes, users = cohort
    first, second = _get(_cache(root, shapes, 1 << 30), root, users[0], f"lora-{users[0]}")
    assert isinstance(first, LoadedCore) and isinstance(second, LoadedLora)
    basis, core, lora = first.basis.nbytes, first.nbytes, second.nbytes
    assert core < lora

    # Room for the basis, one core and one LoRA: loading a LoRA evicts a core, never the basis under another.
    cache = _cache(root, shapes, basis + core + lora + core // 2)
    a, b = _get(cache, root, users[0], users[1])
    _get(cache, root, users[0])  # a is used again: b is now the least recently used core, then a
    assert cache.stats.bytes == basis + 2 * core and cache.stats.bases == 1
    _get(cache, root, f"lora-{users[0]}")
    assert (cache.stats.entries, cache.stats.bases) == (2, 1)  # a and the LoRA; the basis a holds stays
    assert cache.stats.bytes == basis + core + lora  # everything held, the shared basis once

    downloads = cache.stats.downloads
    (c,) = _get(cache, root, users[2])
    assert c.basis is a.basis is b.basis  # the held basis, not a second copy
    assert cache.stats.downloads == downloads + 1  # the core alone


def test_a_basis_goes_with_the_last_core_that_held_it(cohort) -> None:
    root, shapes, users = cohort
    (core,) = _get(_cache(root, shapes, 1 << 30), root, users[0])
    loras = _get(_cache(root, shapes, 1 << 30), root, *(f"lora-{user}" for user in users[:2]))
    lora = loras[0].nbytes
    # Room for the basis and both cores, or for both LoRAs, but not for a core beside both LoRAs.
    cache = _cache(root, shapes, max(core.basis.nbytes + 2 * core.nbytes, 2 * lora) + core.nbytes // 2)
    _get(cache, root, users[0], users[1])
    _get(cache, root, f"lora-{users[0]}", f"lora-{users[1]}")  # room for both only once the cores are gone
    assert (cache.stats.entries, cache.stats.bases, cache.stats.bytes) == (2, 0, 2 * lora)
    (again,) = _get(cache, root, users[0])
    assert cache.stats.bases == 1 and cache.stats.bytes == again.basis.nbytes + again.nbytes + lora


def test_cores_loading_together_share_one_load_of_their_bases(cohort) -> None:
    root, shapes, users = cohort
    cache = _cache(root, shapes, 1 << 30)

    async def load() -> list[Any]:
        return await asyncio.gather(*(cache.get(AdapterRef(LOCAL, str(root / user))) for user in users))

    cores = asyncio.run(load())
    assert len({id(core.basis) for core in cores}) == 1
    assert cache.stats.downloads == 1 + len(users)  # one bases file, one core each
    assert cache.stats.bytes == cores[0].basis.nbytes + sum(core.nbytes for core in cores)


def test_missing_bases_are_reported_for_the_adapter_asked_for(cohort, tmp_path: Path) -> None:
    root, shapes, users = cohort
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / CORE_NAME).write_bytes((root / users[0] / CORE_NAME).read_bytes())  # no bases beside
    adapter_id = str(tmp_path / "alone")
    cache = _cache(tmp_path, shapes, 1 << 30)

    async def load() -> None:
        await cache.get(AdapterRef(LOCAL, adapter_id))

    with pytest.raises(AdapterLoadFailed) as failed:
        asyncio.run(load())
    message = failed.value.message
    assert message.startswith(f"adapter {adapter_id!r} could not be loaded"), message
    assert "bases" in message and str(tmp_path / "bases") not in message and "Errno" not in message
