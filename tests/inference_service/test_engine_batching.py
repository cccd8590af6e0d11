"""The engine's batching against PEFT: a batch that mixes plain LoRAs of different ranks, compressed adapters
(full and diagonal cores) and the base model, with rows joining mid-run, gives every row the same greedy tokens
as PEFT running that row alone, and logits within 1e-4 in fp32."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from inference_service.engine.formats import LoadedCore, LoadedLora, load_basis, load_core, load_lora
from inference_service.engine.layers import gathered_lora_delta, reference_delta, shared_basis_delta
from inference_service.engine.runner import Loaded, ModelRunner
from soppu.adapter import CONFIG_NAME, WEIGHTS_NAME, LoraModule, read_adapter, write_adapter
from soppu.compression import Mode, RankPolicy, compress
from soppu.compression.export import write_peft_export
from soppu.compression.format import bases_bytes, core_bytes
from soppu.models import load_causal_lm

STEPS = 6
TOLERANCE = 1e-4


def test_fast_paths_match_the_reference() -> None:
    torch.manual_seed(0)
    n, t, d_in, d_out, r, big_r = 3, 4, 16, 12, 4, 6
    x = torch.randn(n, t, d_in)
    a, b = torch.randn(n, r, d_in), torch.randn(n, d_out, r)
    expected = torch.stack([reference_delta(x[i], b[i], a[i], 1.0) for i in range(n)])
    torch.testing.assert_close(gathered_lora_delta(x, a, b), expected)
    u, v = torch.linalg.qr(torch.randn(d_out, big_r))[0], torch.linalg.qr(torch.randn(d_in, big_r))[0]
    cores = torch.randn(n, big_r, big_r)
    expected = torch.stack([reference_delta(x[i], u @ cores[i], v.T, 1.0) for i in range(n)])
    torch.testing.assert_close(shared_basis_delta(x, u, v, cores), expected)
    diag = torch.randn(n, big_r)
    expected = torch.stack([reference_delta(x[i], u @ torch.diag(diag[i]), v.T, 1.0) for i in range(n)])
    torch.testing.assert_close(shared_basis_delta(x, u, v, diag), expected)


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (CONFIG_NAME, WEIGHTS_NAME)}


@pytest.fixture(scope="module")
def served(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Adapter kinds to serve, each as (a PEFT directory that computes the same thing, a prompt)."""
    users = json.loads((examples_dir / "users.json").read_text())["users"]
    work = tmp_path_factory.mktemp("served")
    adapters = {u["user_id"]: read_adapter(examples_dir / "adapters" / u["user_id"]) for u in users}
    out: dict[str, tuple[Path, str]] = {}
    for i, u in enumerate(users[:2]):
        out[f"plain-{i}"] = (examples_dir / "adapters" / u["user_id"], u["prompts"][i]["prompt"])
    # A rank-4 cut of a third user's adapter: a batch with mixed ranks.
    source = adapters[users[2]["user_id"]]
    cut = {name: LoraModule(m.b[:, :4], m.a[:4], m.scaling) for name, m in source}
    low = dataclasses.replace(source.config, r=4)
    out["plain-rank4"] = (
        write_adapter(type(source)(low, cut), work / "rank4"),
        "Tell me: " + users[2]["prompts"][0]["prompt"],
    )
    for mode in (Mode.FULL, Mode.DIAG):
        compression = compress(list(adapters.items()), mode=mode, policy=RankPolicy.fixed(12), device="cpu")
        for i, u in enumerate(users[:2]):
            peft_dir = write_peft_export(compression, u["user_id"], work / f"{mode.value}-{u['user_id']}")
            core = core_bytes(compression, compression.adapter(u["user_id"]))
            (peft_dir / "core.bin").write_bytes(core)
            (peft_dir / "bases.bin").write_bytes(bases_bytes(compression.clusters[0], compression))
            out[f"{mode.value}-{i}"] = (peft_dir, u["prompts"][-1 - i]["prompt"])
    return out


def _load(runner: ModelRunner, directory: Path, kind: str) -> Loaded:
    if kind.startswith("plain"):
        return load_lora(_files(directory), runner.shapes, kind)
    basis = load_basis((directory / "bases.bin").read_bytes(), runner.shapes, kind)
    return load_core((directory / "core.bin").read_bytes(), basis, runner.shapes, kind)


def test_batched_rows_match_peft_alone(examples_dir: Path, served: dict[str, tuple[Path, str]]) -> None:
    model, tokenizer = load_causal_lm(examples_dir / "base", "cpu")
    runner = ModelRunner(model)
    kinds = [*served, "base"]
    loaded = {k: _load(runner, served[k][0], k) if k != "base" else None for k in kinds}
    assert any(isinstance(a, LoadedCore) for a in loaded.values())
    assert len({a.max_rank for a in loaded.values() if isinstance(a, LoadedLora)}) == 2  # mixed ranks
    prompts = {k: tokenizer(served[k][1] if k != "base" else "My pet is a")["input_ids"] for k in kinds}

    # The first half starts together; the second half joins after two tokens (a merge at a token boundary).
    first, second = kinds[::2], kinds[1::2]
    logits, kv = runner.prefill([prompts[k] for k in first], [loaded[k] for k in first])
    rows, seen = list(first), {k: [logits[i]] for i, k in enumerate(first)}
    for step in range(STEPS):
        if step == 2:
            new_logits, new_kv = runner.prefill([prompts[k] for k in second], [loaded[k] for k in second])
            kv, rows = kv.merge(new_kv), rows + list(second)
            for i, k in enumerate(second):
                seen[k] = [new_logits[i]]
        tokens = torch.tensor([int(seen[k][-1].argmax()) for k in rows])
        step_logits = runner.decode(kv, tokens, runner.plan([loaded[k] for k in rows]))
        for i, k in enumerate(rows):
            seen[k].append(step_logits[i])

    reference, _ = load_causal_lm(examples_dir / "base", "cpu")
    peft = None
    for k in kinds:
        got = torch.stack(seen[k])
        tokens = got.argmax(-1).tolist()
        ids = torch.tensor([prompts[k] + tokens[:-1]])
        if k == "base":
            with peft.disable_adapter(), torch.no_grad():
                expected = peft(input_ids=ids).logits[0, len(prompts[k]) - 1 :]
        else:
            if peft is None:
                peft = PeftModel.from_pretrained(reference, str(served[k][0]), adapter_name=k).eval()
            else:
                peft.load_adapter(str(served[k][0]), adapter_name=k)
            peft.set_adapter(k)
            with torch.no_grad():
                expected = peft(input_ids=ids).logits[0, len(prompts[k]) - 1 :]
        assert expected.argmax(-1).tolist() == tokens, k
        assert (expected - got).abs().max().item() < TOLERANCE, k
