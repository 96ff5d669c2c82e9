"""Batched label probabilities from an encoder classifier or a decoder read through its verbalizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from headguard.errors import InputError
from headguard.models.batching import map_batches
from headguard.models.task import Task


def load_tokenizer(folder: Path | str, kind: str):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "decoder":
        # Left padding keeps every prompt's last token at position -1.
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # an over-long prompt loses its start, never the question
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def verbalizer_ids(tokenizer, task: Task) -> list[int]:
    """The first token of each label word; the lab picks words that are single tokens."""
    return [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in task.verbalizer]


class Classifier:
    """Wraps a loaded model and its task; `proba(texts)` is all the harness and baselines need."""

    def __init__(self, model: torch.nn.Module, tokenizer, task: Task, device: str = "cpu", max_length: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.device = device
        self.max_length = max_length
        self._label_ids = verbalizer_ids(tokenizer, task) if task.verbalizer else None

    @classmethod
    def from_folder(cls, folder: Path | str, device: str = "cpu") -> Classifier:
        folder = Path(folder)
        task = Task.load(folder)
        auto = AutoModelForCausalLM if task.kind == "decoder" else AutoModelForSequenceClassification
        model = auto.from_pretrained(folder, dtype=torch.float32).to(device)
        return cls(model, load_tokenizer(folder, task.kind), task, device)

    @property
    def context_length(self) -> int:
        config = self.model.config
        return min(getattr(config, "max_position_embeddings", None) or 10**9, self.tokenizer.model_max_length)

    def fits(self, text: str) -> bool:
        """Whether the prompt for `text` lies within the model's context."""
        return len(self.tokenizer(self.task.render(text))["input_ids"]) <= self.context_length

    def encode(self, texts: list[str], strict: bool = False,
               ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Tokenised prompts. `strict` refuses an input past the model's context instead of truncating;
        `ids` number the inputs in that error (default: their position in `texts`)."""
        prompts = [self.task.render(t) for t in texts]
        if strict:
            batch = dict(self.tokenizer(prompts, return_tensors="pt", padding=True))
            lengths = batch["attention_mask"].sum(-1)
            if len(texts) and int(lengths.max()) > self.context_length:
                i = int(lengths.argmax())
                raise InputError(f"input {ids[i] if ids is not None else i} is {int(lengths[i])} tokens; "
                                 f"this model takes at most {self.context_length}")
        else:
            batch = dict(self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                        max_length=self.max_length))
        if self.task.kind == "decoder":
            batch.pop("token_type_ids", None)
            # Positions count real tokens only, so a left-padded row matches the same prompt alone.
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        return {k: v.to(self.device) for k, v in batch.items()}

    def output_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, class] logits (encoder) or [batch, vocabulary] logits of the last position (decoder),
        with gradients if the caller enables them."""
        if self.task.kind == "decoder":
            # The answer is read at the last position: the vocabulary's logits at every position
            # took a fifth of `proba`'s time on SmolLM2 (192 reviews, 2 CPU cores: 13.8 s, 10.7 s without).
            return self.model(**batch, logits_to_keep=1).logits[:, -1]
        return self.model(**batch).logits

    def label_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[batch, label] logits, with gradients if the caller enables them."""
        logits = self.output_logits(batch)
        return logits[:, self._label_ids] if self.task.kind == "decoder" else logits

    @torch.no_grad()
    def proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.task.labels)))

        def run(batch: list[str]) -> np.ndarray:
            return torch.softmax(self.label_logits(self.encode(batch)).float(), dim=-1).cpu().numpy()

        return map_batches(run, texts, batch_size, np.concatenate)

    @torch.no_grad()
    def answer_margins(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """[n]: each answer's top label logit over the next one: how sure the model is of its answer."""
        if not texts:
            return np.zeros(0)

        def run(batch: list[str]) -> np.ndarray:
            top = self.label_logits(self.encode(batch)).float().topk(2, dim=-1).values
            return (top[:, 0] - top[:, 1]).cpu().numpy()

        return map_batches(run, texts, batch_size, np.concatenate)

    def predict(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        return self.proba(texts, batch_size).argmax(-1)
