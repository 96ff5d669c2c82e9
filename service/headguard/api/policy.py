"""From a score to a decision: allow, route (to a safer model) or reject.

Thresholds are set as clean false-positive rates and read off the calibration's out-of-fold clean
scores, so an operator says "reject at 1 % FPR, route at 5 %" rather than picking raw scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from headguard.detect.calibration import Calibration

ALLOW, ROUTE, REJECT = "allow", "route", "reject"
SEVERITY = {ALLOW: 0, ROUTE: 1, REJECT: 2}


@dataclass(frozen=True)
class Policy:
    reject_threshold: float
    route_threshold: float  # == reject_threshold when there is no route band
    enforce: bool = True

    @classmethod
    def from_calibration(cls, cal: Calibration, reject_fpr: float | None = None, route_fpr: float | None = None,
                         enforce: bool = True) -> Policy:
        reject = cal.threshold if reject_fpr is None else _threshold_at(cal.clean_scores, reject_fpr)
        route = reject if route_fpr is None else min(reject, _threshold_at(cal.clean_scores, route_fpr))
        return cls(reject_threshold=reject, route_threshold=route, enforce=enforce)

    def decide(self, score: float) -> str:
        if score > self.reject_threshold:
            return REJECT
        if score > self.route_threshold:
            return ROUTE
        return ALLOW


def _threshold_at(clean_scores: np.ndarray, fpr: float) -> float:
    return float(np.quantile(clean_scores, 1 - fpr))


def most_severe(decisions: list[str]) -> str:
    return max(decisions, key=SEVERITY.__getitem__, default=ALLOW)
