"""The fake LoRAX's adapter side: how LoRAX 0.12.1 fetches an adapter from S3, caches it on disk and loads it,
written from a reading of its source (tag ``v0.12.1``, paths relative to its tree; none of its code is copied),
and the plain adapter that makes our engine compute what LoRAX would.

What is reproduced, in the order LoRAX runs it:

1. **The router's index** (router/src/infer.rs:303-314): every distinct ``adapter_id`` gets an index once, for
   the life of the process; an adapter is downloaded and loaded only while its index is not loaded
   (server/lorax_server/models/model.py:341-343). :meth:`AdapterLoader.offload` drops every loaded index, as the
   router's adapter cycling does (router/src/queue.rs:338-450), so a test can make LoRAX load an id again.
2. **Download** (server/lorax_server/adapters/utils.py:9-30), one at a time (the router's loader task is one loop,
   router/src/loader.rs:118-124):

   - the id is split as ``s3://BUCKET/KEY`` (utils/sources/s3.py:26-55; shorter than 5 characters is refused,
     s3.py:208-209); the endpoint is ``S3_ENDPOINT_URL`` and the credentials boto3's chain (s3.py:58-78);
   - the cache directory is ``HUGGINGFACE_HUB_CACHE/models--KEY_WITH_SLASHES_AS_--/snapshots``: the bucket is not
     in it (s3.py:81-84);
   - ``config.json`` and ``adapter_config.json`` are downloaded on every load, a missing one skipped
     (utils/sources/source.py:132-137, s3.py:240-248): ``download_file`` asks ``try_to_load_from_cache`` about
     ``snapshots/snapshots/...``, which never exists (s3.py:107-112, source.py:11-40), so these two are always
     fetched again;
   - the weights are downloaded only when the cache directory holds no ``*.safetensors`` (utils/weights.py:481-488,
     s3.py:146-154): never refreshed. Otherwise every object whose key starts with KEY is downloaded, with no
     trailing-slash check, to the key minus KEY, its leading ``/`` stripped (s3.py:183-203, 99-143); keys under
     more than one first path component are refused (s3.py:184-188).
3. **Load** (server/lorax_server/utils/adapter.py:151-193, ``load_module_map``, an ``lru_cache`` per adapter id):
   on the first load of an id the config is read again from S3 (the re-fetch above), the base model's
   architecture compared (adapter.py:115-148), and every ``*.safetensors`` in the cache directory read; a later
   load of the same id reuses that config object, on which the first load set ``r`` to the padded rank
   (adapters/lora.py:196-205), and the weights in the cache directory.
4. **The weights LoRAX applies**: :func:`lorax_semantics.lorax_deltas` (rank padding, the ``config.r`` mutation,
   peft 0.4.0's dropped fields, dropped layer types, the served dtype). The engine is then handed a plain PEFT
   adapter with ``r = lora_alpha`` whose ``B @ A`` is each delta (a float64 SVD, truncated to the delta's rank
   bound), so generation shows LoRAX's mis-scaling of a raw adapter.

Every failure is raised as the text the Python server puts in its gRPC status (``str(exception)``), which the
router reports as ``Request failed during generation: Server error: ...`` (router/client/src/lib.rs:26-42,
router/src/loader.rs:161-172, 287-294).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import torch
from botocore.config import Config
from botocore.exceptions import ClientError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from inference_service.engine import AdapterRef, AdapterSourceKind
from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, write_adapter
from soppu.lorax_limits import lorax_rank
from tests.lorax_contract.lorax_semantics import LLAMA_LAYER_TYPES, LoraxLoadError, LoraxModel, lorax_deltas

__all__ = ["BASE_MODEL_ADAPTER_ID", "AdapterLoadError", "AdapterLoader"]

BASE_MODEL_ADAPTER_ID = "__base_model__"  # router/src/adapter.rs:10
_SOURCES = ("hub", "s3", "local", "pbase")  # proto AdapterSource, as the router's client names them
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class AdapterLoadError(Exception):
    """What the Python server raised while downloading or loading (its ``str`` is the gRPC status message)."""


def _bucket_and_key(adapter_id: str) -> tuple[str, str]:
    """s3.py:26-55."""
    if adapter_id.startswith("s3://"):
        rest = adapter_id[len("s3://") :]
        if "/" not in rest:
            raise AdapterLoadError(
                f"Invalid model_id {adapter_id}. model_id should be of the form `s3://bucket_name/model_id`"
            )
        bucket, key = rest.split("/", 1)
        return bucket, key
    bucket_env, folder = os.environ.get("PREDIBASE_MODEL_BUCKET"), os.environ.get("PREDIBASE_MODEL_FOLDER", "")
    if not bucket_env:
        if "/" not in adapter_id:
            raise AdapterLoadError(
                f"Invalid model_id {adapter_id}. model_id should be of the form `bucket_name/model_id` "
                "if PREDIBASE_MODEL_BUCKET environment variable is not set"
            )
        bucket, key = adapter_id.split("/", 1)
        return bucket, key
    if folder and not folder.endswith("/"):
        folder += "/"
    return bucket_env, folder + adapter_id


def _bucket(name: str) -> Any:
    """s3.py:58-78: a boto3 resource on ``S3_ENDPOINT_URL`` (``R2_ACCOUNT_ID`` is not reproduced), 5 attempts."""
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    s3 = boto3.resource("s3", endpoint_url=endpoint, config=config) if endpoint else boto3.resource("s3", config=config)
    return s3.Bucket(name)


@dataclass
class _Cached:
    """``load_module_map``'s cached result for one adapter id (adapter.py:151): the config as LoRAX holds it (``r``
    as the last load left it) and the weight files it read."""

    config: dict[str, Any]
    weight_files: list[Path]


@dataclass
class AdapterLoader:
    """The adapters of one fake LoRAX process. ``cache_dir`` is its ``HUGGINGFACE_HUB_CACHE`` (``/data`` in the
    image), ``work_dir`` where the engine's equivalent adapters are written."""

    cache_dir: Path
    work_dir: Path
    model: LoraxModel
    model_id: str
    shapes: Mapping[str, tuple[int, int]]  # the engine's adaptable linear layers
    _index: dict[str, int] = field(default_factory=dict)
    _loaded: dict[int, AdapterRef | None] = field(default_factory=dict)
    _module_maps: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    downloads: list[str] = field(default_factory=list)  # keys fetched from S3, in order (tests read it)
    _written: int = 0

    def index(self, adapter_id: str) -> int:
        """infer.rs:303-314: the adapter's index, given once for the life of the process."""
        return self._index.setdefault(adapter_id, len(self._index) + 1)

    def offload(self) -> None:
        """Forget every loaded adapter (the router's cycling, queue.rs:338-450), keeping the indices, the
        ``load_module_map`` cache and the disk cache, as LoRAX does."""
        with self._lock:
            self._loaded.clear()

    def ref(self, adapter_id: str, source: str) -> AdapterRef | None:
        """The engine adapter for ``adapter_id``, downloading and loading it unless its index is loaded.
        Blocking (call it in a thread). Raises :class:`AdapterLoadError`."""
        index = self.index(adapter_id)
        with self._lock:  # loader.rs:118-124: one download or load at a time
            if index not in self._loaded:
                if source.lower() not in _SOURCES:  # router/client/src/client.rs:251-269
                    raise AdapterLoadError(f"Invalid source '{source}' when downloading adapter '{adapter_id}'")
                if source != "s3":
                    raise AdapterLoadError(f"this fake LoRAX reproduces adapter_source 's3' only, not '{source}'")
                self._download(adapter_id)
                self._loaded[index] = self._load(adapter_id, source)
            return self._loaded[index]

    # --- download (adapters/utils.py:9-30) ----------------------------------------------------------------

    def _local_dir(self, key: str) -> Path:
        return self.cache_dir / f"models--{key.replace('/', '--')}" / "snapshots"  # s3.py:81-84

    def _fetch(self, bucket: Any, key: str, filename: str) -> Path:
        """s3.py:107-126: always downloads (see the module docstring), the directory made first."""
        local = self._local_dir(key) / filename
        local.parent.mkdir(parents=True, exist_ok=True)
        bucket.download_file(str(Path(key) / filename), str(local))
        self.downloads.append(f"{key}/{filename}")
        return local

    def _load_config(self, adapter_id: str) -> dict[str, Any]:
        """source.py:132-137 and adapters/__init__.py:20-35: the two config files fetched again, missing ones
        skipped (s3.py:240-248 catches ``ClientError`` only), then peft 0.4.0 reads ``adapter_config.json``."""
        if len(adapter_id) < 5:  # s3.py:208-209
            raise AdapterLoadError(f"model_id '{adapter_id}' is too short for prefix filtering")
        bucket_name, key = _bucket_and_key(adapter_id)
        bucket = _bucket(bucket_name)
        found: dict[str, Path | None] = {}
        for name in ("config.json", "adapter_config.json"):
            try:
                found[name] = self._fetch(bucket, key, name)
            except ClientError:
                found[name] = None
        config_path, adapter_config_path = found["config.json"], found["adapter_config.json"]
        if config_path is not None and "medusa_num_heads" in json.loads(config_path.read_bytes()):
            raise AdapterLoadError("this fake LoRAX does not reproduce Medusa adapters")
        if adapter_config_path is None:
            raise AdapterLoadError(f"No valid adapter config file found: tried {adapter_config_path} and {config_path}")
        loaded: dict[str, Any] = json.loads(adapter_config_path.read_bytes())
        if "r" not in loaded:  # peft 0.4.0's LoraConfig would keep its default r=8: lorax_semantics needs it
            loaded["r"] = 8
        return loaded

    def _download(self, adapter_id: str) -> None:
        self._load_config(adapter_id)  # adapters/utils.py:24-25: "fail fast if ID is not an adapter"
        bucket_name, key = _bucket_and_key(adapter_id)
        local = self._local_dir(key)
        if list(local.glob("*.safetensors")):  # weights.py:481-485 via s3.py:149-154: present, never refreshed
            return
        bucket = _bucket(bucket_name)
        objects = list(bucket.objects.filter(Prefix=key))  # s3.py:183-203
        if len({Path(o.key).parts[0] for o in objects}) > 1:
            raise AdapterLoadError(f"Multiple models found for model_id {key}")
        for name in [o.key.removeprefix(key).lstrip("/") for o in objects]:
            if name:  # s3.py:131-133
                self._fetch(bucket, key, name)
        if not any(o.key.endswith(".safetensors") for o in objects):
            # s3.py:197-203 raises EntryNotFoundError; weights.py:501-512 then looks for local .bin files and
            # fails with s3.py:151-153's message.
            raise AdapterLoadError(f"No local weights found in {key} with extension .bin")

    # --- load (utils/adapter.py:151-193, models/model.py:327-394) ------------------------------------------

    def _check_architectures(self, adapter_id: str, config: dict[str, Any]) -> None:
        """adapter.py:115-148: a different base is compared by its config's architectures; one whose config
        cannot be read (here: anything but a local directory) is assumed compatible, with a warning."""
        base = config.get("base_model_name_or_path")
        if not base or base == self.model_id:
            return
        theirs, ours = Path(str(base)) / "config.json", Path(self.model_id) / "config.json"
        if not (theirs.is_file() and ours.is_file()):
            return
        expected = json.loads(ours.read_bytes()).get("architectures")
        found = json.loads(theirs.read_bytes()).get("architectures")
        if found != expected:
            raise AdapterLoadError(
                f"Adapter '{adapter_id}' is not compatible with model '{self.model_id}'. "
                f"Architectures differ: {found} != {expected}. Use --model-id '{base}' instead."
            )

    def _module_map(self, adapter_id: str, source: str) -> _Cached:
        cached = self._module_maps.get((adapter_id, source))
        if cached is None:
            config = self._load_config(adapter_id)
            self._check_architectures(adapter_id, config)
            _, key = _bucket_and_key(adapter_id)
            files = sorted(self._local_dir(key).glob("*.safetensors"))  # s3.py:149-154, adapter.py:178-189
            cached = self._module_maps[(adapter_id, source)] = _Cached(config, files)
        return cached

    def _load(self, adapter_id: str, source: str) -> AdapterRef | None:
        cached = self._module_map(adapter_id, source)
        tensors: dict[str, torch.Tensor] = {}
        for path in cached.weight_files:  # adapter.py:180-189: later files' names win (dict.update)
            tensors.update(load_safetensors(path.read_bytes()))
        try:
            deltas = lorax_deltas(json.dumps(cached.config).encode(), save_safetensors(tensors), self.model)
        except LoraxLoadError as e:
            raise AdapterLoadError(str(e)) from e
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise AdapterLoadError(f"{type(e).__name__}: {e}") from e
        r_after = _r_after_load(tensors, self.model)
        if r_after is not None:
            cached.config["r"] = r_after
        # rank(B @ A) is at most the adapter's own rank, whatever padding or scaling LoRAX applied.
        rank = max((t.shape[0] for name, t in tensors.items() if name.endswith("lora_A.weight")), default=1)
        return self._engine_adapter(deltas, rank)

    def _engine_adapter(self, deltas: Mapping[str, torch.Tensor], rank: int) -> AdapterRef | None:
        """A PEFT adapter with scaling 1 whose ``B @ A`` is each delta (of rank at most ``rank``), written for the
        engine's local source."""
        if not deltas:
            return None  # every layer type dropped: the adapter adds nothing
        rank = min(rank, max(min(d.shape) for d in deltas.values()))
        modules = {}
        for module, delta in deltas.items():
            u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
            k = min(rank, s.shape[0])
            b = torch.zeros(delta.shape[0], rank, dtype=torch.float64)
            a = torch.zeros(rank, delta.shape[1], dtype=torch.float64)
            b[:, :k], a[:k] = u[:, :k] * s[:k], vh[:k]
            modules[module] = LoraModule(b=b.to(self.model.dtype), a=a.to(self.model.dtype).contiguous(), scaling=1.0)
        config = AdapterConfig(
            r=rank, lora_alpha=rank, target_modules=tuple(sorted({m.rsplit(".", 1)[-1] for m in modules}))
        )
        self._written += 1
        directory = write_adapter(LoraAdapter(config, modules), self.work_dir / f"adapter-{self._written:06d}")
        return AdapterRef(AdapterSourceKind.LOCAL, str(directory))


def _r_after_load(tensors: Mapping[str, torch.Tensor], model: LoraxModel) -> int | None:
    """What ``config.r`` holds after a load: each layer type loaded sets it to that type's (padded) rank
    (adapters/lora.py:196-205), so the last type loaded wins; ``None`` if no type loaded (r unchanged)."""
    rank = None
    for name, block in LLAMA_LAYER_TYPES:
        keys = [f"base_model.model.model.layers.{i}.{block}.{name}.lora_A.weight" for i in range(model.num_layers)]
        if all(k in tensors for k in keys) and all(
            f"base_model.model.model.layers.{i}.{block}.{name}.lora_B.weight" in tensors
            for i in range(model.num_layers)
        ):
            first = tensors[keys[0]].shape[0]
            rank = lorax_rank(first) if model.sgmv else first
    return rank


def num_layers(shapes: Mapping[str, tuple[int, int]]) -> int:
    """The model's depth, from its linear layers' names."""
    return 1 + max(int(m.group(1)) for name in shapes if (m := _LAYER.match(name)))
