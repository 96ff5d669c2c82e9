"""The contract every input-level defense meets, so the harness can compare them side by side.

A defense sees the suspect model and clean prompts, never the trigger. It turns inputs into
suspicion scores (higher = more likely triggered) and sets its own threshold from clean prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the registry must import without torch: the CLI builds its parser from it
    from headguard.models.classifier import Classifier


class Defense:
    """Base class: subclasses implement `_fit` and `_score`, and count their forward passes."""

    name = "defense"

    def __init__(self) -> None:
        self.forward_passes = 0  # sequences pushed through any model by score() so far

    def setting(self) -> dict | None:
        """How the calibrated defense scores, for the report (None: nothing to choose)."""
        return None

    def calibrate(self, clf: Classifier, clean: list[str], target_fpr: float) -> float:
        """Fits on clean prompts and returns the threshold that flags `target_fpr` of them."""
        self._fit(clf, clean)
        scores = self.score(clean)
        self.forward_passes = 0
        return float(np.quantile(scores, 1 - target_fpr))

    def score(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._score(texts), dtype=np.float64)

    def _fit(self, clf: Classifier, clean: list[str]) -> None:
        raise NotImplementedError

    def _score(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def _onion(cache: Path, device: str) -> Defense:
    from headguard.lab.onion import Onion

    return Onion(cache, device)


def _strip(cache: Path, device: str) -> Defense:
    from headguard.lab.strip import Strip

    return Strip()


def _headguard(cache: Path, device: str, **scoring) -> Defense:
    return HeadguardDefense(**scoring)


class HeadguardDefense(Defense):
    """Attention-head anomaly scoring (headguard.detect): one forward pass per input, and a second
    for the few whose answer the gate reads."""

    name = "headguard"

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = options
        self.detector = None

    def calibrate(self, clf: Classifier, clean: list[str], target_fpr: float) -> float:
        from headguard.detect.detector import Detector, calibrate

        calibration = calibrate(clf, clean, target_fpr=target_fpr, **self.options)
        self.detector = Detector(clf, calibration, model_hash=calibration.model_hash)
        return calibration.threshold  # set out-of-fold, not on the prompts the model was fitted on

    def setting(self) -> dict | None:
        return self.detector.calibration.setting()

    def _score(self, texts: list[str]) -> np.ndarray:
        read = self.detector.answers_read
        scores = self.detector.scores(texts)
        # One pass per input, and one more for each whose answer the gate read.
        self.forward_passes += len(texts) + self.detector.answers_read - read
        return scores


# "none" measures the model alone. Each factory takes (cache folder, device); headguard's also
# its scoring settings.
DEFENSES: dict[str, Callable[..., Defense] | None] = {
    "none": None, "headguard": _headguard, "onion": _onion, "strip": _strip,
}
