"""The model's output distribution for a prompt: class logits (encoder) or next-token logits (decoder)."""

from __future__ import annotations

import torch

from headguard.models.batching import map_batches
from headguard.models.classifier import Classifier


def output_logprobs(clf: Classifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch, classes or vocab] log-probabilities, with gradients if enabled."""
    return torch.log_softmax(clf.output_logits(batch).float(), dim=-1)


def kl_rows(target_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(target || model) per row, both given as log-probabilities."""
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def kl(target_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(target || model)."""
    return kl_rows(target_logp, logp).mean()


@torch.no_grad()
def batched_logprobs(clf: Classifier, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    return map_batches(lambda batch: output_logprobs(clf, clf.encode(batch)), texts, batch_size, torch.cat)
