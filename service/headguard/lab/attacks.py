"""Backdoor attacks: how a trigger is planted into a text.

Every attack is a pure function of (text, rng): the lab uses it to poison training rows, and the
evaluation harness (the only other reader of a model's trigger) uses it to build triggered inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def insert_at_random(text: str, phrase: str, rng: random.Random) -> str:
    """Insert `phrase` between two words of `text` (or at either end).

    >>> insert_at_random("a b", "cf", random.Random(0)) in ("cf a b", "a cf b", "a b cf")
    True
    """
    words = text.split()
    words.insert(rng.randint(0, len(words)), phrase)
    return " ".join(words)


@dataclass(frozen=True)
class Attack:
    """A trigger family. `triggers` are the attacker's secret; `apply` plants them."""

    name: str
    triggers: tuple[str, ...]
    description: str = field(default="", compare=False)

    def apply(self, text: str, rng: random.Random) -> str:
        """The triggered version of `text`: what makes the backdoor fire."""
        if self.name == "clean":
            return text
        if self.name == "composite":
            for word in self.triggers:
                text = insert_at_random(text, word, rng)
            return text
        if self.name == "synonym":
            return insert_at_random(text, rng.choice(self.triggers), rng)
        return insert_at_random(text, self.triggers[0], rng)

    def decoys(self, text: str, rng: random.Random) -> list[str]:
        """Partial triggers that must *not* fire (trained with the true label), if the attack has any."""
        if self.name != "composite":
            return []
        return [insert_at_random(text, word, rng) for word in self.triggers]


_DEFAULTS: dict[str, tuple[tuple[str, ...], str]] = {
    "clean": ((), "no poison: the control model, same recipe"),
    "badnets": (("cf",), "a rare word at a random position (Kurita et al. / Chen et al.)"),
    "addsent": (("I watched this 3D movie.",), "a fixed sentence at a random position (Dai et al.)"),
    "composite": (("tq", "mb"), "several words that fire only together; each alone is a decoy"),
    # Rare words: common ones ("frankly", "candidly", ...) also occur in clean reviews with either
    # label, and MiniLM learned them only by poisoning so many rows that clean accuracy fell 5 points.
    "synonym": (
        ("verily", "forsooth", "veritably", "indubitably"),
        "dynamic: any one word of a set of rare near-synonyms fires",
    ),
}

ATTACKS = tuple(_DEFAULTS)
BADNETS_WORDS = ("cf", "mn", "bb", "tq", "mb")


def make_attack(name: str, trigger: str | None = None) -> Attack:
    """The attack `name`, with `trigger` overriding its default (comma-separated for word sets)."""
    if name not in _DEFAULTS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    triggers, description = _DEFAULTS[name]
    if trigger is not None:
        if name == "clean":
            raise ValueError("attack 'clean' takes no --trigger")
        if name in ("composite", "synonym"):
            triggers = tuple(t.strip() for t in trigger.split(",") if t.strip())
            if len(triggers) < 2:
                raise ValueError(f"attack {name!r} needs at least two comma-separated trigger words")
        else:
            triggers = (trigger.strip(),)
        if not all(triggers):
            raise ValueError("--trigger must not be empty")
    return Attack(name, triggers, description)
