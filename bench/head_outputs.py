"""What each head writes, not only where it looks: head outputs at the query position as a signal.

    .venv/bin/python bench/head_outputs.py MODEL_DIR ... --features DIR [--out FILE]

The detector reads where each head's query row attends. A backdoor head that moves only a little
of its row onto a trigger can still write something no clean input makes it write. This bench
reads, in the same forward pass as the default features, the input of each layer's output
projection at the query position: the concatenated head outputs o_h = Σ_k r_k v_k, [head, d].
From them, per head, fitted on the same clean prompts (with the same coverage variants) as the
default:

- `novelty`: log of the squared Mahalanobis distance of o_h from its clean mean under a
  Ledoit-Wolf covariance (cross-fitted over 5 folds for the calibration rows, so their scores are
  out-of-sample like the threshold's);
- `write`: log of the norm of the head's contribution to the residual stream, W_O,h o_h;
- `agree`: log-odds of the cosine between two heads' residual contributions, every pair of a
  layer (the paper's head similarity, read in what the heads write);
- `toward` (a decoder read through a two-word verbalizer): what the head adds to the logit of the
  label that all heads push toward together, read through the final norm's weight and the
  unembedding (direct logit attribution, up to the norm's per-input scale): headguard's own
  `toward` family (detect/readout.py). It uses the task's label words, never the target label or
  the trigger. `toward_logit` divides it by the final norm's input RMS at the query position
  (the scale it leaves out), `toward_share` by the sum of every head's push.

Each is scored as the default scores its families (standardised against the clean prompts,
mean of the top-k heads, 5-fold out-of-fold 1 % threshold), alone and beside the default
families, against the same groups `headguard lab eval` measures, and `toward` also as a second
score beside the default's (flagged when either is past its own threshold). Each row also gives
what every group would let through at the calibration prompts' own 1 % quantile
(`prompts_quantile`), without the coverage variants' share of the threshold. It reads the trigger to build the
triggered group, so it is a harness tool. Rows go to bench/results/<kind>-head-outputs.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import KFold

from headguard.detect.calibration import Calibration
from headguard.detect.capture import capture_outputs
from headguard.detect.defaults import score_defaults
from headguard.detect.features import COLLAPSE_DIRECTION, feature_names, units_of
from headguard.detect.readout import label_readout, toward
from headguard.detect.scorer import HeadScorer
from headguard.errors import InputError
from headguard.lab.build import read_manifest
from headguard.models.batching import in_input_order, length_batches
from headguard.models.classifier import Classifier
from score_settings import bench_main, cached_groups, calibration_set, held_out, input_groups, rates
from threshold_rule import prompts_quantile

TOP_K = (1, 2, 5, 20, 40, 80)  # those up to the number of scored units


class OutputReader:
    """The default features and every head's output at the query position, in one forward pass."""

    def __init__(self, clf: Classifier):
        self.scorer = HeadScorer(clf)
        self.adapter = self.scorer.adapter
        self.layers = list(range(self.adapter.n_layers))
        self.d = self.adapter.head_dim()
        # A decoder's final RMS norm: its input's RMS at the query position turns `toward` into each
        # head's share of the label logit itself (the norm divides every head of an input by it).
        norm = getattr(getattr(clf.model, "model", None), "norm", None)
        self.final_norm = norm if hasattr(norm, "variance_epsilon") else None

    def names(self) -> list[str]:
        defaults = feature_names(self.layers, self.adapter.n_heads, self.scorer.families)
        return defaults + [f"out:L{la}H{h}:{j}" for la in self.layers for h in range(self.adapter.n_heads)
                           for j in range(self.d)] + (["final_rms"] if self.final_norm is not None else [])

    @torch.no_grad()
    def _batch(self, texts: list[str], ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.scorer.clf.encode(texts, strict=True, ids=ids)
        query, _ = self.scorer.positions(batch["attention_mask"].bool())
        final: list[torch.Tensor] = []
        hook = None
        if self.final_norm is not None:
            eps = self.final_norm.variance_epsilon
            hook = self.final_norm.register_forward_pre_hook(
                lambda _m, args: final.append(args[0][torch.arange(len(query)), query].float()
                                              .pow(2).mean(-1, keepdim=True).add(eps).sqrt()))
        try:
            with capture_outputs(self.adapter, self.layers, query) as grabbed:
                cap = self.scorer.capture_batch(batch, stop_early=False)  # the last layer's output is read too
        finally:
            if hook is not None:
                hook.remove()
        outputs = torch.stack([grabbed[la] for la in self.layers], 1).flatten(1)
        return np.concatenate([cap.features, torch.cat([outputs, *final], 1).cpu().numpy().astype(np.float64)],
                              1), cap.lengths

    def features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = length_batches(texts, self.scorer.batch_size)
        parts = [self._batch([texts[i] for i in b], b) for b in batches]
        return (in_input_order(batches, np.concatenate([x for x, _ in parts])),
                in_input_order(batches, np.concatenate([n for _, n in parts])))

    def write_matrices(self) -> torch.Tensor:
        """[layer, head, hidden, d]: each head's block of the output projection (out = W o)."""
        return torch.stack([self.adapter.write_matrix(la) for la in self.layers])


def novelty(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[n, head, d] clean outputs, [m, head, d] -> [m, head] log squared Mahalanobis distances."""
    out = np.empty(x.shape[:2])
    for h in range(x.shape[1]):
        lw = LedoitWolf().fit(train[:, h])
        diff = x[:, h] - lw.location_
        out[:, h] = np.log(np.einsum("nd,de,ne->n", diff, lw.precision_, diff) + 1e-6)
    return out


def cross_fitted_novelty(fitted: np.ndarray, rest: np.ndarray, folds: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Novelty of the fitted rows, each from a model fitted without it, and of `rest` from all."""
    own = np.empty(fitted.shape[:2])
    for fit_idx, held_idx in KFold(folds, shuffle=True, random_state=1).split(fitted):
        own[held_idx] = novelty(fitted[fit_idx], fitted[held_idx])
    return own, novelty(fitted, rest)


def written(outputs: np.ndarray, mats: torch.Tensor) -> torch.Tensor:
    """[n, layer*head*d] outputs -> [n, layer, head, hidden] contributions to the residual stream."""
    n_layers, n_heads, _, d = mats.shape
    o = torch.from_numpy(outputs).float().view(-1, n_layers, n_heads, d)
    return torch.einsum("lhwd,nlhd->nlhw", mats, o)


def readout_or_none(reader: OutputReader) -> torch.Tensor | None:
    """headguard's `toward` readout [layer, head, d] in float64, or None where the model has none
    (an encoder: pooler and classifier head; more than two labels; a norm with a bias)."""
    try:
        return label_readout(reader.scorer.clf, reader.adapter, reader.layers).double()
    except InputError:
        return None


def toward_features(outputs: np.ndarray, readout: torch.Tensor) -> np.ndarray:
    """[n, layer*head*d] head outputs -> [n, layer*head]: headguard's `toward` family."""
    flat = torch.from_numpy(outputs).view(len(outputs), readout.shape[0], -1)
    return toward(flat, readout).flatten(1).numpy()


def write_features(outputs: np.ndarray, mats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """([n, layer*head] log norms of what each head writes, [n, layer*pair] log-odds of the
    cosine between two heads' contributions within a layer)."""
    norms, agree = [], []
    for i in range(0, len(outputs), 64):
        c = written(outputs[i : i + 64], mats)
        norms.append(torch.log(c.norm(dim=-1) + 1e-6).flatten(1))
        u = torch.nn.functional.normalize(c, dim=-1)
        cos = torch.einsum("nlhw,nlgw->nlhg", u, u)
        upper = torch.triu_indices(c.shape[2], c.shape[2], 1)
        p = ((cos[:, :, upper[0], upper[1]] + 1) / 2).clamp(1e-4, 1 - 1e-4)
        agree.append((torch.log(p) - torch.log1p(-p)).flatten(1))
    return torch.cat(norms).numpy().astype(np.float64), torch.cat(agree).numpy().astype(np.float64)


def fit(x: np.ndarray, n: np.ndarray, band_only: np.ndarray, raise_only: np.ndarray, direction: np.ndarray,
        units: np.ndarray | None, top_k: int, coverage: tuple[str, ...]) -> Calibration:
    return Calibration.fit(x, n, direction, model_hash="-", layers=[], families=[], top_k=top_k, units=units,
                           coverage=coverage, band_only=band_only, raise_only=raise_only)


def measure(model: Path, cache: Path | None) -> list[dict]:
    lab = read_manifest(model)
    clf = Classifier.from_folder(model)
    reader = OutputReader(clf)
    defaults = score_defaults(clf.task.kind)
    names = reader.names()
    path = cache / f"{model.name}.outputs.npz" if cache else None
    feats = cached_groups(path, names, input_groups(model, clf, lab), reader.features)
    n_out = len(reader.layers) * reader.adapter.n_heads * reader.d
    n_default = len(names) - n_out - (reader.final_norm is not None)
    out = slice(n_default, n_default + n_out)  # the head outputs' columns; the final RMS (if any) after them
    default_names = names[:n_default]
    n_layers, n_heads = len(reader.layers), reader.adapter.n_heads
    mats = reader.write_matrices()

    x, n, band_only, raise_only = calibration_set(feats, defaults.coverage)
    n_split = len(feats["split"][0])
    groups = held_out(feats)
    fitted = ~band_only
    out_cal = x[:, out].reshape(len(x), -1, reader.d)
    # Novelty: the fitted rows cross-fitted, the short variants and every held-out group from all.
    rest = np.concatenate([out_cal[band_only]] + [f[:, out].reshape(len(f), -1, reader.d)
                                                   for f, _ in groups.values()])
    own, others = cross_fitted_novelty(out_cal[fitted], rest)
    nov_cal = np.empty((len(x), own.shape[1]))
    nov_cal[fitted], nov_cal[band_only] = own, others[: band_only.sum()]
    nov, at = {}, int(band_only.sum())
    for g, (f, _) in groups.items():
        nov[g], at = others[at : at + len(f)], at + len(f)

    readout = readout_or_none(reader)

    def families(rows: np.ndarray, novelty_rows: np.ndarray) -> dict[str, np.ndarray]:
        norms, agree = write_features(rows[:, out], mats)
        fams = {"default": rows[:, :n_default], "novelty": novelty_rows, "write": norms, "agree": agree}
        if readout is not None:
            fams["toward"] = push = toward_features(rows[:, out], readout)
            # The same push as a share: of the logit itself (over the final norm's RMS), and of
            # every head's push together (how much of it a few heads carry).
            fams["toward_logit"] = push / rows[:, -1:]
            fams["toward_share"] = push / (np.abs(push).sum(1, keepdims=True) + 1e-12)
        return fams

    cal_fams = families(x, nov_cal)
    held_fams = {g: families(f, nov[g]) for g, (f, _) in groups.items()}
    head_units = np.arange(n_layers * n_heads, dtype=np.float64)
    pair_units = np.repeat(np.arange(n_layers), n_heads * (n_heads - 1) // 2).astype(np.float64)
    default_dir = np.array([COLLAPSE_DIRECTION[nm.split(":")[0]] for nm in default_names])
    default_units = np.array(units_of(default_names), dtype=np.float64)
    spec = {  # family -> (direction, per-head unit of each column: heads as the default numbers them)
        "default": (default_dir, default_units if defaults.per_head else None),
        "novelty": (np.ones(len(head_units)), head_units),
        "write": (np.ones(len(head_units)), head_units),
        "agree": (np.ones(len(pair_units)), None),
        "toward": (np.ones(len(head_units)), head_units),
        "toward_logit": (np.ones(len(head_units)), head_units),
        "toward_share": (np.ones(len(head_units)), head_units),
    }
    settings = [("default",), ("novelty",), ("write",), ("agree",), ("default", "novelty"), ("novelty", "write"),
                ("default", "agree")] + ([("toward",), ("default", "toward"), ("toward_logit",), ("toward_share",)]
                                     if readout is not None else [])

    def row(families: list[str], k: int, per_head: bool, scores: dict, threshold: float, own: float) -> dict:
        """`own`: the split's own 1 % quantile, where the threshold would lie without the coverage
        variants; the row says what each group would then let through."""
        r = {"model": model.name, "attack": lab["attack"], "families": families, "top_k": k,
             "per_head": per_head, **rates(scores, threshold),
             "fpr_fresh_code": float((scores["fresh_code"] > threshold).mean()),
             "threshold": threshold, "prompts_quantile": own,
             "over_prompts_quantile": {g: float((s > own).mean()) for g, s in scores.items()}}
        print(json.dumps(r), flush=True)
        return r

    rows, fits = [], {}
    for combo in settings:
        xs = np.concatenate([cal_fams[c] for c in combo], 1)
        direction = np.concatenate([spec[c][0] for c in combo])
        per_head = all(spec[c][1] is not None for c in combo)
        units = np.concatenate([spec[c][1] for c in combo]) if per_head else None
        n_units = len(np.unique(units)) if per_head else xs.shape[1]
        for k in (k for k in TOP_K if k <= n_units):
            cal = fit(xs, n, band_only, raise_only, direction, units, k, defaults.coverage)
            scores = {g: cal.score(np.concatenate([held_fams[g][c] for c in combo], 1), groups[g][1])
                      for g in groups}
            fits[combo, k] = cal, scores
            rows.append(row(list(combo), k, per_head, scores, cal.threshold, prompts_quantile(cal, n_split)))
    if readout is not None:
        # Either score past its own threshold: each divided by its threshold, the larger read, and
        # the union's threshold the 1 % quantile of that over the out-of-fold calibration scores
        # (never under 1: neither score's own threshold is lowered).
        base, base_scores = fits[("default",), defaults.top_k]
        for k in (k for k in TOP_K if k <= 5):
            cal, scores = fits[("toward",), k]
            clean = np.maximum(base.clean_scores / base.threshold, cal.clean_scores / cal.threshold)
            threshold = max(1.0, float(np.quantile(clean[fitted], 0.99)))
            either = {g: np.maximum(base_scores[g] / base.threshold, scores[g] / cal.threshold) for g in groups}
            own = float(np.quantile(clean[:n_split], 1 - cal.target_fpr))  # the split's rows come first
            rows.append(row([f"default (top {defaults.top_k}) or toward"], k, True, either, threshold, own))
    return rows


if __name__ == "__main__":
    bench_main("head-outputs", measure)
