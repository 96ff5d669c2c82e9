"""Which heads to repair: those that drive the anomaly on flagged prompts and that carry the backdoor.

1. Drive: per head, its mean contribution to the anomaly (`Detector.head_contributions`: its
   deviation toward collapse, squared) on flagged prompts minus that on clean prompts.
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
from headguard.repair.outputs import batched_logprobs, kl


def head_budget(n_layers: int, n_heads: int, share: float) -> int:
    return max(1, int(share * n_layers * n_heads))


def head_drive(detector: Detector, flagged: list[str], clean: list[str]) -> dict[tuple[int, int], float]:
    def mean_contribution(texts: list[str]) -> np.ndarray:
        return detector.head_contributions(*detector.scorer.features(texts)).mean(0)

    drive = mean_contribution(flagged) - mean_contribution(clean)
    return {head: float(value) for head, value in zip(detector.heads, drive, strict=True)}


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
    base = float(kl(target, batched_logprobs(clf, flagged)))
    out = {}
    for i, (layer, head) in enumerate(heads):
        with ablated(detector, layer, head):
            out[(layer, head)] = base - float(kl(target, batched_logprobs(clf, flagged)))
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
