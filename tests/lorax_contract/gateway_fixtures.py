"""The gateway in front of the fake LoRAX 0.12.1, as production deploys them: both real processes, reading one
bucket of the session's moto S3 server, where users are published by the real registry pipeline
(:func:`soppu.registry.versions.accept_upload` then :meth:`soppu.registry.pipeline.Pipeline.run_job`), and
the gateway resolves each user through the bucket's pointers and sends the fake
``adapter_id=s3://bucket/exports/...`` with ``adapter_source: s3``.

The users (module ``test_gateway_against_fake``):

- ``rslora``, ``rank4``, ``alpha-pattern``: uploads LoRAX 0.12.1 mis-serves raw (:func:`variants`), built from
  the first example user's factors and published by the pipeline;
- ``raw-<name>``: the same uploads published as they are, with no served form (:func:`publish_raw`), to show
  what the fake does with them;
- ``gone``, ``retired-json``, ``retired-stream``: the first example user's own adapter, for the tests that
  delete an export from the bucket.

Each upload is also stored untouched under ``raw/<name>/v00000001``, the id our engine (the reference) loads.

The fake is started with ``--max-concurrent-requests 1`` (one permit held by ``POST /fake/hold`` is then an
overload) and without ``--adapter-source s3``: its default source is ``hub``, which it refuses, so a gateway that
forgot ``adapter_source`` would fail every request rather than pass by accident.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, LoraAdapter, LoraModule, adapter_files, read_adapter
from soppu.auth import KeyRing, Role
from soppu.lorax_limits import lorax_dtype
from soppu.models import load_causal_lm
from soppu.registry import JobState, Manifest, Pointer, ServedFrom
from soppu.registry.pipeline import Pipeline
from soppu.registry.policy import CompressionPolicy, QualityGate
from soppu.registry.versions import accept_upload
from soppu.store import S3Store
from soppu.store.layout import AdapterVersion
from tests.lorax_contract.fake_lorax_process import start_fake_lorax
from tests.support.processes import MOTO_ENV, ServiceProcess, start_service

__all__ = ["VARIANTS", "FakeDeployment", "fake_deployment", "publish_raw", "publish_upload", "variants"]

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "admin-" + uuid.uuid4().hex  # long and random: the gateway refuses a weak admin key at start
VARIANTS = ("rslora", "rank4", "alpha-pattern")


def variants(original: LoraAdapter) -> dict[str, LoraAdapter]:
    """Uploads built from ``original``'s factors that LoRAX 0.12.1 serves wrongly as they are: it drops
    ``use_rslora`` and ``alpha_pattern`` (peft 0.4.0) and, for rank 4, pads the rank to 8 and scales the layer
    types after the first by ``alpha / 8`` (lorax_semantics.py, rules 1 and 4)."""
    modules = dict(original.modules)
    targets = tuple(sorted({m.rsplit(".", 1)[-1] for m in modules}))
    common = {"target_modules": targets, "base_model_name_or_path": original.base_model}

    def build(config: AdapterConfig) -> LoraAdapter:
        kept = {}
        for module, lora in modules.items():
            rank = config.rank_for(module)
            kept[module] = LoraModule(lora.b[:, :rank].clone(), lora.a[:rank].clone(), config.scaling_for(module))
        return LoraAdapter(config, kept)

    return {
        # PEFT scales by 4/sqrt(8) = 1.41; LoRAX by 4/8.
        "rslora": build(AdapterConfig(r=8, lora_alpha=4, use_rslora=True, **common)),  # type: ignore[arg-type]
        # PEFT scales both types by 8/4; LoRAX the first by 8/4, the second by 8/8 (after padding to 8).
        "rank4": build(AdapterConfig(r=4, lora_alpha=8, **common)),  # type: ignore[arg-type]
        # PEFT scales the last type by 4/8; LoRAX by 16/8, the alpha_pattern gone.
        "alpha-pattern": build(AdapterConfig(r=8, lora_alpha=16, alpha_pattern={targets[-1]: 4}, **common)),  # type: ignore[arg-type]
    }


def publish_upload(pipeline: Pipeline, user: str, adapter: LoraAdapter) -> AdapterVersion:
    """Publish ``adapter`` as ``user``'s next ``default`` version the way the compressor does: accept the upload,
    run its job."""
    files = adapter_files(adapter)
    job, _ = accept_upload(pipeline.store, user, "default", {CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    version = AdapterVersion.from_job_id(job.job_id)
    record = pipeline.run_job(version)
    assert record.state == JobState.DONE and record.report is not None, record.error
    # The tests compare with the original upload: every version here must be served from it (see the gate).
    assert record.report.served_from == ServedFrom.ORIGINAL, record.report
    return version


def publish_raw(store: S3Store, user: str, adapter: LoraAdapter) -> AdapterVersion:
    """Make ``adapter``'s files, as uploaded (no served form), ``user``'s version 1: the export, a manifest, then
    the pointer, in the pipeline's order; what a SOPPU without the served form would have published."""
    ref = AdapterVersion(user, "default", 1)
    files = adapter_files(adapter)
    for key, data in zip(ref.export_keys(), (files.config, files.weights), strict=True):
        store.put(key, data, create_only=True)
    manifest = Manifest(
        user_id=user,
        adapter="default",
        version=1,
        served_from=ServedFrom.ORIGINAL.value,
        export_prefix=ref.export_prefix,
        core_prefix=None,
        cohort=None,
        basis_key=None,
        base_model=adapter.base_model,
        report={},
    )
    store.put(ref.manifest_key, manifest.to_json(), create_only=True)
    store.put(ref.pointer_key, Pointer(version=1, manifest_key=ref.manifest_key).to_json())
    return ref


@dataclass
class FakeDeployment:
    gateway: ServiceProcess
    fake: ServiceProcess
    store: S3Store
    pipeline: Pipeline
    keys: dict[str, str]  # user id -> that user's key
    reference_ids: dict[str, str]  # variant -> s3:// id of the upload as it is, for our engine
    export_dtype: str  # what the pipeline wrote the exports in
    prompt: str  # one the first example user's adapter answers differently from the base model
    versions: dict[str, AdapterVersion] = field(default_factory=dict)  # user -> its published version

    @property
    def url(self) -> str:
        return self.gateway.url

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[user]}"}

    def fake_log_count(self, line: str) -> int:
        """How many of the fake's uvicorn access-log lines contain ``line`` (e.g. ``"POST /generate HTTP``): the
        requests it received, whoever sent them."""
        return self.fake.log.read_text(errors="replace").count(line)


def _start_gateway(log: Path, store: S3Store, moto_url: str, backend: str) -> ServiceProcess:
    settings = {
        "SOPPU_STORE_URL": store.url,
        "SOPPU_ADMIN_KEY": ADMIN_KEY,
        "SOPPU_GATEWAY_BACKENDS": json.dumps([{"url": backend, "kind": "lorax"}]),
        "SOPPU_GATEWAY_HEALTH_INTERVAL_S": "0.5",
        "SOPPU_GATEWAY_RETRY_BACKOFF_S": "0.01",
        # A resolution outlives a test that publishes a newer version: the retired-version rule is then reached.
        "SOPPU_GATEWAY_RESOLUTION_TTL_S": "600",
        "S3_ENDPOINT_URL": moto_url,
        "OMP_NUM_THREADS": "1",
        **MOTO_ENV,
    }

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "gateway_service", "--port", str(port)]

    return start_service(command, log=log, ready_path="/healthz", env=settings, timeout_s=60, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def fake_deployment(
    tmp_path_factory: pytest.TempPathFactory, examples_dir: Path, lorax_model_dir: Path, moto_server: str
) -> Iterator[FakeDeployment]:
    """The bucket with every user published, the fake LoRAX (one permit) and the gateway in front of it."""
    logs = tmp_path_factory.mktemp("gateway-against-fake")
    # gw-*: a bucket the session's engine (tests/conftest.py) is allowed to read, for the reference answers.
    store = S3Store(f"gw-lorax-{uuid.uuid4().hex[:12]}", endpoint_url=moto_server, access_key="testing",
                    secret_key="testing", region="us-east-1")  # fmt: skip
    store.ensure_bucket()
    base = examples_dir / "base"
    # The compressor's export_dtype "auto": the dtype LoRAX serves this base in (float16: config.json names none).
    export_dtype = lorax_dtype(json.loads((base / "config.json").read_text()))
    # Served from the original, always: a rank-2 basis cannot meet an error cap of 1e-9, so every upload is
    # published as its served form, which must answer as the upload itself. The gate holds the base model (the
    # pipeline then knows its layers, as in production) but stands for another base id, so it judges by the cap
    # alone (no behaviour fitting: quick). No refit (refit_after): it would publish further versions.
    policy = CompressionPolicy(device="cpu", rank=2, refit_after=1_000_000, export_dtype=export_dtype)
    gate = QualityGate(model=load_causal_lm(base, "cpu"), base_model="another/base", max_error=1e-9)
    pipeline = Pipeline(store, policy, gate)
    examples = json.loads((examples_dir / "users.json").read_text())
    first = examples["users"][0]
    original = read_adapter(examples_dir / first["adapter"])
    prompt = next(p["prompt"] for p in first["prompts"] if p["expected"] != examples["base_answers"][p["prompt"]])
    ring = KeyRing(store)
    keys: dict[str, str] = {}
    reference_ids: dict[str, str] = {}
    versions: dict[str, AdapterVersion] = {}
    for name, upload in variants(original).items():
        files = adapter_files(upload)
        raw = f"raw/{name}/v00000001"
        store.put(f"{raw}/{CONFIG_NAME}", files.config)
        store.put(f"{raw}/{WEIGHTS_NAME}", files.weights)
        reference_ids[name] = f"s3://{store.bucket}/{raw}"
        versions[name] = publish_upload(pipeline, name, upload)
        versions[f"raw-{name}"] = publish_raw(store, f"raw-{name}", upload)
    for user in ("gone", "retired-json", "retired-stream"):
        versions[user] = publish_upload(pipeline, user, original)
    for user in versions:
        keys[user] = ring.issue(Role.USER, user)[0]

    fake = start_fake_lorax(lorax_model_dir, logs / "fake_lorax.log", moto_server, "--max-concurrent-requests", "1")
    try:
        gateway = _start_gateway(logs / "gateway.log", store, moto_server, fake.url)
    except BaseException:
        fake.stop()
        raise
    try:
        yield FakeDeployment(gateway, fake, store, pipeline, keys, reference_ids, export_dtype, prompt, versions)
    finally:
        gateway.stop()
        fake.stop()
