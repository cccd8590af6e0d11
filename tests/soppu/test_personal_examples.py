"""The personal users' world (facts, paraphrases, recipes) and mixed-recipe training, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soppu.examples.personal import FACTS, RECIPES, answer_has, make_personal_users
from soppu.examples.training import LoraTrainingSpec, train_user_adapters
from soppu.models import load_causal_lm


def test_users_never_share_an_answer_and_cycle_through_the_recipes() -> None:
    users = make_personal_users(20, seed=0)
    for fact in FACTS:
        assert len({u.facts[fact.name] for u in users}) == 20
    assert [u.recipe for u in users[:8]] == [*RECIPES, *RECIPES]
    assert make_personal_users(20, seed=0) == users and make_personal_users(20, seed=1) != users
    with pytest.raises(ValueError, match="at most 20"):
        make_personal_users(21, seed=0)


def test_every_fact_has_held_out_paraphrases_unlike_its_training_questions() -> None:
    for fact in FACTS:
        assert fact.held_out and not set(fact.held_out) & set(fact.trained)


@pytest.mark.parametrize(
    ("answer", "value", "has"),
    [
        ("Your dog's name is Mango.", "Mango", True),
        ("mango!", "Mango", True),
        ("I love mangoes.", "Mango", False),
        ("", "Mango", False),
        ("You live in St. Porto-Novo", "Porto", True),  # a word boundary, not a whole-answer match
    ],
)
def test_answer_has(answer: str, value: str, has: bool) -> None:
    assert answer_has(answer, value) is has


def test_mixed_ranks_and_targets_train_in_one_batch_without_touching_what_a_user_lacks(examples_dir: Path) -> None:
    model, _ = load_causal_lm(examples_dir / "base", "cpu")
    q, v = "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"
    spec = LoraTrainingSpec(
        model, [q, v], 2, 0, torch.Generator().manual_seed(0), ranks=[2, 4], user_modules=[{q}, {q, v}]
    )
    ids = torch.randint(4, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    scaling = torch.tensor([2.0, 0.5])
    train_user_adapters(model, spec, ids, ids.clone(), torch.tensor([0, 0, 1, 1]), scaling=scaling, steps=3, lr=1e-2)
    # user 0: rank 2 on q only; the padding and the module it lacks stay exactly zero
    assert spec.a[q][0, 2:].abs().max() == 0 and spec.b[q][0, :, 2:].abs().max() == 0
    assert spec.a[v][0].abs().max() == 0 and spec.b[v][0].abs().max() == 0
    assert spec.b[q][0, :, :2].abs().max() > 0
    # user 1: rank 4 on both, all of it trained
    assert spec.b[q][1].abs().amin(dim=0).min() > 0 and spec.b[v][1].abs().max() > 0
