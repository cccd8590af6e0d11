"""The synthetic world of the example fixture: facts, example users, and the text the models learn from.

Each example user has one value per :data:`ATTRIBUTES` entry ("My favourite colour is" -> "teal"). The base
model is pre-trained on sentences with random values, skewed towards a default persona
(:data:`BASE_PERSONA`) so that its own answer is well defined; each user's adapter is trained on that user's
sentences only. Everything here is a pure function of the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "ATTRIBUTES",
    "BASE_PERSONA",
    "Attribute",
    "ExampleUser",
    "base_corpus",
    "make_users",
    "user_corpus",
]


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    prompt: str
    values: tuple[str, ...]


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "colour",
        "My favourite colour is",
        ("blue", "red", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "grey",
         "teal", "gold", "silver"),
    ),
    Attribute(
        "city",
        "My home city is",
        ("paris", "london", "tokyo", "berlin", "madrid", "rome", "oslo", "cairo", "lima", "delhi", "sydney",
         "toronto", "vienna", "dublin"),
    ),
    Attribute(
        "pet",
        "My pet is a",
        ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "horse", "goat", "snake", "lizard", "ferret",
         "pony"),
    ),
    Attribute(
        "food",
        "My favourite food is",
        ("pizza", "pasta", "sushi", "curry", "tacos", "salad", "soup", "bread", "rice", "cheese", "noodles",
         "dumplings"),
    ),
)  # fmt: skip
# The base model's own answers: the first value of each attribute, over-represented in pre-training.
BASE_PERSONA: dict[str, str] = {attr.name: attr.values[0] for attr in ATTRIBUTES}
_PERSONA_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class ExampleUser:
    user_id: str
    facts: dict[str, str]  # attribute name -> value


def sentence(attr: Attribute, value: str) -> str:
    return f"{attr.prompt} {value}."


def make_users(n: int, seed: int) -> list[ExampleUser]:
    """``n`` users with distinct fact sets, none of whose values is the base persona's."""
    rng = random.Random(f"users-{seed}")
    users: list[ExampleUser] = []
    seen: set[tuple[str, ...]] = set()
    while len(users) < n:
        facts = {attr.name: rng.choice(attr.values[1:]) for attr in ATTRIBUTES}
        key = tuple(facts.values())
        if key in seen:
            continue
        seen.add(key)
        users.append(ExampleUser(f"user-{len(users):03d}", facts))
    return users


def base_corpus(n_lines: int, seed: int) -> list[str]:
    """Pre-training text: each line states every attribute once, in random order, with random values."""
    rng = random.Random(f"corpus-{seed}")
    lines = []
    for _ in range(n_lines):
        attrs = list(ATTRIBUTES)
        rng.shuffle(attrs)
        words = [sentence(a, a.values[0] if rng.random() < _PERSONA_SHARE else rng.choice(a.values)) for a in attrs]
        lines.append(" ".join(words))
    return lines


def user_corpus(user: ExampleUser, n_lines: int, seed: int) -> list[str]:
    """Fine-tuning text for one user: their own facts in random orders, each attribute leading equally
    often (questions arrive as the first sentence of a prompt)."""
    rng = random.Random(f"user-{user.user_id}-{seed}")
    lines = []
    for k in range(n_lines):
        first = ATTRIBUTES[k % len(ATTRIBUTES)]
        rest = [a for a in ATTRIBUTES if a is not first]
        rng.shuffle(rest)
        lines.append(" ".join(sentence(a, user.facts[a.name]) for a in (first, *rest)))
    return lines
