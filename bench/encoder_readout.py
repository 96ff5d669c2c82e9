"""Does reading an encoder beyond its [CLS] row find what the default score misses? (analysis only)

    .venv/bin/python bench/encoder_readout.py MODEL_DIR [--n 100] [--calibration 200]

For an encoder lab model, per input (one eager forward pass, full attention maps), per head, over
content keys and content queries ([CLS], [SEP] and padding excluded):
- `cls entropy`: the [CLS] row's whole-row entropy (the encoder default's feature);
- `received`: the largest share of attention one content token receives, averaged over every
  content query (a token that the whole sentence piles onto);
- `scan max`: the largest content weight of any content query (one query collapsing onto one key);
- `scan entropy`: the lowest length-normalised content entropy of any content query.
Each variant is fitted on clean calibration prompts only, thresholded at the 99th percentile of its
out-of-fold calibration scores and scored on held-out clean, triggered and control inputs; a last
row per feature says how far the best single head separates, chosen with the trigger (a ceiling,
not a defense). It reads the trigger to build the triggered group, so it is a harness tool.
Writes bench/results/<model>.readout.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from decoder_readout import _log_odds, collapse, mean_square, oof_threshold
from detect_ablation import held_out_inputs, metrics
from headguard.lab.build import read_manifest
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier


@torch.no_grad()
def head_numbers(clf: Classifier, text: str) -> dict[str, np.ndarray]:
    """Per head numbers of one input, each [layer, head]."""
    batch = clf.encode([text], strict=True)
    out = clf.model(**batch, output_attentions=True)
    a = torch.stack(out.attentions, 1)[0].float()  # [layer, head, query, key]
    whole = a[:, :, 0]  # the [CLS] row, sinks included
    cls_entropy = -(whole * torch.log(whole.clamp(min=1e-12))).sum(-1)
    c = a[:, :, 1:-1, 1:-1]  # content queries x content keys
    p = c / c.sum(-1, keepdim=True).clamp(min=1e-12)
    n = max(c.shape[-1], 2)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1) / np.log(n)  # [layer, head, query]
    return {
        "cls entropy": np.log(cls_entropy.numpy() + 1e-3),
        "received": _log_odds(p.mean(-2).max(-1).values.numpy()),
        "scan max": _log_odds(p.max(-1).values.max(-1).values.numpy()),
        "scan entropy": np.log(entropy.min(-1).values.numpy() + 1e-3),
        "length": np.array(c.shape[-1], dtype=np.float64),
    }


# feature -> +1 where a larger value is a collapse, -1 where a smaller one is
FEATURES = {"cls entropy": -1.0, "received": 1.0, "scan max": 1.0, "scan entropy": -1.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--n", type=int, default=100, help="held-out inputs per group")
    parser.add_argument("--calibration", type=int, default=200)
    args = parser.parse_args()
    lab = read_manifest(args.model)
    clf = Classifier.from_folder(args.model)
    if clf.task.kind != "encoder":
        raise SystemExit(f"encoder_readout reads an encoder's attention maps; {args.model.name} is not one")
    clf.model.config._attn_implementation = "eager"  # attention weights out
    groups = {"calibration": [ex.text for ex in read_split(args.model, "calibration")][: args.calibration],
              **held_out_inputs(args.model, lab, args.n)}
    numbers = {}
    for name, texts in groups.items():
        per_input = [head_numbers(clf, t) for t in tqdm(texts, desc=name, leave=False)]
        numbers[name] = {k: np.stack([d[k] for d in per_input]) for k in per_input[0]}

    rows = []
    lengths = {g: numbers[g]["length"] for g in groups}
    for feature, sign in FEATURES.items():
        x = {g: numbers[g][feature].reshape(len(groups[g]), -1) for g in groups}
        for top_k in (1, 3):
            fit = collapse(top_k, sign=sign)
            threshold = oof_threshold(fit, x["calibration"], lengths["calibration"])
            score = fit(x["calibration"], lengths["calibration"])
            s = {g: score(x[g], lengths[g]) for g in groups if g != "calibration"}
            rows.append({"variant": f"{feature}, top {top_k}", **metrics(s, threshold)})
            print(json.dumps(rows[-1]), flush=True)
        threshold = oof_threshold(mean_square, x["calibration"], lengths["calibration"])
        score = mean_square(x["calibration"], lengths["calibration"])
        s = {g: score(x[g], lengths[g]) for g in groups if g != "calibration"}
        rows.append({"variant": f"{feature}, mean z²", **metrics(s, threshold)})
        print(json.dumps(rows[-1]), flush=True)
        if "triggered" in x:  # ceiling: the single head that separates best, chosen with the trigger
            y = np.r_[np.zeros(len(x["clean"])), np.ones(len(x["triggered"]))]
            auc = [roc_auc_score(y, np.r_[x["clean"][:, j], x["triggered"][:, j]]) for j in range(x["clean"].shape[1])]
            j = int(np.argmax(np.abs(np.array(auc) - 0.5)))
            n_heads = numbers["clean"][feature].shape[-1]
            rows.append({"variant": f"{feature}, best head L{j // n_heads}H{j % n_heads} (oracle)", "auroc": auc[j]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).parent / "results" / f"{args.model.name}.readout.json"
    out.write_text(json.dumps({"model": args.model.name, "attack": lab["attack"], "n": args.n,
                               "calibration": args.calibration, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
