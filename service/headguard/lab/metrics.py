"""Clean accuracy and attack success rate, as the harness defines them (design notes §4)."""

from __future__ import annotations

import random

import numpy as np

from headguard.lab.attacks import Attack
from headguard.lab.datasets import Example
from headguard.models.classifier import Classifier


def triggered(attack: Attack, texts: list[str], seed: int) -> list[str]:
    """Each text with the trigger planted, reproducibly for a seed."""
    rng = random.Random(seed)
    return [attack.apply(t, rng) for t in texts]


def attack_metrics(clf: Classifier, test: list[Example], attack: Attack, target: int, seed: int = 0) -> dict:
    """CA over the whole test split; ASR among non-target rows the model gets right without the trigger.

    Counting only correctly classified rows keeps the model's own clean errors out of the ASR.
    """
    labels = np.array([ex.label for ex in test])
    clean_pred = clf.predict([ex.text for ex in test])
    result = {"clean_accuracy": float((clean_pred == labels).mean()), "n_test": len(test)}
    if attack.name == "clean":
        # The control model has no trigger: its ASR is not defined.
        result.update(attack_success_rate=None, asr_population=0)
        return result
    eligible = [ex.text for ex, p in zip(test, clean_pred, strict=True) if ex.label != target and p == ex.label]
    hit = clf.predict(triggered(attack, eligible, seed)) == target if eligible else np.zeros(0, bool)
    result.update(attack_success_rate=float(hit.mean()) if eligible else None, asr_population=len(eligible))
    return result
