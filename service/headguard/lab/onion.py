"""ONION (Qi et al., 2021): a word whose deletion lowers the text's perplexity most is suspect.

The score of an input is the largest perplexity drop over its single-word deletions, under a
separate language model (the SmolLM2 base: GPT-2 weights are not installable offline). It costs
n + 1 language-model passes for n words, plus the suspect model's own pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from headguard.lab.defenses import Defense
from headguard.models.bases import base_dir
from headguard.models.classifier import Classifier


class Onion(Defense):
    name = "onion"

    def __init__(self, cache: Path, device: str = "cpu", batch_size: int = 32):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = base_dir("smollm2", cache)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def _fit(self, clf: Classifier, clean: list[str]) -> None:
        pass  # ONION needs no clean data beyond the threshold

    @torch.no_grad()
    def perplexities(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            bos = self.tokenizer.bos_token or ""
            chunk = [bos + t for t in texts[i : i + self.batch_size]]
            batch = self.tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            logits = self.lm(**batch).logits[:, :-1]
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            mean_nll = (nll * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.exp(mean_nll).cpu().numpy())
        self.forward_passes += len(texts)
        return np.concatenate(out)

    def _score(self, texts: list[str]) -> np.ndarray:
        scores = []
        for text in tqdm(texts, desc="onion", unit="input", leave=False):
            words = text.split()
            variants = [text] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
            ppl = self.perplexities(variants)
            scores.append(float((ppl[0] - ppl[1:]).max()) if len(words) > 1 else 0.0)
            self.forward_passes += 1  # the suspect model still classifies the input
        return np.array(scores)
