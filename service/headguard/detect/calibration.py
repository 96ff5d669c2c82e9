"""The anomaly model fitted on clean prompts, its threshold, and its versioned file.

Every feature is standardised over the clean prompts (its spread floored at half the median
spread), optionally after removing a linear fit on log input length. The fit is only trusted
over the lengths it saw: an input longer (or shorter) than every calibration prompt is adjusted
as if it had the longest (shortest) calibration length, since the line extrapolated to inputs
several times longer raised false positives more than it removed (docs/METHOD.md). Then:

- `collapse` (default): the score is the mean of the `top_k` largest standardised deviations, in
  the collapse direction, over all heads: "how many clean standard deviations the k most
  collapsed heads are past their normal" (k = 1: the single most collapsed head). With `units`,
  a head's features of several families are averaged first, so a head counts as collapsed
  when its measures agree (its whole row both loses entropy and piles onto one key).
- `mahalanobis`: Mahalanobis distance in a PCA subspace (32 dims, as in the paper) under a
  Ledoit-Wolf shrunk covariance. It dilutes a few strongly collapsed heads among hundreds of
  quiet features (docs/METHOD.md), and is kept for the ablation.

The threshold is the (1 - target FPR) quantile of *out-of-fold* clean scores: scores of prompts
the model was fitted on run optimistically low. With length bands, the prompts are split by
content length into bands of at least BAND_PROMPTS, and a band whose own quantile lies above the
threshold has its scores lowered by the difference: a short message, whose row concentrates for
want of keys, must pass its own band's quantile as well as the overall one (docs/METHOD.md §3).

The answer gate (`answer_gate`: [low, bar]) reads the model's answer for inputs scoring between
the prompts' own GATE_QUANTILE quantile (low) and the threshold, where unusual clean inputs and
triggered ones the heads only half betray both lie: one answered more surely than every
calibration row in that band (its top label logit over the next above `bar`; at least
GATE_ROWS rows, the highest-scoring under the threshold, where fewer score in the band) is lifted
over the threshold. A backdoor answers its target surely; a clean input the heads react to need not.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold

from headguard.errors import InputError
from headguard.fsutil import atomic_file

FORMAT_VERSION = 9  # 2: top_k; 3: length_range; 4: units; 5: coverage names its code sources; 6: length bands;
# 7: whether length bands were asked for, apart from the short band; 8: each unit's tail scale; 9: answer gate
# No feature's spread is taken below this share of the median spread: a feature almost constant
# on the clean prompts (MiniLM's L0H2 heaviest-key share sits at the log-odds clamp on 98 % of
# them) would otherwise read any movement as thousands of standard deviations, and decide the
# threshold alone (docs/METHOD.md §5: with 50–200 prompts the encoder default caught 0.33–0.85).
SPREAD_FLOOR = 0.5
# Each length band's quantile rests on at least this many out-of-fold scores: at a 1 % target,
# about the band's highest score.
BAND_PROMPTS = 100
# The answer gate's band starts at this quantile of the prompts' own out-of-fold scores (their
# coverage variants lift the threshold above it): docs/METHOD.md §3.
GATE_QUANTILE = 0.98
# ... and its bar is the surest answer of at least this many calibration rows under the threshold.
GATE_ROWS = 10


def _design(lengths: np.ndarray) -> np.ndarray:
    return np.c_[np.ones(len(lengths)), np.log(np.clip(lengths, 1, None))]


METHODS = ("collapse", "mahalanobis")
_EMPTY = np.zeros((0, 0))


def _averaging(units: np.ndarray) -> np.ndarray:
    """[feature, unit] matrix that maps features to the mean over each unit's features."""
    _, index = np.unique(units, return_inverse=True)
    onehot = np.zeros((len(units), index.max() + 1))
    onehot[np.arange(len(units)), index] = 1.0
    return onehot / onehot.sum(0)


@dataclass
class AnomalyModel:
    method: str
    length_coef: np.ndarray  # [2, feature]: intercept and slope on log length
    mean: np.ndarray  # [feature] centre (the median)
    scale: np.ndarray  # [feature]
    direction: np.ndarray  # [feature]: +1 where a larger value means more collapse, else -1
    components: np.ndarray = field(default_factory=lambda: _EMPTY)  # [dim, feature] (mahalanobis)
    center: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [dim]
    precision: np.ndarray = field(default_factory=lambda: _EMPTY)  # [dim, dim]
    top_k: int = 1  # collapse: heads averaged into the score
    # [2]: the calibration prompts' shortest and longest content length; the length fit is not
    # extrapolated past them (files before format 3 have none: no limit).
    length_range: np.ndarray = field(default_factory=lambda: np.array([0.0, np.inf]))
    # [feature] (collapse): the unit (head) of each feature; a unit's deviations are averaged
    # before the top-k. Empty: every feature is its own unit (files before format 4).
    units: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # [unit] (collapse): each unit's deviation divided by its own clean tail, the `tail_quantile` of
    # its deviations over the calibration prompts (floored like the spread). Measured and not a
    # default (docs/METHOD.md §5). Empty: not divided (files before format 8).
    tail: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, x: np.ndarray, lengths: np.ndarray, direction: np.ndarray, method: str = "collapse",
            n_components: int = 32, length_adjust: bool = False, top_k: int = 1,
            units: np.ndarray | None = None, spread_floor: float = SPREAD_FLOOR,
            tail_quantile: float | None = None) -> AnomalyModel:
        if method not in METHODS:
            raise InputError(f"unknown scoring method {method!r}; choose from {', '.join(METHODS)}")
        units = np.zeros(0) if units is None else np.asarray(units, dtype=np.float64)
        if len(units) not in (0, x.shape[1]):
            raise InputError(f"units must name one unit per feature ({x.shape[1]}), got {len(units)}")
        n_units = len(np.unique(units)) if len(units) else x.shape[1]
        if not 1 <= top_k <= n_units:
            raise InputError(f"top_k must be in 1..{n_units} (the number of scored units), got {top_k}")
        if tail_quantile is not None and not 0.5 <= tail_quantile < 1:
            raise InputError(f"tail_quantile must be in [0.5, 1), got {tail_quantile}")
        if length_adjust:
            coef, *_ = np.linalg.lstsq(_design(lengths), x, rcond=None)
        else:
            coef = np.zeros((2, x.shape[1]))
        r = x - _design(lengths) @ coef
        spread = r.std(0)
        scale = np.maximum(spread, spread_floor * np.median(spread)) + 1e-6
        # The median centres robustly: a few odd clean prompts must not shift every head's normal.
        model = cls(method, coef, np.median(r, 0), scale, np.asarray(direction, dtype=np.float64),
                    top_k=top_k, length_range=np.array([lengths.min(), lengths.max()], dtype=np.float64),
                    units=units)
        if tail_quantile is not None and method == "collapse":
            tail = np.quantile(model.deviation(x, lengths), tail_quantile, axis=0)
            model.tail = np.maximum(tail, max(spread_floor * float(np.median(tail)), 1e-6))  # never 0 or less
        if method == "mahalanobis":
            z = model.standardise(x, lengths)
            dim = max(1, min(n_components, z.shape[0] - 1, z.shape[1]))
            pca = PCA(n_components=dim, svd_solver="full").fit(z)
            lw = LedoitWolf().fit(pca.transform(z))
            model.components = pca.components_
            # score() skips PCA's own centring, so fold pca.mean_ into the centre.
            model.center = lw.location_ + pca.mean_ @ pca.components_.T
            model.precision = lw.precision_
        return model

    @property
    def length_adjusted(self) -> bool:
        return bool(np.any(self.length_coef))

    @property
    def per_head(self) -> bool:
        return len(self.units) > 0

    @cached_property
    def _unit_means(self) -> np.ndarray:
        return _averaging(self.units)

    def standardise(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        lengths = np.clip(lengths, *self.length_range)
        return (x - _design(lengths) @ self.length_coef - self.mean) / self.scale

    @property
    def _by_unit(self) -> bool:
        return self.method == "collapse" and len(self.units) > 0

    def deviation(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[n, unit]: how many clean standard deviations each unit lies past its normal. Collapse:
        signed, toward collapse, a head's families averaged with `units` (what the score takes the
        top-k of); mahalanobis: each feature's absolute z-score."""
        z = self.standardise(x, lengths)
        if self.method != "collapse":
            return np.abs(z)
        collapse = z * self.direction
        collapse = collapse @ self._unit_means if self._by_unit else collapse
        return collapse / self.tail if len(self.tail) else collapse

    def deviation_features(self) -> np.ndarray:
        """Per column of `deviation`, the index of a feature it is made of (a unit's first)."""
        return (self._unit_means > 0).argmax(0) if self._by_unit else np.arange(len(self.scale))

    def score(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.method == "collapse":
            collapse = self.deviation(x, lengths)
            if self.top_k == 1:
                return collapse.max(1)
            return -np.partition(-collapse, self.top_k - 1, axis=1)[:, : self.top_k].mean(1)
        d = self.standardise(x, lengths) @ self.components.T - self.center
        return np.sqrt(np.einsum("nd,de,ne->n", d, self.precision, d))


def _length_bands(scores: np.ndarray, lengths: np.ndarray, target_fpr: float,
                  threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(edges, offsets): content lengths where one band ends and the next begins, each band holding
    about BAND_PROMPTS prompts or more, and how far each band's own (1 - target FPR) quantile of
    `scores` lies above `threshold` (0 where it does not)."""
    n_bands = len(scores) // BAND_PROMPTS
    if n_bands < 2:
        return np.zeros(0), np.zeros(0)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bands + 1)[1:-1]))
    band = np.searchsorted(edges, lengths, side="right")
    offsets = [max(0.0, float(np.quantile(scores[band == b], 1 - target_fpr)) - threshold) if np.any(band == b)
               else 0.0 for b in range(len(edges) + 1)]
    return edges, np.array(offsets)


def _short_band(scores: np.ndarray, lengths: np.ndarray, edge: float, target_fpr: float,
                threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(edges, offsets) of one band of inputs shorter than `edge`, whose bar is the (1 - target
    FPR) quantile of the `scores` of that length where it lies above `threshold`."""
    short = scores[lengths < edge]
    return np.array([edge]), np.array([max(0.0, float(np.quantile(short, 1 - target_fpr)) - threshold), 0.0])


def bands(scores: np.ndarray, lengths: np.ndarray, band_only: np.ndarray, target_fpr: float, threshold: float,
          length_bands: bool) -> tuple[np.ndarray, np.ndarray]:
    """(edges, offsets) of the bars set beside `threshold`: the length bands where asked for, else
    one band of inputs as short as the `band_only` rows (the short variants) where there are any."""
    if length_bands:
        return _length_bands(scores, lengths, target_fpr, threshold)
    if band_only.any():
        return _short_band(scores, lengths, lengths[band_only].max() + 0.5, target_fpr, threshold)
    return np.zeros(0), np.zeros(0)


def _coverage(saved: str) -> tuple[str, ...]:
    """The coverage field of a file: its variant kinds; format 4 wrote 1 (Python code) or 0 (none)."""
    return {"0": (), "1": ("python",)}.get(saved, tuple(s for s in saved.split(",") if s))


@dataclass
class Calibration:
    """Everything needed to score inputs of one model, tied to that model's weights."""

    model_hash: str
    layers: list[int]
    families: list[str]
    target_fpr: float
    threshold: float
    anomaly: AnomalyModel
    clean_scores: np.ndarray  # out-of-fold scores of the calibration prompts, band offsets applied
    n_prompts: int
    coverage: tuple[str, ...] = ()  # the kinds of coverage variants calibrated on (detect/coverage.py)
    # Content-length edges between bands, and per band the offset its scores are lowered by:
    # length bands, or the short band of `short` variants alone. Empty: neither (files before format 6).
    band_edges: np.ndarray = field(default_factory=lambda: np.zeros(0))
    band_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    length_bands: bool = False  # bands over every length were asked for
    # [low, bar] of the answer gate (module docstring); empty: no gate (and files before format 9).
    answer_gate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    version: int = FORMAT_VERSION

    @classmethod
    def fit(cls, features: np.ndarray, lengths: np.ndarray, direction: np.ndarray, *, model_hash: str,
            layers: list[int], families: list[str], method: str = "collapse", target_fpr: float = 0.01,
            n_components: int = 32, length_adjust: bool = False, top_k: int = 1,
            units: np.ndarray | None = None, spread_floor: float = SPREAD_FLOOR, folds: int = 5,
            seed: int = 0, coverage: tuple[str, ...] = (), length_bands: bool = False,
            band_only: np.ndarray | None = None, raise_only: np.ndarray | None = None,
            tail_quantile: float | None = None) -> Calibration:
        """Fits the anomaly model and sets the threshold. Rows marked `band_only` (the short
        variants) are neither fitted on nor counted in the overall threshold: scored by the
        fitted model, they set only the bar of inputs of their length, in the length bands or,
        without them, in one band of inputs as short as they are. Rows marked `raise_only` (the
        code sources on draws of their own) are fitted on and may raise the threshold, never
        lower it: it is the higher of the target quantile with them and without them."""
        if not 0 < target_fpr < 0.5:
            raise InputError(f"target FPR must be in (0, 0.5), got {target_fpr}")
        band_only = np.zeros(len(features), bool) if band_only is None else np.asarray(band_only, bool)
        fitted = ~band_only
        x, n = features[fitted], lengths[fitted]
        if len(x) < 2 * folds:
            raise InputError(f"calibration needs at least {2 * folds} clean prompts, got {len(x)}")
        oof = np.empty(len(x))
        for fit_idx, held_idx in KFold(folds, shuffle=True, random_state=seed).split(x):
            model = AnomalyModel.fit(x[fit_idx], n[fit_idx], direction, method, n_components,
                                     length_adjust, top_k, units, spread_floor, tail_quantile)
            oof[held_idx] = model.score(x[held_idx], n[held_idx])
        threshold = float(np.quantile(oof, 1 - target_fpr))
        if raise_only is not None and np.any(raise_only[fitted]):
            # Many variants scoring low would pull a pooled quantile down and let other inputs through.
            threshold = max(threshold, float(np.quantile(oof[~raise_only[fitted]], 1 - target_fpr)))
        anomaly = AnomalyModel.fit(x, n, direction, method, n_components, length_adjust, top_k, units, spread_floor,
                                   tail_quantile)
        scores = np.empty(len(features))
        scores[fitted] = oof
        scores[band_only] = anomaly.score(features[band_only], lengths[band_only])
        edges, offsets = bands(scores, lengths, band_only, target_fpr, threshold, length_bands)
        cal = cls(model_hash=model_hash, layers=list(layers), families=list(families), target_fpr=target_fpr,
                  threshold=threshold, anomaly=anomaly, clean_scores=scores, n_prompts=len(features),
                  coverage=tuple(coverage), band_edges=edges, band_offsets=offsets, length_bands=length_bands)
        cal.clean_scores = scores - cal.band_offset(lengths)
        return cal

    def setting(self) -> dict:
        """How inputs are scored, for reports: what `headguard calibrate` was given or defaulted to."""
        return {"families": list(self.families), "top_k": self.anomaly.top_k, "per_head": self.anomaly.per_head,
                "length_adjusted": self.anomaly.length_adjusted, "coverage": list(self.coverage),
                "length_bands": self.length_bands, "answer_gate": self.gated, "n_prompts": self.n_prompts}

    @property
    def gated(self) -> bool:
        """Whether inputs in the band below the threshold are judged by their answer too."""
        return len(self.answer_gate) == 2

    def in_gate(self, scores: np.ndarray) -> np.ndarray:
        """Which scores lie in the answer gate's band: past its low bar, not past the threshold (none
        where the bar is infinite: no calibration row lay under the threshold to set it)."""
        if not self.gated or not np.isfinite(self.answer_gate[1]):
            return np.zeros(len(scores), bool)
        return (scores > self.answer_gate[0]) & (scores <= self.threshold)

    def lift(self, scores: np.ndarray, margins: np.ndarray) -> np.ndarray:
        """Scores in the gate's band (`in_gate`) whose answer's margin is past the bar, raised by the
        band's width: over the threshold, in their own order."""
        low, bar = self.answer_gate
        return np.where(margins > bar, scores + (self.threshold - low), scores)

    def band_offset(self, lengths: np.ndarray) -> np.ndarray:
        """What each input's score is lowered by: its length band's offset (0 without bands)."""
        if not len(self.band_offsets):
            return np.zeros(len(lengths))
        return self.band_offsets[np.searchsorted(self.band_edges, lengths, side="right")]

    def score(self, features: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self.anomaly.score(features, lengths) - self.band_offset(lengths)

    def save(self, path: Path) -> None:
        meta = {"format": "headguard-calibration", "version": str(self.version), "model_hash": self.model_hash,
                "method": self.anomaly.method, "top_k": str(self.anomaly.top_k),
                "layers": json.dumps(self.layers), "families": json.dumps(self.families),
                "target_fpr": repr(self.target_fpr), "threshold": repr(self.threshold),
                "n_prompts": str(self.n_prompts), "coverage": ",".join(self.coverage),
                "length_bands": str(int(self.length_bands)), "created": self.created}
        a = self.anomaly
        tensors = {"length_coef": a.length_coef, "mean": a.mean, "scale": a.scale, "direction": a.direction,
                   "components": a.components, "center": a.center, "precision": a.precision,
                   "length_range": a.length_range, "units": a.units, "tail": a.tail, "clean_scores": self.clean_scores,
                   "band_edges": self.band_edges, "band_offsets": self.band_offsets, "answer_gate": self.answer_gate}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(tmp),
                      metadata=meta)

    @classmethod
    def load(cls, path: Path) -> Calibration:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise InputError(f"calibration file {path} does not exist") from None
        except Exception as exc:  # safetensors raises its own error types for foreign or corrupt files
            raise InputError(f"{path} is not a headguard calibration file ({exc})") from None
        if meta.get("format") != "headguard-calibration":
            raise InputError(f"{path} is not a headguard calibration file")
        if int(meta["version"]) > FORMAT_VERSION:
            raise InputError(f"{path} has calibration format {meta['version']}; this headguard reads {FORMAT_VERSION}")
        fields = ("length_coef", "mean", "scale", "direction", "components", "center", "precision")
        # Files before format 3 have no length range (no limit), before format 4 no units, before 8 no tail.
        extra = {k: tensors[k] for k in ("length_range", "units", "tail") if k in tensors}
        anomaly = AnomalyModel(meta["method"], *(tensors[k] for k in fields), top_k=int(meta.get("top_k", "1")),
                               **extra)
        return cls(model_hash=meta["model_hash"], layers=json.loads(meta["layers"]),
                   families=json.loads(meta["families"]), target_fpr=float(meta["target_fpr"]),
                   threshold=float(meta["threshold"]), anomaly=anomaly, clean_scores=tensors["clean_scores"],
                   n_prompts=int(meta["n_prompts"]), coverage=_coverage(meta.get("coverage", "")),
                   # Files before format 6 have no bands, before format 7 any band was a length band, before 9 no gate.
                   **{k: tensors[k] for k in ("band_edges", "band_offsets", "answer_gate") if k in tensors},
                   length_bands=bool(len(tensors.get("band_offsets", ())))
                   and (int(meta["version"]) < 7 or meta.get("length_bands") == "1"),
                   created=meta["created"],
                   version=int(meta["version"]))
