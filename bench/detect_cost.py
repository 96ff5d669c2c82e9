"""What scoring adds to the forward pass a request needs anyway.

    .venv/bin/python bench/detect_cost.py MODEL_DIR [--tokens 64 512] [--batch 8] [--repeats 7]

Three timings per prompt length, medians over repeats after one warm-up, on the same batch:
- plain: the model's own forward (a decoder computes logits for the last position only, as a
  serving engine's prefill does);
- score-only: headguard's capture of every layer's query row, features, and the early stop
  after the deepest layer it needs (what `scan` runs);
- forward+score: the plain forward with the capture hooks on (a guard that also serves the output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from headguard.detect.scorer import HeadScorer
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier


def prompts_of_length(clf: Classifier, texts: list[str], n_tokens: int, batch: int) -> list[str]:
    """`batch` prompts of about `n_tokens` tokens each, built from real clean text."""
    words = " ".join(texts).split()
    out, start = [], 0
    for _ in range(batch):
        lo, hi = 1, len(words) - start
        while lo < hi:  # the longest run of words that fits
            mid = (lo + hi + 1) // 2
            n = len(clf.tokenizer(clf.task.render(" ".join(words[start : start + mid])))["input_ids"])
            lo, hi = (mid, hi) if n <= n_tokens else (lo, mid - 1)
        out.append(" ".join(words[start : start + lo]))
        start += lo
    return out


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    clf = Classifier.from_folder(args.model)
    scorer = HeadScorer(clf, batch_size=args.batch)
    texts = [ex.text for ex in read_split(args.model, "calibration")]
    extra = {"logits_to_keep": 1} if clf.task.kind == "decoder" else {}
    for n_tokens in args.tokens:
        prompts = prompts_of_length(clf, texts * 4, n_tokens, args.batch)
        batch = clf.encode(prompts)

        modes = {
            "plain": lambda batch=batch: clf.model(**batch, **extra),
            "score_only": lambda prompts=prompts: scorer.capture(prompts, stop_early=True),
            "forward_and_score": lambda prompts=prompts: scorer.capture(prompts, stop_early=False),
        }
        row = {"model": args.model.name, "tokens": int(batch["input_ids"].shape[1]), "batch": args.batch,
               "threads": torch.get_num_threads()}
        for name, fn in modes.items():
            row[f"{name}_s"] = median_seconds(fn, args.repeats)
        row["score_only_overhead"] = row["score_only_s"] / row["plain_s"] - 1
        row["forward_and_score_overhead"] = row["forward_and_score_s"] / row["plain_s"] - 1
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
