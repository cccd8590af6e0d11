"""Every export SOPPU publishes is served by LoRAX 0.12.1 exactly as PEFT serves the stored form.

The served form (:func:`soppu.adapter.served_form.served_form`) is checked case by case against the
LoRAX-semantics loader (:mod:`lorax_semantics`), for plain, odd-rank, rsLoRA, rank- and alpha-patterned and
partial-layer adapters and in the served dtypes; the raw form of the same adapters shows what LoRAX would have
served without it. Then the pipeline's published exports, of users served compressed and of users served their
original, are loaded the same way from the store.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from soppu.adapter import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterConfig,
    LoraAdapter,
    LoraModule,
    adapter_files,
    read_adapter,
)
from soppu.adapter.served_form import SERVED_RANKS, check_servable, served_form, served_rank
from soppu.compression.factors import core_to_factors
from soppu.compression.format import read_bases, read_core
from soppu.compression.model import Mode
from soppu.errors import AdapterError
from soppu.lorax_limits import lorax_dtype
from soppu.models import linear_shapes, load_causal_lm
from soppu.registry import Manifest, ServedFrom
from soppu.registry.pipeline import Pipeline
from soppu.registry.policy import CompressionPolicy, QualityGate
from soppu.registry.versions import accept_upload
from soppu.store import LocalStore, ObjectStore
from soppu.store.layout import AdapterVersion
from tests.lorax_contract.lorax_semantics import LoraxLoadError, LoraxModel, lorax_config, lorax_deltas

LAYERS = 3
# (name, block, (d_out, d_in)) of a small Llama-like model: widths as LoRAX sees them don't matter here.
TYPES = (("q_proj", "self_attn", (64, 64)), ("v_proj", "self_attn", (32, 64)), ("down_proj", "mlp", (64, 96)))
SHAPES = {f"model.layers.{i}.{block}.{name}": shape for i in range(LAYERS) for name, block, shape in TYPES}


def _adapter(config: AdapterConfig, *, drop: tuple[str, ...] = (), dtype: torch.dtype = torch.float32) -> LoraAdapter:
    generator = torch.Generator().manual_seed(7)
    modules = {}
    for module, (d_out, d_in) in SHAPES.items():
        if module in drop:
            continue
        rank = config.rank_for(module)
        b = torch.randn(d_out, rank, generator=generator).to(dtype)
        a = torch.randn(rank, d_in, generator=generator).to(dtype)
        modules[module] = LoraModule(b, a, config.scaling_for(module))
    return LoraAdapter(config, modules)


def _config(**fields: object) -> AdapterConfig:
    return AdapterConfig(
        **{"r": 8, "lora_alpha": 16, "target_modules": ("q_proj", "v_proj", "down_proj"), **fields}  # type: ignore[arg-type]
    )


CASES: dict[str, Callable[[], LoraAdapter]] = {
    "plain r=8": lambda: _adapter(_config()),
    "r=4 (LoRAX pads to 8, then scales later types by alpha/8)": lambda: _adapter(_config(r=4, lora_alpha=4)),
    "r=12": lambda: _adapter(_config(r=12, lora_alpha=24)),
    "r=24": lambda: _adapter(_config(r=24, lora_alpha=8)),
    "r=100 (padded to 128)": lambda: _adapter(_config(r=100, lora_alpha=50)),
    "rsLoRA": lambda: _adapter(_config(r=16, lora_alpha=8, use_rslora=True)),
    "rank_pattern": lambda: _adapter(_config(rank_pattern={"v_proj": 4, "down_proj": 12})),
    "alpha_pattern": lambda: _adapter(_config(alpha_pattern={"q_proj": 2.5})),
    "rsLoRA with both patterns": lambda: _adapter(
        _config(use_rslora=True, rank_pattern={"down_proj": 16}, alpha_pattern={"v_proj": 32})
    ),
}


def _peft(adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """PEFT's semantics: ``scaling * B @ A`` per module, with rsLoRA and the patterns as PEFT applies them."""
    return {module: lora.delta().float() for module, lora in adapter.to(dtype=torch.float32)}


def _loaded(adapter: LoraAdapter, dtype: torch.dtype = torch.float32, sgmv: bool = True) -> dict[str, torch.Tensor]:
    files = adapter_files(adapter)
    return lorax_deltas(files.config, files.weights, LoraxModel(LAYERS, dtype=dtype, sgmv=sgmv))


def _worst(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """The worst relative difference over every module of ``want`` (inf for a module LoRAX dropped)."""
    worst = 0.0
    for module, delta in want.items():
        if module not in got:
            return float("inf")
        scale = float(delta.abs().max()) or 1.0
        worst = max(worst, float((got[module] - delta).abs().max()) / scale)
    return worst


@pytest.mark.parametrize("sgmv", [True, False], ids=["punica", "disable-sgmv"])
@pytest.mark.parametrize("case", list(CASES))
def test_lorax_serves_the_served_form_exactly(case: str, sgmv: bool) -> None:
    adapter = CASES[case]()
    served = served_form(adapter)
    assert served.config.r == served.config.lora_alpha and served.config.r in SERVED_RANKS
    assert {lora.rank for _, lora in served} == {served.config.r}
    config = json.loads(adapter_files(served).config)
    assert not config["use_rslora"] and not config["rank_pattern"] and not config["alpha_pattern"]
    assert _worst(_loaded(served, sgmv=sgmv), _peft(adapter)) < 1e-6


def test_lorax_misserves_the_raw_forms_the_served_form_replaces() -> None:
    # Why the served form exists: each of these, published raw, answers differently on LoRAX.
    misserved = ("r=4 (LoRAX pads to 8, then scales later types by alpha/8)", "r=12", "rsLoRA", "alpha_pattern")
    for case in (*misserved, "rank_pattern"):
        adapter = CASES[case]()
        assert _worst(_loaded(adapter), _peft(adapter)) > 0.2, case
    # A rank pattern by layer gives one layer type two ranks, which LoRAX cannot stack: the load fails.
    by_layer = _adapter(_config(rank_pattern={"layers.0.self_attn.q_proj": 24}))
    with pytest.raises(LoraxLoadError, match="stacked"):
        _loaded(by_layer)
    assert _worst(_loaded(served_form(by_layer)), _peft(by_layer)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_served_dtype_rounds_once_and_loads_unchanged(dtype: torch.dtype) -> None:
    adapter = CASES["rsLoRA with both patterns"]()
    served = served_form(adapter, dtype=dtype)
    assert all(lora.a.dtype == dtype and lora.b.dtype == dtype for _, lora in served)
    # LoRAX casts to the model dtype: a no-op on these factors, so it applies exactly what was published.
    loaded = _loaded(served, dtype=dtype)
    published = {module: (lora.b.float() @ lora.a.float()) for module, lora in served}
    assert _worst(loaded, published) == 0.0
    assert _worst(loaded, _peft(adapter)) < 2e-2  # one rounding of each factor to 8 (bf16) or 11 (fp16) bits


def test_a_bf16_upload_keeps_its_dtype_by_default() -> None:
    adapter = _adapter(_config(r=4, lora_alpha=8), dtype=torch.bfloat16)
    assert all(lora.a.dtype == torch.bfloat16 for _, lora in served_form(adapter))


def test_a_partial_layer_type_is_filled_with_zeros_from_the_base_shapes() -> None:
    missing = ("model.layers.1.self_attn.v_proj", "model.layers.2.self_attn.v_proj")
    adapter = _adapter(_config(), drop=missing)
    assert set(_loaded(adapter)) == set(SHAPES) - {m for m in SHAPES if ".v_proj" in m}  # LoRAX drops v_proj
    served = served_form(adapter, shapes=SHAPES)
    assert set(served.modules) == set(SHAPES)
    assert all(not served.modules[m].b.any() and not served.modules[m].a.any() for m in missing)
    want = {**_peft(adapter), **{m: torch.zeros(SHAPES[m]) for m in missing}}
    assert _worst(_loaded(served), want) < 1e-6


def test_a_partial_layer_type_without_the_base_shapes_is_refused() -> None:
    adapter = _adapter(_config(), drop=("model.layers.1.mlp.down_proj",))
    with pytest.raises(AdapterError) as refused:
        served_form(adapter)
    assert refused.value.code == "lorax_partial_layers" and "model.layers.N.mlp.down_proj" in str(refused.value)
    check_servable(adapter, SHAPES)  # with the base model's shapes it is fixable


def test_ranks_over_128_are_refused() -> None:
    assert [served_rank(r) for r in (1, 8, 9, 16, 17, 33, 100, 128)] == [8, 8, 16, 16, 32, 64, 128, 128]
    with pytest.raises(AdapterError) as refused:
        check_servable(_adapter(_config(r=129, lora_alpha=8)))
    assert refused.value.code == "lorax_rank_limit"


def test_the_served_dtype_follows_lorax() -> None:
    assert lorax_dtype({"torch_dtype": "bfloat16"}) == "bfloat16"
    assert lorax_dtype({"torch_dtype": "float32"}) == "float16"  # LoRAX serves float32 checkpoints in fp16
    assert lorax_dtype({}) == "float16"
    assert lorax_dtype({"torch_dtype": "float32"}, override="bfloat16") == "bfloat16"


# --- the pipeline's published exports ----------------------------------------------------------------------


def _variants(original: LoraAdapter) -> dict[str, LoraAdapter]:
    """Uploads built from one example user's factors: rsLoRA, patterns, rank 4, a partial layer type."""
    modules = dict(original.modules)
    targets = tuple(sorted({m.rsplit(".", 1)[-1] for m in modules}))

    def build(config: AdapterConfig, drop: tuple[str, ...] = ()) -> LoraAdapter:
        kept = {}
        for module, lora in modules.items():
            if module in drop:
                continue
            rank = config.rank_for(module)
            kept[module] = LoraModule(lora.b[:, :rank].clone(), lora.a[:rank].clone(), config.scaling_for(module))
        return LoraAdapter(config, kept)

    base = {"target_modules": targets, "base_model_name_or_path": original.base_model}
    first = sorted(modules)[0]
    return {
        "rslora": build(AdapterConfig(r=8, lora_alpha=4, use_rslora=True, **base)),  # type: ignore[arg-type]
        "patterns": build(
            AdapterConfig(r=8, lora_alpha=16, rank_pattern={targets[-1]: 4}, alpha_pattern={targets[0]: 3}, **base)  # type: ignore[arg-type]
        ),
        "rank4": build(AdapterConfig(r=4, lora_alpha=8, **base)),  # type: ignore[arg-type]
        "partial": build(AdapterConfig(r=8, lora_alpha=16, **base), drop=(first,)),  # type: ignore[arg-type]
    }


@pytest.fixture(scope="module")
def tiny_model(examples_dir: Path) -> tuple[torch.nn.Module, object]:
    return load_causal_lm(examples_dir / "base", "cpu")


def _stored_form(store: ObjectStore, manifest: Manifest, core_key: str) -> dict[str, torch.Tensor]:
    """What our engine serves natively for a compressed user: ``U S V^T`` from the stored core and basis."""
    assert manifest.basis_key is not None
    bases = read_bases(store.get(manifest.basis_key).data)
    core = read_core(store.get(core_key).data, bases=bases)
    mode = Mode(core.meta.mode)
    return {
        module: (lambda b, a: b @ a)(*core_to_factors(bases.bases[module], tensor, mode))
        for module, tensor in core.adapter.cores.items()
    }


@pytest.mark.parametrize("served_from", [ServedFrom.COMPRESSED, ServedFrom.ORIGINAL])
def test_every_published_export_loads_on_lorax_as_its_stored_form(
    tmp_path: Path, examples_dir: Path, tiny_model: tuple[torch.nn.Module, object], served_from: ServedFrom
) -> None:
    user = json.loads((examples_dir / "users.json").read_text())["users"][0]["user_id"]
    original = read_adapter(examples_dir / "adapters" / user)
    shapes = linear_shapes(tiny_model[0])
    num_layers = 1 + max(int(m.split(".")[2]) for m in shapes if ".layers." in m)
    compressed = served_from is ServedFrom.COMPRESSED
    # The gate holds the base model, so the pipeline knows the base's layers, but stands for another base id,
    # so it judges by the error cap alone (quick): R = 16 >= r is exact for a cohort's first member; R = 2
    # under a cap of 1e-9 is refused, and the original is served.
    gate = QualityGate(model=tiny_model, base_model="another/base", max_error=1.0 if compressed else 1e-9)
    policy = CompressionPolicy(device="cpu", rank=16 if compressed else 2, export_dtype="bfloat16")
    for name, upload in _variants(original).items():
        store = LocalStore(tmp_path / name)  # each upload the first member of its own cohort
        files = adapter_files(upload)
        job, _ = accept_upload(store, "user", "default", {CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
        version = AdapterVersion.from_job_id(job.job_id)
        report = Pipeline(store, policy, gate).run_job(version).report
        assert report is not None and report.served_from == served_from, name
        config_raw, weights_raw = (store.get(key).data for key in version.export_keys())
        assert lorax_config(config_raw)["r"] in SERVED_RANKS
        loaded = lorax_deltas(config_raw, weights_raw, LoraxModel(num_layers, dtype=torch.bfloat16))
        manifest = Manifest.from_json(store.get(version.manifest_key).data)
        stored = _stored_form(store, manifest, version.core_key) if compressed else _peft(upload)
        filled = {m: torch.zeros(shapes[m]) for m in loaded if m not in stored}
        assert len(filled) == (1 if name == "partial" else 0), name  # the layer the upload left out, as zeros
        assert _worst(loaded, {**stored, **filled}) < 2e-2, name  # bf16: one rounding per factor
        if compressed:
            assert _worst(stored, _peft(upload)) < 1e-4, name


def test_the_session_audit_catches_an_export_lorax_would_misserve(tmp_path: Path, examples_dir: Path) -> None:
    # tests/conftest.py runs export_audit over every store at the session's end; here, that it can fail.
    from tests.lorax_contract.export_audit import audit_store

    user = json.loads((examples_dir / "users.json").read_text())["users"][0]["user_id"]
    upload = _variants(read_adapter(examples_dir / "adapters" / user))["rslora"]
    store = LocalStore(tmp_path / "audited")
    files = adapter_files(upload)
    job, _ = accept_upload(store, "user", "default", {CONFIG_NAME: files.config, WEIGHTS_NAME: files.weights})
    version = AdapterVersion.from_job_id(job.job_id)
    Pipeline(store, CompressionPolicy(device="cpu"), QualityGate()).run_job(version)
    assert audit_store(store, "here") == (1, [])
    store.put(version.export_keys()[0], files.config)  # the raw upload's config: rsLoRA, r = 8 != lora_alpha
    store.put(version.export_keys()[1], files.weights)
    checked, problems = audit_store(store, "here")
    assert checked == 1 and len(problems) == 1 and "not a served form" in problems[0]
    shutil.rmtree(store.root)  # not left for the session's audit
