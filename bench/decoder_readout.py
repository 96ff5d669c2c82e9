"""Does reading a decoder elsewhere find what the default score misses? (analysis only)

    .venv/bin/python bench/decoder_readout.py MODEL_DIR [--n 100] [--calibration 200]

For a decoder lab model, per input (one eager forward pass, full attention maps): per head, at
each of the last 4 prompt positions, content entropy (first-token sink excluded), sink mass and
content max weight; and over every position from the 8th on, the lowest length-normalised content
entropy and the highest content weight (a collapse anywhere in the prompt, e.g. on the trigger's
own tokens; a prompt of 8 positions or fewer: its last). Each variant below is fitted on clean
calibration prompts only, thresholded at the 99th percentile of its out-of-fold calibration
scores, and scored on held-out clean, triggered and control inputs. It reads the trigger to build
the triggered group, so it is a harness tool.
Writes bench/results/<model>.readout.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import KFold
from tqdm import tqdm

from detect_ablation import metrics
from headguard.detect.calibration import AnomalyModel
from headguard.detect.features import layer_features
from headguard.lab.controls import make_controls
from headguard.lab.metrics import triggered
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier
from lab_decoder import open_lab_decoder

LAST = 4  # prompt positions read at the end
SCAN_FROM = 8  # positions with fewer content keys collapse trivially
SPREAD = 4  # query positions at a quarter, half, three quarters and the end of the prompt


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p) - np.log1p(-p)


@torch.no_grad()
def head_numbers(clf: Classifier, text: str) -> dict[str, np.ndarray]:
    """Per head numbers of one input, each [layer, head] or [layer, head, position]."""
    batch = clf.encode([text], strict=True)
    attentions = clf.model(**batch, output_attentions=True, logits_to_keep=1).attentions
    a = torch.stack(attentions, 1)[0].float()  # [layer, head, query, key]
    p = a[..., 1:] / a[..., 1:].sum(-1, keepdim=True).clamp(min=1e-12)  # content keys: no first-token sink
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)  # [layer, head, query]
    keys = torch.arange(a.shape[-1]).clamp(min=2).float()  # content keys visible from each query
    scan_from = min(SCAN_FROM, a.shape[-2] - 1)  # a prompt shorter than that: its last position
    return {
        "entropy": np.log(entropy[..., -LAST:].numpy() + 1e-3),
        "sink": _log_odds(a[..., -LAST:, 0].numpy()),
        "max": _log_odds(p[..., -LAST:, :].max(-1).values.numpy()),
        "scan_entropy": np.log((entropy / torch.log(keys))[..., scan_from:].min(-1).values.numpy() + 1e-3),
        "scan_max": _log_odds(p[..., scan_from:, :].max(-1).values.max(-1).values.numpy()),
        "evenness": _evenness(a, _spread_positions(a.shape[-2])),
        "length": np.array(a.shape[-1], dtype=np.float64),
    }


def _spread_positions(n: int) -> list[int]:
    """Query positions through the prompt, the last one last: a trigger far from the end is
    nearer one of them."""
    return [max(n * i // SPREAD - 1, 0) for i in range(1, SPREAD + 1)]


def _evenness(a: torch.Tensor, positions: list[int]) -> np.ndarray:
    """Row evenness (the decoder default's family) at each query position, over the keys that
    position sees. [layer, head, position]"""
    rows = [a[None, ..., q, : q + 1] for q in positions]  # [1, layer, head, key]
    return torch.stack([layer_features(r, torch.ones(1, r.shape[-1]), ("row_evenness",))[0] for r in rows],
                       -1).numpy()


def collapse(top_k: int, two_sided: bool = False, sign: float = -1.0) -> Callable:
    """Mean of the top_k largest clean-standardised deviations in the collapse direction (`sign` is
    +1 where a larger value is a collapse), or in either direction when two_sided."""
    def fit(x, lengths):
        direction = sign * np.ones(x.shape[1])
        model = AnomalyModel.fit(x, lengths, direction, top_k=top_k)

        def score(y, n):
            z = model.standardise(y, n) * direction
            z = np.abs(z) if two_sided else z
            return -np.partition(-z, top_k - 1, axis=1)[:, :top_k].mean(1)
        return score
    return fit


def mean_square(x, lengths):
    """Mean squared clean z over every feature: many heads moving a little at once."""
    model = AnomalyModel.fit(x, lengths, np.ones(x.shape[1]))
    return lambda y, n: (np.clip(np.abs(model.standardise(y, n)), 0, 4) ** 2).mean(1)


def mahalanobis(dims: int) -> Callable:
    def fit(x, lengths):
        model = AnomalyModel.fit(x, lengths, np.ones(x.shape[1]), method="mahalanobis", n_components=dims)
        return model.score
    return fit


def layer_mean(x: np.ndarray) -> np.ndarray:
    return x.mean(-1)  # [input, layer, head] -> [input, layer]


# name -> (which numbers, [input, ...] -> [input, feature], fit)
VARIANTS: dict[str, tuple[str, Callable, Callable]] = {
    "row evenness, last token, top 3 (decoder default's feature)": (
        "evenness", lambda v: v[..., -1].reshape(len(v), -1), collapse(3)),
    "row evenness, 4 positions through the prompt, top 3": ("evenness", lambda v: v.reshape(len(v), -1),
                                                             collapse(3)),
    "content entropy, last token, top 3 (previous default)": ("entropy", lambda v: v[..., -1].reshape(len(v), -1),
                                                              collapse(3)),
    "content entropy, last 4 tokens, top 3": ("entropy", lambda v: v.reshape(len(v), -1), collapse(3)),
    "content entropy, last token, two-sided top 3": ("entropy", lambda v: v[..., -1].reshape(len(v), -1),
                                                     collapse(3, two_sided=True)),
    "content entropy, last token, Mahalanobis 128 dims": ("entropy", lambda v: v[..., -1].reshape(len(v), -1),
                                                          mahalanobis(128)),
    "content max, last 4 tokens, top 3": ("max", lambda v: v.reshape(len(v), -1), collapse(3, sign=1.0)),
    "sink mass, last token, mean z²": ("sink", lambda v: v[..., -1].reshape(len(v), -1), mean_square),
    "sink mass, layer mean, last token, two-sided top 1": ("sink", lambda v: layer_mean(v[..., -1]),
                                                           collapse(1, two_sided=True)),
    "most collapsed position, normalised entropy, top 3": ("scan_entropy", lambda v: v.reshape(len(v), -1),
                                                          collapse(3)),
    "most collapsed position, max weight, top 1": ("scan_max", lambda v: v.reshape(len(v), -1),
                                                   collapse(1, sign=1.0)),
}


def oof_threshold(fit: Callable, x: np.ndarray, lengths: np.ndarray, fpr: float = 0.01) -> float:
    """The (1 - fpr) quantile of out-of-fold calibration scores, as headguard's calibration sets it."""
    oof = np.empty(len(x))
    for fit_idx, held in KFold(5, shuffle=True, random_state=0).split(x):
        oof[held] = fit(x[fit_idx], lengths[fit_idx])(x[held], lengths[held])
    return float(np.quantile(oof, 1 - fpr))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--n", type=int, default=100, help="held-out inputs per group")
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    clf, attack, target = open_lab_decoder(args.model, "decoder_readout")
    test = read_split(args.model, "test")
    clean = [ex.text for ex in test][: args.n]
    groups = {
        "calibration": [ex.text for ex in read_split(args.model, "calibration")][: args.calibration],
        "clean": clean,
        "triggered": triggered(attack, [ex.text for ex in test if ex.label != target][: args.n], seed=0),
        **make_controls(clean, seed=0),
    }
    numbers = {}
    for name, texts in groups.items():
        per_input = [head_numbers(clf, t) for t in tqdm(texts, desc=name, leave=False)]
        numbers[name] = {k: np.stack([d[k] for d in per_input]) for k in per_input[0]}

    rows = []
    for variant, (key, columns, fit) in VARIANTS.items():
        x = {g: columns(numbers[g][key]) for g in groups}
        n = {g: numbers[g]["length"] for g in groups}
        threshold = oof_threshold(fit, x["calibration"], n["calibration"])
        score = fit(x["calibration"], n["calibration"])
        s = {g: score(x[g], n[g]) for g in groups if g != "calibration"}
        row = {"variant": variant, **metrics(s, threshold)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = args.out or Path(__file__).parent / "results" / f"{args.model.name}.readout.json"
    out.write_text(json.dumps({"model": args.model.name, "attack": attack.name, "n": args.n,
                               "calibration": args.calibration, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
