"""Readouts of a head at the query position beyond how its row concentrates.

    .venv/bin/python bench/head_readouts.py MODEL_DIR ... [--features DIR] [--out bench/results/head-readouts.json]

The detector reads the attention row of the query position and asks how it concentrates. Three
other readouts of the same head, at the same position, are set beside the default of the model's
kind here:

- `dormancy` (a detector family, detect/features.py): the share of the row the sink takes, read
  as rising: a head that gives its row back to the sink stops reading the text. Scored as the
  mean of the k most dormant heads, from the single most dormant one to every head: a backdoor
  that switches heads off may switch off many.
- `out_norm` and `write_norm`: the log norm of the head's output before the output projection,
  and of its share of the projection's output (W_O^h z_h, what it adds to the residual stream),
  from a pre-hook on the output projection: a head whose row stays spread still writes
  something unusual if it reads a token whose value is unlike the others'. Larger is the
  collapse direction.
- `vrow_evenness`: the row weighted by each key's value norm (that of its query head's KV
  group), then renormalised, read against its key count as `row_evenness` is: what the head
  mixes, not only where it looks.

Each setting is calibrated as `headguard calibrate` does (collapse score, out-of-fold 1 %
threshold) on the calibration split with the coverage variants of the kind's default, and
measured on the inputs `lab eval` scores and on the traffic mix's clean rows. The forward pass
runs to the end (the output norms need the output projection's input).

It reads the trigger to build the triggered group, so it is a harness tool.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from headguard.detect.capture import capture_outputs
from headguard.detect.defaults import score_defaults
from headguard.detect.features import COLLAPSE_DIRECTION, FAMILIES, feature_names
from headguard.detect.scorer import HeadScorer
from headguard.lab.build import read_manifest
from headguard.models.batching import in_input_order, length_batches
from headguard.models.classifier import Classifier
from headguard.models.task import Task
from score_settings import cached_groups, calibration_set, fit_setting, held_out, input_groups, rates, write_rows
from threshold_rule import prompts_quantile

OUTPUT_FAMILIES = ("out_norm", "write_norm", "vrow_evenness")
DORMANT_K = (1, 2, 3, 5, 10, 20, 40, 60, 90, 135)  # and every head (SmolLM2 has 270)
DIRECTION = {**COLLAPSE_DIRECTION, "out_norm": 1.0, "write_norm": 1.0, "vrow_evenness": -1.0}


def value_projection(adapter, layer: int) -> torch.nn.Module:
    module = adapter.attention_modules()[layer]
    if adapter.family == "gpt2":  # fused q/k/v, and a Conv1D output projection stored [in, out]
        raise SystemExit("GPT-2 models are not read here")
    return module.value if adapter.family == "bert" else module.v_proj


@torch.no_grad()
def batch_features(scorer: HeadScorer, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the row features of every family, then per layer out_norm, write_norm and vrow_evenness of
    every head; content lengths)."""
    adapter = scorer.adapter
    query, _ = scorer.positions(batch["attention_mask"].bool())
    values: dict[int, torch.Tensor] = {}
    d, h = adapter.head_dim(), adapter.n_heads

    def value_hook(layer):
        def keep(_module, _args, output):
            b, t, _ = output.shape
            values[layer] = output.float().view(b, t, -1, d).norm(dim=-1)  # [batch, key, kv_head]
        return keep

    handles = [value_projection(adapter, layer).register_forward_hook(value_hook(layer)) for layer in scorer.layers]
    try:
        with capture_outputs(adapter, scorer.layers, query) as outputs:  # layer -> [batch, head * d]
            cap = scorer.capture_batch(batch, stop_early=False)
    finally:
        for handle in handles:
            handle.remove()
    out_norm, write_norm, vrow = [], [], []
    n_keys = cap.mask.sum(-1).float().clamp(min=2)[:, None]  # [batch, 1]
    for layer in scorer.layers:
        z = outputs[layer].view(len(query), h, d)  # [batch, head, d]
        write = torch.einsum("bhd,hod->bho", z, adapter.write_matrix(layer))
        out_norm.append(torch.log(z.norm(dim=-1).clamp(min=1e-6)))
        write_norm.append(torch.log(write.norm(dim=-1).clamp(min=1e-6)))
        # The row weighted by each key's value norm (its query head's KV group): what the head
        # mixes, not only where it looks; its evenness against the key count, as row_evenness.
        group = torch.arange(h) // (h // values[layer].shape[-1])
        weighted = cap.rows[layer].float() * values[layer][:, :, group].transpose(1, 2)  # [batch, head, key]
        p = weighted / weighted.sum(-1, keepdim=True).clamp(min=1e-12)
        entropy = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)
        vrow.append(torch.log(entropy / torch.log(n_keys) + 1e-3))
    extra = torch.cat([torch.cat(parts, dim=-1) for parts in zip(out_norm, write_norm, vrow, strict=True)], dim=-1)
    return np.c_[cap.features, extra.cpu().numpy().astype(np.float64)], cap.lengths


def names_of(scorer: HeadScorer) -> list[str]:
    rows = feature_names(scorer.layers, scorer.adapter.n_heads, scorer.families)
    out = [f"{family}:L{layer}H{head}" for layer in scorer.layers for family in OUTPUT_FAMILIES
           for head in range(scorer.adapter.n_heads)]
    return rows + out


def group_features(model: Path, cache: Path | None) -> tuple[dict, list[str]]:
    """Per group of bench/score_settings.py, (features, content lengths) of every row family and
    readout, and their names; with a cache folder, kept in CACHE/<model>.readouts.npz."""
    clf = Classifier.from_folder(model)
    scorer = HeadScorer(clf, families=FAMILIES)

    def compute(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = length_batches(texts, scorer.batch_size)
        parts = [batch_features(scorer, clf.encode([texts[i] for i in b], strict=True, ids=b)) for b in batches]
        return (in_input_order(batches, np.concatenate([x for x, _ in parts])),
                in_input_order(batches, np.concatenate([n for _, n in parts])))

    names = names_of(scorer)
    path = cache / f"{model.name}.readouts.npz" if cache else None
    return cached_groups(path, names, input_groups(model, clf, read_manifest(model)), compute), names


def settings(kind: str, n_heads: int) -> list[tuple[tuple[str, ...], int, bool]]:
    """(families, top k, per head): the default of the kind, dormancy over many heads, and the
    output norms and the value-weighted row alone and beside the default."""
    default = score_defaults(kind)
    rows = [(tuple(default.families), default.top_k, default.per_head)]
    rows += [(("dormancy",), k, False) for k in (*[k for k in DORMANT_K if k < n_heads], n_heads)]
    for k in (1, 2, 3):
        rows += [((family,), k, False) for family in OUTPUT_FAMILIES]
        rows += [((*default.families, "write_norm"), k, per_head) for per_head in (False, True)]
    return rows


def measure(model: Path, cache: Path | None) -> list[dict]:
    lab = read_manifest(model)
    kind = Task.load(model).kind
    feats, names = group_features(model, cache)
    coverage = tuple(score_defaults(kind).coverage)
    x, n, band_only, _ = calibration_set(feats, coverage)
    n_split = len(feats["split"][1])  # the prompts come first, their variants after them
    prefix = np.array([name.split(":")[0] for name in names])
    rows = []
    for families, k, per_head in settings(kind, int((prefix == "dormancy").sum())):
        cal, cols = fit_setting(feats, names, families, k, per_head, coverage, False, directions=DIRECTION)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in held_out(feats).items()}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(families), "top_k": k,
                     "per_head": per_head, "coverage": list(coverage), **rates(scores, cal.threshold),
                     # how far the variants lift the threshold above the prompts' own 1 % quantile
                     "threshold": cal.threshold, "prompts_quantile": prompts_quantile(cal, n_split)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--features", type=Path, help="a folder to keep each model's features in")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "head-readouts.json",
                        help="the rows of models not measured in this run are kept")
    args = parser.parse_args()
    write_rows(args.out, args.models, lambda model: measure(model, args.features))


if __name__ == "__main__":
    main()
