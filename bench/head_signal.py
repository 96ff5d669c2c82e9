"""Which single heads separate triggered from clean inputs, per query position (analysis only).

    .venv/bin/python bench/head_signal.py MODEL_DIR [--n 80] [--positions 6]

For a decoder lab model: eager attention on N clean and N triggered non-target test inputs; per
layer, head and each of the last P prompt positions, the AUROC of two per-head numbers — content
entropy (sinks excluded) and the mass on the first-token sink. AUROC < 0.5 means the triggered
inputs have the *lower* value. It shows where a backdoor's signal sits when the detector's
all-heads score does not find it; it reads the trigger, so it is a harness tool, not a defense.
Writes bench/results/<model>.head-signal.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from headguard.detect.features import content_rows
from headguard.detect.scorer import HeadScorer
from headguard.lab.metrics import triggered
from headguard.lab.splits import read_split
from lab_decoder import open_lab_decoder


@torch.no_grad()
def head_numbers(scorer: HeadScorer, texts: list[str], positions: int) -> np.ndarray:
    """[input, layer, head, position, (content entropy, sink mass)]."""
    out = []
    for i in range(0, len(texts), 8):
        batch = scorer.clf.encode(texts[i : i + 8])
        mask = batch["attention_mask"].bool()
        _, content = scorer.positions(mask)  # the detector's keys: no sink, no padding
        attentions = scorer.clf.model(**batch, output_attentions=True, logits_to_keep=1).attentions
        rows = torch.stack(attentions, 1)[:, :, :, -positions:, :]  # [batch, layer, head, position, key]
        p = content_rows(rows, content)
        entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)
        sink = (rows * (mask & ~content)[:, None, None, None, :]).sum(-1)
        out.append(torch.stack([entropy, sink], -1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--n", type=int, default=80)
    parser.add_argument("--positions", type=int, default=6)
    args = parser.parse_args()
    clf, attack, target = open_lab_decoder(args.model, "head_signal")
    others = [ex.text for ex in read_split(args.model, "test") if ex.label != target]
    scorer = HeadScorer(clf)
    clean = head_numbers(scorer, others[: args.n], args.positions)
    poisoned = head_numbers(scorer, triggered(attack, others[args.n : 2 * args.n], seed=0), args.positions)
    y = np.r_[np.zeros(len(clean)), np.ones(len(poisoned))]
    rows = []
    for pos in range(args.positions):
        for f, name in enumerate(("content_entropy", "sink_mass")):
            aucs = [(roc_auc_score(y, np.r_[clean[:, la, h, pos, f], poisoned[:, la, h, pos, f]]), la, h)
                    for la in range(clean.shape[1]) for h in range(clean.shape[2])]
            aucs.sort(key=lambda a: -abs(a[0] - 0.5))
            rows.append({"position": pos - args.positions, "number": name,
                         "best": [{"head": f"L{layer}H{head}", "auroc": round(a, 3)} for a, layer, head in aucs[:5]]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "results" / f"{args.model.name}.head-signal.json"
    out.write_text(json.dumps({"model": args.model.name, "n": args.n, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
