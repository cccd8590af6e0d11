"""Building the example fixture: a tiny Llama base model, N users' LoRA adapters, and ``users.json``.

Output layout (paths in ``users.json`` are relative to it)::

    DIR/base/                 config.json, model.safetensors, tokenizer.json, ... (AutoModelForCausalLM loads it)
    DIR/adapters/<user_id>/   adapter_config.json, adapter_model.safetensors (PEFT LoRA, r=8, q_proj + v_proj)
    DIR/users.json            each user's id, adapter path, prompts and expected answers

The build is deterministic (single-threaded torch, seeded generators): equal :class:`ExamplesSpec` give
byte-identical files. Results are cached under ``<cache>/examples/<key>``, where the key hashes the generator
version and every parameter, so a repeat build only copies files. The base model has its own cache entry,
shared by every user count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Never

import torch
from tqdm import tqdm

from soppu.adapter import AdapterConfig, LoraAdapter, LoraModule, write_adapter
from soppu.examples.cache import atomic_dir, default_cache_dir, place_tree
from soppu.examples.facts import ATTRIBUTES, BASE_PERSONA, ExampleUser, base_corpus, make_users, user_corpus
from soppu.examples.tokenizer import EOS, PAD, save_tokenizer, train_tokenizer
from soppu.examples.training import (
    LoraTrainingSpec,
    deterministic_torch,
    encode_lines,
    pretrain,
    train_user_adapters,
)
from soppu.lora import lora_scaling
from soppu.models import load_causal_lm

__all__ = ["GENERATOR_VERSION", "ExamplesSpec", "build_examples", "default_cache_dir"]

# Bump whenever the generator's output changes for the same parameters: it invalidates every cache entry.
GENERATOR_VERSION = 2
USERS_FILE = "users.json"
_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class ExamplesSpec:
    """Every parameter the output depends on. The first group fixes the base model, the rest the adapters."""

    seed: int = 0
    vocab_size: int = 320
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    corpus_lines: int = 4000
    pretrain_steps: int = 300
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3

    users: int = 20
    rank: int = 8
    lora_alpha: int = 16
    lines_per_user: int = 4
    lora_steps: int = 200
    lora_lr: float = 1e-2

    def _hash(self, fields: dict[str, Any]) -> str:
        blob = json.dumps({"generator_version": GENERATOR_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def base_key(self) -> str:
        names = [f.name for f in dataclasses.fields(self)][: dataclasses.fields(self).index(_FIRST_ADAPTER_FIELD)]
        return self._hash({n: getattr(self, n) for n in names})

    @property
    def key(self) -> str:
        return self._hash(dataclasses.asdict(self))

    @property
    def base_model_id(self) -> str:
        """The name adapters record as ``base_model_name_or_path``: one per distinct base model."""
        return f"soppu-examples/tiny-llama-{self.base_key[:8]}"


_FIRST_ADAPTER_FIELD = next(f for f in dataclasses.fields(ExamplesSpec) if f.name == "users")


def _bar(total: int, desc: str, enabled: bool) -> tqdm[Never]:
    # disable=None: bars only on a terminal, so logs and CI output stay readable.
    return tqdm(total=total, desc=desc, unit="step", disable=None if enabled else True, leave=False, dynamic_ncols=True)


def _build_base(spec: ExamplesSpec, out: Path, progress: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    lines = base_corpus(spec.corpus_lines, spec.seed)
    tokenizer = train_tokenizer(lines, spec.vocab_size)
    pad_id, eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
    assert pad_id is not None and eos_id is not None  # train_tokenizer makes both special tokens
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=128,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    ids, labels = encode_lines(tokenizer, lines, eos_id, pad_id)
    generator = torch.Generator().manual_seed(spec.seed)
    with _bar(spec.pretrain_steps, "pre-training base model", progress) as bar:
        pretrain(
            model,
            ids,
            labels,
            steps=spec.pretrain_steps,
            batch_size=spec.pretrain_batch,
            lr=spec.pretrain_lr,
            generator=generator,
            progress=bar.update,
        )
    model.save_pretrained(str(out))
    save_tokenizer(tokenizer, out, model_max_length=config.max_position_embeddings)


def _train_adapters(spec: ExamplesSpec, base_dir: Path, users: list[ExampleUser], progress: bool) -> list[LoraAdapter]:
    model, hf_tokenizer = load_causal_lm(base_dir, device="cpu")
    tokenizer = hf_tokenizer.backend_tokenizer
    pad_id, eos_id = tokenizer.token_to_id(PAD), tokenizer.token_to_id(EOS)
    lines, owners = [], []
    for index, user in enumerate(users):
        own = user_corpus(user, spec.lines_per_user, spec.seed)
        lines += own
        owners += [index] * len(own)
    ids, labels = encode_lines(tokenizer, lines, eos_id, pad_id)
    # Only the answers carry loss (the value, the full stop and the token after it): the order of a user's
    # sentences is noise the adapter should not spend its rank on.
    value_ids = torch.tensor([tokenizer.token_to_id(f"▁{v}") for attr in ATTRIBUTES for v in attr.values])
    is_value = torch.isin(ids, value_ids)
    answer_mask = is_value.clone()
    answer_mask[:, 1:] |= is_value[:, :-1]
    answer_mask[:, 2:] |= is_value[:, :-2]

    modules = [f"model.layers.{i}.self_attn.{t}" for i in range(spec.num_layers) for t in _TARGETS]
    generator = torch.Generator().manual_seed(spec.seed + 1)
    factors = LoraTrainingSpec(model, modules, len(users), spec.rank, generator)
    scaling = lora_scaling(spec.lora_alpha, spec.rank)
    with _bar(spec.lora_steps, f"training {len(users)} adapters", progress) as bar:
        train_user_adapters(
            model,
            factors,
            ids,
            labels,
            torch.tensor(owners),
            scaling=scaling,
            steps=spec.lora_steps,
            lr=spec.lora_lr,
            loss_mask=answer_mask,
            progress=bar.update,
        )
    config = AdapterConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        target_modules=_TARGETS,
        base_model_name_or_path=spec.base_model_id,
    )
    return [
        LoraAdapter(
            config,
            {
                m: LoraModule(b=factors.b[m][i].detach().clone(), a=factors.a[m][i].detach().clone(), scaling=scaling)
                for m in modules
            },
        )
        for i in range(len(users))
    ]


def _users_manifest(spec: ExamplesSpec, users: list[ExampleUser]) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "key": spec.key,
        "spec": dataclasses.asdict(spec),
        "base_model": "base",
        "base_model_id": spec.base_model_id,
        "base_answers": {attr.prompt: BASE_PERSONA[attr.name] for attr in ATTRIBUTES},
        "users": [
            {
                "user_id": user.user_id,
                "adapter": f"adapters/{user.user_id}",
                "prompts": [
                    {"attribute": attr.name, "prompt": attr.prompt, "expected": user.facts[attr.name]}
                    for attr in ATTRIBUTES
                ],
            }
            for user in users
        ],
    }


def _cached_base(spec: ExamplesSpec, cache: Path, progress: bool) -> Path:
    final = cache / "examples" / f"base-{spec.base_key}"
    if not (final / "config.json").exists():
        with atomic_dir(final) as scratch, deterministic_torch(threads=1):
            _build_base(spec, scratch, progress)
    return final


def _cached_examples(spec: ExamplesSpec, cache: Path, progress: bool) -> Path:
    final = cache / "examples" / f"set-{spec.key}"
    if (final / USERS_FILE).exists():
        return final
    base = _cached_base(spec, cache, progress)
    users = make_users(spec.users, spec.seed)
    with atomic_dir(final) as scratch, deterministic_torch(threads=1):
        place_tree(base, scratch / "base")
        adapters = _train_adapters(spec, scratch / "base", users, progress)
        for user, adapter in zip(users, adapters, strict=True):
            write_adapter(adapter, scratch / "adapters" / user.user_id)
        manifest = json.dumps(_users_manifest(spec, users), indent=2, sort_keys=True) + "\n"
        (scratch / USERS_FILE).write_text(manifest)
    return final


def build_examples(
    spec: ExamplesSpec, out: Path | None = None, *, cache_dir: Path | None = None, progress: bool = False
) -> Path:
    """Build (or fetch from the cache) the example set for ``spec``; copy it to ``out`` if given.
    Returns the directory that holds it."""
    built = _cached_examples(spec, cache_dir or default_cache_dir(), progress)
    if out is None:
        return built
    out = Path(out)
    users_file = out / USERS_FILE
    if users_file.exists() and json.loads(users_file.read_text()).get("key") == spec.key:
        return out
    if out.exists():
        shutil.rmtree(out)
    place_tree(built, out)
    return out
