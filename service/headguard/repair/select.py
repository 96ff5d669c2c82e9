"""Which heads to repair: those that drive the anomaly on flagged prompts and that carry the backdoor.

1. Drive: per head, its mean collapse contribution (the detector's one-sided z-score, squared) on
   flagged prompts minus that on clean prompts.
2. Importance: for the strongest-driving candidates, zero the head's output on the flagged prompts
   and measure how much closer the output moves to the neutralised prompts' output (drop in KL).
3. Select up to `budget` heads by importance (positive only), filling up by drive if too few.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from headguard.detect.detector import Detector
from headguard.models.classifier import Classifier
from headguard.repair.outputs import kl, output_logprobs


def head_budget(n_layers: int, n_heads: int, share: float) -> int:
    return max(1, int(share * n_layers * n_heads))


def head_drive(detector: Detector, flagged: list[str], clean: list[str]) -> dict[tuple[int, int], float]:
    def per_head(texts: list[str]) -> dict[tuple[int, int], float]:
        features, lengths = detector.scorer.features(texts)
        anomaly = detector.calibration.anomaly
        z = anomaly.standardise(features, lengths)
        contribution = np.clip(z * anomaly.direction, 0, None) ** 2
        totals: dict[tuple[int, int], float] = {}
        for column, heads in zip(contribution.mean(0), detector.feature_heads, strict=True):
            for head in heads:
                totals[head] = totals.get(head, 0.0) + float(column) / len(heads)
        return totals

    on_flagged, on_clean = per_head(flagged), per_head(clean)
    return {head: on_flagged[head] - on_clean.get(head, 0.0) for head in on_flagged}


@contextmanager
def ablated(detector: Detector, layer: int, head: int):
    """Zeroes one head's output (its slice of the output projection's input) while active."""
    adapter = detector.scorer.adapter
    d = adapter.head_dim()

    def hook(module, args):
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0
        return (x, *args[1:])

    handle = adapter.output_projection(layer).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def head_importance(clf: Classifier, detector: Detector, heads: list[tuple[int, int]], flagged: list[str],
                    target: torch.Tensor, progress=None) -> dict[tuple[int, int], float]:
    """Per head: KL(neutral || flagged output) minus the same with the head zeroed (higher = carries more)."""
    batch = clf.encode(flagged)
    base = float(kl(target, output_logprobs(clf, batch)))
    out = {}
    for i, (layer, head) in enumerate(heads):
        with ablated(detector, layer, head):
            out[(layer, head)] = base - float(kl(target, output_logprobs(clf, batch)))
        if progress:
            progress(i + 1, len(heads))
    return out


def select_heads(drive: dict, importance: dict, budget: int) -> list[tuple[int, int]]:
    helpful = sorted((h for h in importance if importance[h] > 0), key=importance.get, reverse=True)[:budget]
    for head in sorted(drive, key=drive.get, reverse=True):
        if len(helpful) >= budget:
            break
        if head not in helpful:
            helpful.append(head)
    return helpful
