"""The detector's measured defaults, by where the query row is read (docs/METHOD.md §5).

An encoder reads the [CLS] row: its backdoor heads leave the [CLS]/[SEP] sinks to pile onto the
trigger, which the entropy of the whole row (sinks included) shows best, and a few heads carry it
(MiniLM: three heads of one layer), so the single most collapsed head scores. A decoder reads the
last prompt token: how much of its row the first-token sink takes moves with length and content
(code, long inputs), so the entropy over content keys only is read, and a LoRA backdoor spreads
over many heads, so the mean of the three most collapsed heads scores, which one odd head on a
clean input cannot reach alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreDefaults:
    families: tuple[str, ...]
    top_k: int  # heads averaged into the collapse score
    length_adjust: bool  # features regressed on log input length first


DEFAULTS = {
    "encoder": ScoreDefaults(families=("row_entropy",), top_k=1, length_adjust=True),
    "decoder": ScoreDefaults(families=("entropy",), top_k=3, length_adjust=False),
}


def score_defaults(kind: str) -> ScoreDefaults:
    return DEFAULTS[kind]
