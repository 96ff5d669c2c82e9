"""The detector: a suspect model, its head scorer and its calibration; scores and explains inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from headguard.detect.calibration import GATE_QUANTILE, GATE_ROWS, Calibration
from headguard.detect.coverage import OWN_DRAW, SHORT, available_sources, code_prompts, coverage_prompts, short_prompts
from headguard.detect.defaults import score_defaults
from headguard.detect.features import feature_directions, feature_names, feature_units, heads_of
from headguard.detect.scorer import Capture, HeadScorer
from headguard.errors import InputError
from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash

TOP_K = 3
# Below this many clean prompts the 1 % threshold is loose: with 50, the MiniLM lab models'
# worst held-out false-positive rates ran up to 8 % (docs/METHOD.md §5).
RECOMMENDED_PROMPTS = 200

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    score: float
    threshold: float
    flagged: bool
    explanation: dict

    def as_dict(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "flagged": self.flagged,
                "explanation": self.explanation}


def follows_defaults(cal: Calibration, kind: str) -> bool:
    """Whether a calibration was fitted with the scoring defaults of this release for the model's kind
    (a fit cached by an earlier release may not have been)."""
    defaults = score_defaults(kind)
    return (tuple(cal.families) == defaults.families and cal.anomaly.top_k == defaults.top_k
            and cal.anomaly.length_adjusted == defaults.length_adjust and cal.anomaly.per_head == defaults.per_head
            and cal.coverage == available_sources(defaults.coverage) and cal.length_bands == defaults.length_bands
            and cal.gated == defaults.answer_gate)


def calibrate(clf: Classifier, prompts: list[str], *, target_fpr: float = 0.01, layers: list[int] | None = None,
              families: tuple[str, ...] | None = None, method: str = "collapse", n_components: int = 32,
              length_adjust: bool | None = None, top_k: int | None = None, per_head: bool | None = None,
              coverage: bool | tuple[str, ...] | None = None, length_bands: bool | None = None,
              answer_gate: bool | None = None, model_hash: str | None = None) -> Calibration:
    """Fits the anomaly model and its threshold on clean prompts (never on the trigger).

    Families, top_k, length adjustment, per-head averaging, coverage variants
    (detect/coverage.py), length bands and the answer gate left unset take the defaults for the model's kind;
    coverage True takes the kind's variant kinds (Python code where the kind has none), False none.
    """
    if len(prompts) < RECOMMENDED_PROMPTS:
        log.warning("calibrating on %d prompts; %d or more are recommended: with fewer, the threshold "
                    "can land far from the target FPR (docs/METHOD.md §5)", len(prompts), RECOMMENDED_PROMPTS)
    defaults = score_defaults(clf.task.kind)
    families = defaults.families if families is None else families
    length_adjust = defaults.length_adjust if length_adjust is None else length_adjust
    top_k = defaults.top_k if top_k is None else top_k
    per_head = defaults.per_head if per_head is None else per_head
    length_bands = defaults.length_bands if length_bands is None else length_bands
    answer_gate = defaults.answer_gate if answer_gate is None else answer_gate
    if coverage is None:
        coverage = defaults.coverage
    elif coverage is True:
        coverage = defaults.coverage or ("python",)
    elif coverage is False:
        coverage = ()
    coverage = available_sources(tuple(coverage))
    prompts = list(prompts)
    # Fitted on: the prompts and their longer variants; the short variants only set their band.
    fitted = prompts + coverage_within_context(clf, prompts, coverage) if coverage else prompts
    short = short_within_context(clf, prompts, coverage)
    scorer = HeadScorer(clf, layers, families)
    features, lengths = scorer.features(fitted + short)
    direction = np.array(feature_directions(scorer.layers, scorer.adapter.n_heads, scorer.families))
    units = np.array(feature_units(scorer.layers, scorer.adapter.n_heads, scorer.families)) if per_head else None
    cal = Calibration.fit(features, lengths, direction, model_hash=model_hash or weights_hash(clf.model),
                          layers=scorer.layers, families=list(scorer.families), method=method,
                          target_fpr=target_fpr, n_components=n_components, length_adjust=length_adjust,
                          top_k=top_k, units=units, coverage=coverage, length_bands=length_bands,
                          band_only=np.arange(len(features)) >= len(fitted),
                          raise_only=own_draw_rows(prompts, fitted + short, coverage))
    if answer_gate:
        cal.answer_gate = fit_answer_gate(clf, cal, fitted, len(prompts))
    return cal


def fit_answer_gate(clf: Classifier, cal: Calibration, fitted: list[str], n_prompts: int) -> np.ndarray:
    """[low, bar]: the prompts' own GATE_QUANTILE quantile of out-of-fold scores, and the surest answer
    (top label logit over the next) among the fitted rows (the first `n_prompts` of `fitted` the
    prompts, then their variants) that score between it and the threshold, or among the
    GATE_ROWS highest-scoring rows under the threshold where fewer score between."""
    oof = cal.clean_scores[: len(fitted)]
    low = float(np.quantile(oof[:n_prompts], GATE_QUANTILE))
    under = np.flatnonzero(oof <= cal.threshold)
    # A bar over a handful of rows is one a clean input passes too often (MiniLM SMS BadNets seed 1:
    # three rows, and one more rare-word message crossed).
    rows = under[np.argsort(-oof[under], kind="stable")][: max(GATE_ROWS, int((oof[under] > low).sum()))]
    margins = clf.answer_margins([fitted[i] for i in rows])
    return np.array([low, float(margins.max()) if len(margins) else np.inf])


def own_draw_rows(prompts: list[str], texts: list[str], kinds: tuple[str, ...]) -> np.ndarray:
    """Which of `texts` (calibration rows made from `prompts`) are variants of a code source of
    `kinds` on a draw of its own: they may raise the threshold, never lower it."""
    own = {v for source in kinds if source in OWN_DRAW for v in code_prompts(prompts, source)}
    return np.array([text in own for text in texts], bool)


def coverage_within_context(clf: Classifier, prompts: list[str], kinds: tuple[str, ...] = ("python",)) -> list[str]:
    """The prompts' coverage variants of `kinds` that fit the model's context (the others are
    left out, not truncated): what `calibrate` adds."""
    return [p for p in coverage_prompts(prompts, kinds=kinds) if clf.fits(p)]


def short_within_context(clf: Classifier, prompts: list[str], kinds: tuple[str, ...]) -> list[str]:
    """The prompts' short variants that fit the model's context, where `kinds` holds `short`
    (none otherwise): what `calibrate` adds to set the short band."""
    return [p for p in short_prompts(prompts) if clf.fits(p)] if SHORT in kinds else []


class Detector:
    def __init__(self, clf: Classifier, calibration: Calibration, model_hash: str | None = None):
        actual = model_hash or weights_hash(clf.model)
        if actual != calibration.model_hash:
            raise InputError(
                f"this calibration belongs to another model ({calibration.model_hash[:19]}…); "
                f"the loaded weights are {actual[:19]}…: recalibrate with `headguard calibrate`"
            )
        self.clf = clf
        self.model_hash = actual
        self.calibration = calibration
        self.scorer = HeadScorer(clf, calibration.layers, tuple(calibration.families))
        names = feature_names(self.scorer.layers, self.scorer.adapter.n_heads, self.scorer.families)
        self.heads, self._to_heads = _deviation_heads(names, calibration)
        self.answers_read = 0  # inputs whose answer the gate has read: a forward pass each

    @classmethod
    def from_files(cls, model: Path, calibration: Path, device: str = "cpu") -> Detector:
        cal = Calibration.load(calibration)
        return cls(Classifier.from_folder(model, device), cal)

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def scores(self, texts: list[str]) -> np.ndarray:
        return self._gate(texts, self.calibration.score(*self.scorer.features(texts)))[0]

    def _gate(self, texts: list[str], scores: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
        """(scores with the answer gate applied, {index: answer margin} of the inputs in its band).
        Only those inputs run the model to its answer, the score-only pass having stopped early."""
        between = np.flatnonzero(self.calibration.in_gate(scores))
        if not len(between):
            return scores, {}
        margins = self.clf.answer_margins([texts[i] for i in between])
        self.answers_read += len(between)
        scores = scores.copy()
        scores[between] = self.calibration.lift(scores[between], margins)
        return scores, dict(zip(between.tolist(), margins.tolist(), strict=True))

    def scan(self, texts: list[str], batch_size: int = 16) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            cap = self.scorer.capture(batch)
            scores, margins = self._gate(batch, self.calibration.score(cap.features, cap.lengths))
            for b, score in enumerate(scores):
                explanation = self._explain(cap, b)
                if b in margins:
                    explanation["answer_gate"] = {"margin": round(margins[b], 4),
                                                  "bar": round(float(self.calibration.answer_gate[1]), 4),
                                                  "lifted": bool(margins[b] > self.calibration.answer_gate[1])}
                verdicts.append(Verdict(float(score), self.threshold, bool(score > self.threshold), explanation))
        return verdicts

    def head_contributions(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[n, len(self.heads)]: each head's squared deviation from clean, in the collapse direction
        under the collapse score and with its families averaged where the score averages them (a
        head pair's similarity split between its two heads): what explanations rank and repair's
        head selection compares."""
        deviation = self.calibration.anomaly.deviation(features, lengths)
        return np.clip(deviation, 0, None) ** 2 @ self._to_heads

    def _explain(self, cap: Capture, b: int) -> dict:
        """Which heads deviate most from clean (share of squared deviations), and what they attend to."""
        contribution = self.head_contributions(cap.features[b : b + 1], cap.lengths[b : b + 1])[0]
        total = float(contribution.sum()) or 1.0
        per_head = {head: float(value) for head, value in zip(self.heads, contribution, strict=True)}
        per_layer: dict[int, float] = {}
        for (layer, _), value in per_head.items():
            per_layer[layer] = per_layer.get(layer, 0.0) + value
        top_heads = sorted(per_head, key=per_head.get, reverse=True)[:TOP_K]
        top_layers = sorted(per_layer, key=per_layer.get, reverse=True)[:TOP_K]
        return {
            "top_layers": [{"layer": layer, "share": round(per_layer[layer] / total, 4)} for layer in top_layers],
            "top_heads": [{"head": f"L{layer}H{head}", "share": round(per_head[(layer, head)] / total, 4)}
                          for layer, head in top_heads],
            "suspected_tokens": self._attended_tokens(cap, b, top_heads),
        }

    def _attended_tokens(self, cap: Capture, b: int, heads: list[tuple[int, int]]) -> list[dict]:
        """The content tokens the most anomalous heads attend to, heaviest first (trigger localisation)."""
        content = cap.content[b]
        weight = torch.zeros_like(content, dtype=torch.float32)
        for layer, head in heads:
            row = cap.rows[layer][b, head] * content
            weight += row / row.sum().clamp(min=1e-12)
        weight /= max(1, len(heads))
        ids = cap.input_ids[b]
        order = torch.argsort(weight, descending=True)[:TOP_K]
        tokenizer = self.clf.tokenizer
        first = int(cap.mask[b].float().argmax())  # index of the first real token (after left padding)
        return [{"token": tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(int(ids[i]))]).strip(),
                 "position": int(i) - first, "weight": round(float(weight[i]), 4)}
                for i in order if content[i]]


def _deviation_heads(names: list[str], calibration: Calibration) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(heads, [deviation column, head] matrix) that shares each column of the anomaly's deviation
    among the heads behind it: a unit's one head under per-head scoring, else a feature's (a head
    pair's similarity has two)."""
    column_heads = [heads_of(names[i]) for i in calibration.anomaly.deviation_features()]
    heads = sorted({h for hs in column_heads for h in hs})
    index = {h: i for i, h in enumerate(heads)}
    matrix = np.zeros((len(column_heads), len(heads)))
    for column, hs in enumerate(column_heads):
        for h in hs:
            matrix[column, index[h]] = 1.0 / len(hs)
    return heads, matrix
