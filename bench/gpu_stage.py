"""Stage lab models for bench/gpu.sh: an fp16 copy in shards, and its repair inputs made on this CPU.

    .venv/bin/python bench/gpu_stage.py MODEL_DIR [MODEL_DIR ...] --out STAGE [--shard-mb 56]

Writes STAGE/models/<name>/ (the lab folder with its weights stored in fp16, in shards of at most
--shard-mb, so that a model larger than what one transfer takes can travel in pieces) and
STAGE/work/<name>/ (the calibration and the flagged traffic prompts of bench/repair.py, made from
that fp16 copy, so the weights hash the calibration is tied to is the copy's). The classifier
loads the shards in fp32, as it loads any lab model. Then, on the CUDA machine:
`SEEDS=0,1,2 COST_MODELS=none bench/gpu.sh STAGE/models OUT`.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

import repair
from headguard.models.classifier import Classifier


def stage(model: Path, out: Path, shard_mb: int) -> Path:
    copy = out / "models" / model.name
    if copy.exists():
        shutil.rmtree(copy)
    # Everything but the weights (lab manifest, splits, task, tokenizer) as it is.
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    clf = Classifier.from_folder(model)
    clf.model.to(torch.float16).save_pretrained(copy, max_shard_size=f"{shard_mb}MB")
    repair.WORK = out / "work"
    repair.prepare(copy)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shard-mb", type=int, default=56)
    args = parser.parse_args()
    for model in args.models:
        copy = stage(model, args.out, args.shard_mb)
        sizes = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(copy.glob("*.safetensors"))}
        print(copy, sizes)


if __name__ == "__main__":
    main()
