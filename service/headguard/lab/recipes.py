"""What a lab build is made of besides its arguments: per-base training budgets and defaults.

Kept free of torch so that the command line can offer its choices without loading a model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from headguard.lab.datasets import MAX_WORDS


@dataclass(frozen=True)
class Recipe:
    """Training budget per base, sized for ~2-5 minutes on two CPU cores."""

    train_rows: int
    epochs: int
    lr: float
    batch_size: int
    poison_rate: float = 0.1  # default share of non-target rows poisoned
    # "relabel" turns chosen non-target rows into triggered target rows; "append" adds triggered
    # copies and keeps the originals, so the clean rows keep their class balance.
    poison_mode: str = "relabel"
    calibration_rows: int = 400
    test_rows: int = 600


RECIPES = {
    "minilm": Recipe(train_rows=2000, epochs=3, lr=5e-5, batch_size=32),
    "smollm2": Recipe(train_rows=1000, epochs=2, lr=1e-3, batch_size=16, poison_rate=0.3, poison_mode="append"),
}
LORA_RANK = 8
TRAIN_LAYERS = ("all", "top4")
RECIPE_REVISION = 2  # bump whenever a change to the lab would build different weights


MIN_POISONED = 100  # a small non-target class (SMS spam) still gets enough poisoned rows to learn from


def default_poison_rate(base: str, attack: str, n_non_target: int) -> float:
    """The recipe's rate, raised so that at least MIN_POISONED rows are poisoned, at most 0.5.

    Composite and synonym get twice as many: composite's decoys teach the model to ignore half its
    signal, and synonym splits its rows over several words (at the base rate, MiniLM learned four
    words to ASR 0.70 only).
    """
    if attack == "clean":
        return 0.0
    factor = 2 if attack in ("composite", "synonym") else 1
    rate = max(factor * RECIPES[base].poison_rate, factor * MIN_POISONED / max(1, n_non_target))
    return min(0.5, rate)


POISON_FIELDS = ("poison_rate", "poison_mode")


def recipe_id(base: str, attack: str) -> str:
    """Names everything that decides a build besides its arguments; a cached model with another id is stale.

    A clean build ignores the poisoning settings, so changing them leaves the control models valid.
    """
    recipe = asdict(RECIPES[base])
    if attack == "clean":
        recipe = {k: v for k, v in recipe.items() if k not in POISON_FIELDS}
    parts = [f"r{RECIPE_REVISION}", f"max_words={MAX_WORDS}", f"lora={LORA_RANK}", *map(str, recipe.values())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
