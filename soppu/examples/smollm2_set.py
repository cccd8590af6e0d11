"""The SmolLM2 example set: the converted base plus the personal users' adapters that ship in the repository.

Training 20 users takes minutes on a 2-core CPU, too long for every fresh clone, so the adapters are trained
once (``soppu examples train``) and committed under ``examples/smollm2/`` (bf16, about 1 MB a user) with their
``users.json``. ``soppu examples build --base smollm2`` converts the base (cached) and lays out the first N
shipped users next to it, in the layout every consumer reads::

    DIR/base/                 the converted SmolLM2-135M-Instruct (see soppu.examples.smollm2)
    DIR/adapters/<user_id>/   adapter_config.json, adapter_model.safetensors (PEFT LoRA, recipes vary)
    DIR/users.json            each user's recipe and questions: expected value, held-out or trained, the
                              reply of the original adapter and of the base model alone
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from soppu.adapter import write_adapter
from soppu.errors import ExamplesError
from soppu.examples.cache import atomic_dir, place_tree
from soppu.examples.personal import FACTS, RECIPES, PersonalUser, make_personal_users
from soppu.examples.personal_training import ask, train_personal_adapters
from soppu.examples.smollm2 import BASE_MODEL_ID, cached_smollm2
from soppu.examples.training import deterministic_torch
from soppu.models import load_causal_lm

__all__ = ["SHIPPED_DIR", "TrainingSpec", "build_smollm2_examples", "train_smollm2_examples"]

USERS_FILE = "users.json"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "examples" / "smollm2"
# Bump whenever training gives other adapters for the same parameters.
TRAINER_VERSION = 1


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
    users: int = 16
    seed: int = 0
    steps: int = 30
    lr: float = 2e-3
    users_per_batch: int = 4
    # Fixed, not the machine's core count: float reductions then add up in the same order everywhere.
    threads: int = 2

    def key(self, base_key: str) -> str:
        """A key over everything the adapters depend on: the trainer, the base, these parameters, and the
        facts, questions and recipes themselves (editing a question must not reuse old adapters)."""
        world = [dataclasses.asdict(f) for f in FACTS] + [dataclasses.asdict(r) for r in RECIPES]
        fields = {"trainer": TRAINER_VERSION, "base": base_key, "world": world, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def _questions(user: PersonalUser) -> list[tuple[str, str, bool]]:
    """(fact name, question, held out) for every question a user is asked."""
    return [(f.name, q, held) for f in FACTS for held, qs in ((False, f.trained), (True, f.held_out)) for q in qs]


def _manifest(
    spec: TrainingSpec,
    base_key: str,
    users: list[PersonalUser],
    replies: dict[str, list[str]],
    base_replies: dict[str, str],
) -> dict[str, Any]:
    return {
        "base": "smollm2",
        "base_model": "base",
        "base_model_id": BASE_MODEL_ID,
        "prompt_style": "chat",
        "converted_base_key": base_key,
        "training": {**dataclasses.asdict(spec), "trainer_version": TRAINER_VERSION},
        "users": [
            {
                "user_id": user.user_id,
                "adapter": f"adapters/{user.user_id}",
                "recipe": dataclasses.asdict(user.recipe),
                "prompts": [
                    {
                        "attribute": fact,
                        "prompt": question,
                        "expected": user.facts[fact],
                        "held_out": held,
                        "answer": reply,
                        "base_answer": base_replies[question],
                    }
                    for (fact, question, held), reply in zip(_questions(user), replies[user.user_id], strict=True)
                ],
            }
            for user in users
        ],
    }


def train_smollm2_examples(spec: TrainingSpec, out: Path, *, cache_dir: Path, progress: bool = False) -> Path:
    """Train ``spec.users`` personal adapters on the converted base and write them (with ``users.json``) to
    ``out``. Cached by :meth:`TrainingSpec.key`."""
    base = cached_smollm2(cache_dir)
    base_key = base.name.removeprefix("smollm2-")
    final = cache_dir / "examples" / f"smollm2-users-{spec.key(base_key)}"
    if not (final / USERS_FILE).exists():
        users = make_personal_users(spec.users, spec.seed)
        with atomic_dir(final) as scratch, deterministic_torch(spec.threads):
            model, tokenizer = load_causal_lm(base, "cpu")
            generator = torch.Generator().manual_seed(spec.seed)
            with tqdm(
                total=spec.steps * -(-spec.users // spec.users_per_batch),
                desc=f"training {spec.users} adapters",
                unit="step",
                disable=not progress,
            ) as bar:
                adapters = train_personal_adapters(
                    model,
                    tokenizer,
                    users,
                    base_model_id=BASE_MODEL_ID,
                    steps=spec.steps,
                    lr=spec.lr,
                    users_per_batch=spec.users_per_batch,
                    generator=generator,
                    progress=bar.update,
                )
            all_questions = sorted({q for _, q, _ in _questions(users[0])})
            base_replies = dict(zip(all_questions, ask(model, tokenizer, all_questions, None), strict=True))
            replies = {}
            for user, adapter in tqdm(list(zip(users, adapters, strict=True)), desc="asking", disable=not progress):
                write_adapter(adapter, scratch / "adapters" / user.user_id)
                replies[user.user_id] = ask(model, tokenizer, [q for _, q, _ in _questions(user)], adapter)
            manifest = _manifest(spec, base_key, users, replies, base_replies)
            (scratch / USERS_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.resolve() != final.resolve():
        shutil.rmtree(out, ignore_errors=True)
        place_tree(final, out)
    return out


def shipped_users() -> dict[str, Any]:
    path = SHIPPED_DIR / USERS_FILE
    if not path.is_file():
        raise ExamplesError("missing_shipped_adapters", f"{path} is missing: run `soppu examples train`")
    users: dict[str, Any] = json.loads(path.read_text())
    return users


def build_smollm2_examples(users: int, out: Path, *, cache_dir: Path) -> Path:
    """The converted base plus the first ``users`` shipped users in ``out`` (replaced if it holds another set)."""
    manifest = shipped_users()
    if not 1 <= users <= len(manifest["users"]):
        raise ExamplesError(
            "too_many_users",
            f"the repository ships {len(manifest['users'])} SmolLM2 users (asked for {users}); "
            f"`soppu examples train --users {users}` trains more",
        )
    base = cached_smollm2(cache_dir)
    shipped_sha = hashlib.sha256((SHIPPED_DIR / USERS_FILE).read_bytes()).hexdigest()[:16]
    key = f"{base.name}-{shipped_sha}-{users}"
    users_file = out / USERS_FILE
    if users_file.exists() and json.loads(users_file.read_text()).get("key") == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    with atomic_dir(out) as scratch:
        place_tree(base, scratch / "base")
        selected = manifest["users"][:users]
        for user in selected:
            shutil.copytree(SHIPPED_DIR / user["adapter"], scratch / user["adapter"])
        (scratch / USERS_FILE).write_text(json.dumps({**manifest, "key": key, "users": selected}, indent=2) + "\n")
    return out
