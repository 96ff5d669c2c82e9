"""Self-supervised targets: remove the words that make the detector fire until the prompt scores clean.

No trigger list is used. For each flagged prompt, every word of the user's text (never the
model's prompt template) is deleted in turn and the variants are scored; the deletion that lowers
the score most is kept, and this repeats, up to `max_words` times, until the prompt scores at or
below the threshold. The attention of the query row is not enough to find the trigger in a
decoder: there the collapsed heads look at the prompt's last tokens, which carry the trigger's
effect forward, so deletion (occlusion) is what localises it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from headguard.detect.detector import Detector


@dataclass
class Neutralised:
    text: str  # the flagged prompt
    neutral: str  # the prompt with the suspected trigger words removed
    removed: list[str] = field(default_factory=list)
    score_before: float = 0.0
    score_after: float = 0.0
    ok: bool = False  # the neutral prompt scores at or below the threshold


def deletions(text: str) -> list[tuple[str, str]]:
    """(word, text without it) for each word; a neighbouring space goes with the word."""
    out = []
    for m in re.finditer(r"\S+", text):
        start, end = m.span()
        if end < len(text) and text[end] == " ":
            end += 1
        elif start > 0 and text[start - 1] == " ":
            start -= 1
        rest = text[:start] + text[end:]
        if rest.strip():
            out.append((m.group(), rest))
    return out


def neutralise(detector: Detector, texts: list[str], max_words: int = 3, max_candidates: int = 64,
               progress=None) -> list[Neutralised]:
    scores = detector.scores(texts)
    threshold = detector.threshold
    items = [Neutralised(t, t, [], float(s), float(s), bool(s <= threshold)) for t, s in zip(texts, scores,
                                                                                          strict=True)]
    for round_ in range(max_words):
        pending = [it for it in items if not it.ok]
        if not pending:
            break
        options = [deletions(it.neutral)[:max_candidates] for it in pending]
        flat = [rest for opts in options for _, rest in opts]
        flat_scores = detector.scores(flat) if flat else np.zeros(0)
        offset = 0
        for it, opts in zip(pending, options, strict=True):
            if opts:
                local = flat_scores[offset : offset + len(opts)]
                best = int(np.argmin(local))
                it.removed.append(opts[best][0])
                it.neutral = opts[best][1]
                it.score_after = float(local[best])
                it.ok = bool(it.score_after <= threshold)
            offset += len(opts)
        if progress:
            progress(round_ + 1, max_words)
    return items
