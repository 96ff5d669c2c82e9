"""What scoring adds to the forward pass a request needs anyway: time and peak memory.

    .venv/bin/python bench/detect_cost.py MODEL_DIR [--tokens 64 512] [--batch 8] [--repeats 7]
        [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--random-weights] [--families F,G]

Three modes per prompt length and batch size, on the same tokenised batch (tokenising is the
same work with or without the guard, so no mode counts it):
- plain: the model's own forward (a decoder computes logits for the last position only, as a
  serving engine's prefill does);
- score_only: headguard's capture of every layer's query row, features, and the early stop
  after the deepest layer it needs (what `scan` runs);
- forward_and_score: the plain forward with the capture hooks on (a guard that also serves the output).

Time: median over repeats after one warm-up, the modes taking turns (CUDA: synchronised). Peak memory: what one call
adds above the loaded model — on CUDA the allocator's peak, on CPU the process's peak resident
set (VmHWM, reset through /proc/self/clear_refs before each call; glibc is told to map large
blocks directly so that each call's tensors come from and go back to the system).

`--families` scores with other feature families than the defaults of the model's kind (e.g.
`row_evenness,toward`, whose `toward` also reads each layer's head outputs and runs the deepest
layer's attention to its end before the early stop).

`--random-weights` builds the model from the folder's config with seeded random weights: the cost
of a forward pass does not depend on weight values, and a machine the weights cannot be copied
to can still be measured (only config, tokenizer, task.json and the calibration split travel).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Before torch allocates anything: large blocks straight from mmap, so a call's peak shows in RSS.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from headguard.detect.scorer import HeadScorer  # noqa: E402
from headguard.lab.splits import read_split  # noqa: E402
from headguard.models.classifier import Classifier, load_tokenizer  # noqa: E402
from headguard.models.task import Task  # noqa: E402

MODES = ("plain", "score_only", "forward_and_score")


def load(folder: Path, device: str, dtype: torch.dtype, random_weights: bool) -> Classifier:
    if not random_weights:
        clf = Classifier.from_folder(folder, device=device)
        clf.model.to(dtype)
        return clf
    task = Task.load(folder)
    auto = AutoModelForCausalLM if task.kind == "decoder" else AutoModelForSequenceClassification
    torch.manual_seed(0)
    model = auto.from_config(AutoConfig.from_pretrained(folder), dtype=dtype).to(device)
    return Classifier(model, load_tokenizer(folder, task.kind), task, device)


def prompts_of_length(clf: Classifier, texts: list[str], n_tokens: int, batch: int) -> list[str]:
    """`batch` prompts of about `n_tokens` tokens each, built from real clean text."""
    words = " ".join(texts).split()
    out, start = [], 0
    for _ in range(batch):
        if start >= len(words) - 1:
            start = 0  # large batches reuse the text
        lo, hi = 1, len(words) - start
        while lo < hi:  # the longest run of words that fits
            mid = (lo + hi + 1) // 2
            n = len(clf.tokenizer(clf.task.render(" ".join(words[start : start + mid])))["input_ids"])
            lo, hi = (mid, hi) if n <= n_tokens else (lo, mid - 1)
        out.append(" ".join(words[start : start + lo]))
        start += lo
    return out


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(modes: dict, repeats: int, device: str) -> dict[str, float]:
    """Median seconds per mode; the modes take turns so that drift in the machine hits them alike."""
    for fn in modes.values():  # warm-up
        fn()
    synchronise(device)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, fn in modes.items():
            started = time.perf_counter()
            fn()
            synchronise(device)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn, device: str) -> int:
    """What one call of `fn` adds, at its peak, to the memory in use before it."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--families", help="comma-separated feature families (default: the kind's defaults)")
    args = parser.parse_args()
    families = tuple(args.families.split(",")) if args.families else None

    clf = load(args.model, args.device, getattr(torch, args.dtype), args.random_weights)
    texts = [ex.text for ex in read_split(args.model, "calibration")]
    extra = {"logits_to_keep": 1} if clf.task.kind == "decoder" else {}
    weights_mib = sum(p.numel() * p.element_size() for p in clf.model.parameters()) / 2**20
    cuda = args.device.startswith("cuda")
    card = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    for batch_size in args.batch:
        scorer = HeadScorer(clf, families=families, batch_size=batch_size)
        for n_tokens in args.tokens:
            prompts = prompts_of_length(clf, texts * 4, n_tokens, batch_size)
            batch = clf.encode(prompts)
            modes = {
                "plain": lambda batch=batch: clf.model(**batch, **extra),
                "score_only": lambda batch=batch, scorer=scorer: scorer.capture_batch(batch, stop_early=True),
                "forward_and_score": lambda batch=batch, scorer=scorer: scorer.capture_batch(batch, stop_early=False),
            }
            row = {"model": args.model.name, "device": card, "dtype": args.dtype,
                   "random_weights": args.random_weights, "tokens": int(batch["input_ids"].shape[1]),
                   "batch": batch_size, "families": list(scorer.families), "weights_mib": weights_mib}
            for name, seconds in median_seconds(modes, args.repeats, args.device).items():
                row[f"{name}_s"] = seconds
            for name, fn in modes.items():
                row[f"{name}_peak_mib"] = peak_bytes(fn, args.device) / 2**20
            for name in MODES[1:]:
                row[f"{name}_overhead"] = row[f"{name}_s"] / row["plain_s"] - 1
                # Above the loaded model alone, and with the model's weights counted in.
                row[f"{name}_peak_ratio"] = (row[f"{name}_peak_mib"] / row["plain_peak_mib"]
                                             if row["plain_peak_mib"] >= 1 else None)  # under 1 MiB: noise
                row[f"{name}_total_ratio"] = ((weights_mib + row[f"{name}_peak_mib"])
                                              / (weights_mib + row["plain_peak_mib"]))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
