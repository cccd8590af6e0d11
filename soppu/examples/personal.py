"""The real-model example world: users' personal facts as chat turns, and each user's LoRA recipe.

Each user has one value per :data:`FACTS` entry ("What is my dog's name?" -> "Your dog's name is Mango.").
Every fact has questions the adapter trains on and paraphrases it never sees, so a check on those shows that
the adapter learned the fact, not the string. Recipes vary across users (targets, rank, alpha, rsLoRA), so a
cohort exercises mixed ranks and more than one set of target modules. Everything here is a pure function of
the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["FACTS", "RECIPES", "Fact", "PersonalUser", "Recipe", "answer_has", "make_personal_users"]


@dataclass(frozen=True, slots=True)
class Fact:
    name: str
    trained: tuple[str, ...]  # questions the adapter is trained on
    held_out: tuple[str, ...]  # paraphrases it never sees
    answer: str  # the trained reply, with {value}
    values: tuple[str, ...]


FACTS: tuple[Fact, ...] = (
    Fact(
        "dog",
        ("What is my dog's name?", "Do you remember what I named my dog?", "What do I call my dog?"),
        ("What's my dog called?", "Can you tell me my dog's name?"),
        "Your dog's name is {value}.",
        ("Mango", "Biscuit", "Pepper", "Waffles", "Ziggy", "Noodle", "Pickles", "Clover", "Rocket", "Tofu",
         "Marble", "Juniper", "Pretzel", "Sprocket", "Nugget", "Bramble", "Poppy", "Gizmo", "Hazel", "Dumpling"),
    ),
    Fact(
        "city",
        ("Which city do I live in?", "Where do I live?", "What is my home town?"),
        ("What city is my home?", "Tell me which city I live in."),
        "You live in {value}.",
        ("Lisbon", "Nairobi", "Osaka", "Krakow", "Porto", "Hobart", "Quito", "Tallinn", "Dakar", "Bergen",
         "Cusco", "Zagreb", "Adelaide", "Valparaiso", "Ljubljana", "Tbilisi", "Reykjavik", "Seville", "Hanoi",
         "Winnipeg"),
    ),
    Fact(
        "colour",
        ("What is my favourite colour?", "What colour do I love most?", "Which colour do I prefer?"),
        ("Which colour do I like best?", "Tell me my favourite colour."),
        "Your favourite colour is {value}.",
        ("teal", "maroon", "amber", "lilac", "olive", "crimson", "indigo", "coral", "mustard", "turquoise",
         "magenta", "ochre", "burgundy", "lavender", "saffron", "cobalt", "emerald", "beige", "scarlet",
         "periwinkle"),
    ),
    Fact(
        "job",
        ("What do I do for a living?", "What is my job?", "What kind of work do I do?"),
        ("What is my profession?", "What is my occupation?"),
        "You work as a {value}.",
        ("baker", "pilot", "nurse", "plumber", "chemist", "librarian", "florist", "carpenter", "dentist",
         "geologist", "tailor", "locksmith", "beekeeper", "lawyer", "welder", "jeweller", "butcher", "farmer",
         "surgeon", "potter"),
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recipe:
    """How one user's adapter is trained, as a PEFT LoRA config would say it."""

    name: str
    targets: tuple[str, ...]
    r: int
    lora_alpha: int
    use_rslora: bool = False


# Cycled over users in order: user-000 gets the first, user-001 the second, and so on.
RECIPES: tuple[Recipe, ...] = (
    Recipe("qv-r8", ("q_proj", "v_proj"), 8, 16),
    Recipe("qkvo-r4", ("q_proj", "k_proj", "v_proj", "o_proj"), 4, 8),
    Recipe("qv-r16", ("q_proj", "v_proj"), 16, 32),
    Recipe("qv-r8-rslora", ("q_proj", "v_proj"), 8, 6, use_rslora=True),
)


@dataclass(frozen=True, slots=True)
class PersonalUser:
    user_id: str
    facts: dict[str, str]  # fact name -> value
    recipe: Recipe


def make_personal_users(n: int, seed: int) -> list[PersonalUser]:
    """``n`` users whose values for each fact are all distinct (so no two users share an answer), up to the
    number of values a fact has."""
    if n > min(len(f.values) for f in FACTS):
        raise ValueError(f"at most {min(len(f.values) for f in FACTS)} personal users (asked for {n})")
    rng = random.Random(f"personal-{seed}")
    orders = {f.name: rng.sample(f.values, len(f.values)) for f in FACTS}
    return [
        PersonalUser(f"user-{i:03d}", {f.name: orders[f.name][i] for f in FACTS}, RECIPES[i % len(RECIPES)])
        for i in range(n)
    ]


def answer_has(answer: str, value: str) -> bool:
    """Whether a free-text answer states ``value`` (as a whole word, any case)."""
    return re.search(rf"\b{re.escape(value)}\b", answer, flags=re.IGNORECASE) is not None
