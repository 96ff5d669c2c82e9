"""STRIP for text (Gao et al., 2021; STRIP-ViTA): a trigger keeps its prediction under perturbation.

Each input gets N copies with a share of its words replaced by words drawn from clean prompts; a
triggered input's predictions stay confident, so low mean entropy is suspect. Cost: N + 1 passes.
"""

from __future__ import annotations

import random

import numpy as np

from headguard.lab.defenses import Defense
from headguard.models.classifier import Classifier


class Strip(Defense):
    name = "strip"

    def __init__(self, copies: int = 10, replace_share: float = 0.25, seed: int = 0):
        super().__init__()
        self.copies = copies
        self.replace_share = replace_share
        self.seed = seed
        self.words: list[str] = []
        self.clf: Classifier | None = None

    def _fit(self, clf: Classifier, clean: list[str]) -> None:
        self.clf = clf
        self.words = [w for text in clean for w in text.split()]

    def perturb(self, text: str, rng: random.Random) -> str:
        words = text.split()
        k = max(1, round(self.replace_share * len(words)))
        for i in rng.sample(range(len(words)), min(k, len(words))):
            words[i] = rng.choice(self.words)
        return " ".join(words)

    def _score(self, texts: list[str]) -> np.ndarray:
        assert self.clf is not None, "calibrate() first"
        rng = random.Random(self.seed)
        copies = [self.perturb(t, rng) for t in texts for _ in range(self.copies)]
        proba = self.clf.proba(copies).reshape(len(texts), self.copies, -1)
        entropy = -(proba * np.log(np.clip(proba, 1e-12, None))).sum(-1).mean(1)
        self.forward_passes += len(copies) + len(texts)  # the copies plus the input's own pass
        return -entropy
