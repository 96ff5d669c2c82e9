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
from headguard.models.batching import length_batches
from headguard.models.classifier import Classifier
from headguard.repair.outputs import kl_rows, output_logprobs


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


@contextmanager
def recorded(blocks: list[torch.nn.Module], which: set[int]):
    """Records the outputs of `blocks[i]` for i in `which` during the next forward pass."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [blocks[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out)) for i in which]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replayed(blocks: list[torch.nn.Module], layer: int, output: torch.Tensor | None):
    """Blocks before `layer` compute nothing: each returns `output`, the recorded output of block
    `layer - 1`, which only block `layer` reads."""
    own = [block.__dict__.get("forward") for block in blocks[:layer]]  # a wrapper someone else set
    for block in blocks[:layer]:
        block.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        for block, forward in zip(blocks[:layer], own, strict=True):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


@torch.no_grad()
def head_importance(clf: Classifier, detector: Detector, heads: list[tuple[int, int]], flagged: list[str],
                    target: torch.Tensor, progress=None, batch_size: int = 16) -> dict[tuple[int, int], float]:
    """Per head: KL(neutral || flagged output) minus the same with the head zeroed (higher = carries more).

    Zeroing a head of layer L leaves the blocks before L as they were, so each batch runs through
    the whole model once with the block outputs recorded, and each ablated pass computes only the
    blocks from L on (about half the work of rerunning the model, for heads spread over the depth).
    """
    blocks = detector.scorer.adapter.blocks()
    drop = dict.fromkeys(heads, 0.0)
    done, total = 0, len(heads) * len(flagged)
    for batch in length_batches(flagged, batch_size):
        encoded, batch_target = clf.encode([flagged[i] for i in batch]), target[batch]
        with recorded(blocks, {layer - 1 for layer, _ in heads if layer > 0}) as outputs:
            base = kl_rows(batch_target, output_logprobs(clf, encoded))
        for layer, head in heads:
            with ablated(detector, layer, head), replayed(blocks, layer, outputs.get(layer - 1)):
                drop[(layer, head)] += float((base - kl_rows(batch_target, output_logprobs(clf, encoded))).sum())
            done += len(batch)
            if progress:
                progress(done, total)
    return {h: value / len(flagged) for h, value in drop.items()}


def select_heads(drive: dict, importance: dict, budget: int) -> list[tuple[int, int]]:
    helpful = sorted((h for h in importance if importance[h] > 0), key=importance.get, reverse=True)[:budget]
    for head in sorted(drive, key=drive.get, reverse=True):
        if len(helpful) >= budget:
            break
        if head not in helpful:
            helpful.append(head)
    return helpful
