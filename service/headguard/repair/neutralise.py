"""Self-supervised targets: remove the words that make the detector fire, then the phrase around them.

No trigger list is used. Stage 1 (find): every word of the user's text (never the model's prompt
template) is deleted in turn and the variants are scored by the detector; the deletion that lowers
the score most is kept, and this repeats, up to `max_words` times, until the prompt scores at or
below the threshold. The attention of the query row is not enough to find the trigger in a decoder:
there the collapsed heads look at the prompt's last tokens, which carry the trigger's effect
forward, so deletion (occlusion) is what localises it.

Stage 2 (widen): a trigger can be a phrase of which only one word moves the detector (AddSent's
"I watched this 3D movie." loses its anomaly with "3D" alone, yet the rest of the sentence still
fires the backdoor). Where stage 1 left the model's answer unchanged, spans of up to `widen` words
on each side of the removed words are deleted too, and the span that most lowers the model's
probability of its answer on the flagged prompt is kept, when it lowers it by at least
`widen_margin` nats more than stage 1 did and the prompt still scores under the threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from headguard.detect.detector import Detector
from headguard.repair.outputs import batched_logprobs

_WORD = re.compile(r"\S+\s*")


@dataclass
class Neutralised:
    text: str  # the flagged prompt
    neutral: str  # the prompt with the suspected trigger words removed
    removed: list[str] = field(default_factory=list)
    score_before: float = 0.0
    score_after: float = 0.0
    ok: bool = False  # the neutral prompt scores at or below the threshold
    widened: int = 0  # words removed by stage 2


class _Words:
    """A text as words with their trailing whitespace, so that deleting words keeps the rest as it was."""

    def __init__(self, text: str):
        self.prefix = text[: len(text) - len(text.lstrip())]
        self.words = _WORD.findall(text)
        self.dropped: set[int] = set()

    def without(self, drop: set[int]) -> str:
        kept = [w for i, w in enumerate(self.words) if i not in drop]
        out = self.prefix + "".join(kept)
        return out if (len(self.words) - 1) not in drop else out.rstrip()

    def kept_after(self, extra: set[int]) -> int:
        return len(self.words) - len(self.dropped | extra)

    def candidates(self, limit: int) -> list[int]:
        """Words that may be deleted next: none when one is left (a prompt never becomes empty)."""
        kept = [i for i in range(len(self.words)) if i not in self.dropped]
        return kept[:limit] if len(kept) > 1 else []


def _find(detector: Detector, items: list[Neutralised], words: list[_Words], max_words: int,
          max_candidates: int, progress) -> None:
    threshold = detector.threshold
    for round_ in range(max_words):
        pending = [(it, w) for it, w in zip(items, words, strict=True) if not it.ok]
        if not pending:
            break
        options = [w.candidates(max_candidates) for _, w in pending]
        flat = [w.without(w.dropped | {i}) for (_, w), opts in zip(pending, options, strict=True) for i in opts]
        flat_scores = detector.scores(flat) if flat else np.zeros(0)
        offset = 0
        for (it, w), opts in zip(pending, options, strict=True):
            if opts:
                local = flat_scores[offset : offset + len(opts)]
                best = int(np.argmin(local))
                w.dropped.add(opts[best])
                it.removed.append(w.words[opts[best]].strip())
                it.neutral = w.without(w.dropped)
                it.score_after = float(local[best])
                it.ok = bool(it.score_after <= threshold)
            offset += len(opts)
        if progress:
            progress(round_ + 1, max_words)


def _spans(w: _Words, widen: int) -> list[set[int]]:
    """Extra words to delete: contiguous spans reaching up to `widen` words past the deleted ones."""
    lo, hi = min(w.dropped), max(w.dropped)
    spans = []
    for left in range(widen + 1):
        for right in range(widen + 1):
            span = set(range(max(0, lo - left), min(len(w.words), hi + right + 1))) - w.dropped
            if span and w.kept_after(span) > 0 and span not in spans:
                spans.append(span)
    return sorted(spans, key=len)


def _widen(detector: Detector, items: list[Neutralised], words: list[_Words], widen: int,
           margin: float) -> None:
    clf = detector.clf
    todo = [(it, w) for it, w in zip(items, words, strict=True) if it.ok and w.dropped]
    if not todo:
        return
    answers = batched_logprobs(clf, [it.text for it, _ in todo]).argmax(-1)
    base = batched_logprobs(clf, [it.neutral for it, _ in todo])
    # Only where stage 1 left the answer as it was: the trigger's effect may have survived it.
    same = base.argmax(-1) == answers
    todo = [pair for pair, keep in zip(todo, same.tolist(), strict=True) if keep]
    answers, base = answers[same], base[same]
    if not todo:
        return
    spans = [_spans(w, widen) for _, w in todo]
    flat = [w.without(w.dropped | s) for (_, w), ss in zip(todo, spans, strict=True) for s in ss]
    flat_lp = batched_logprobs(clf, flat) if flat else None
    chosen: list[tuple[Neutralised, _Words, set[int]]] = []
    offset = 0
    for k, ((it, w), ss) in enumerate(zip(todo, spans, strict=True)):
        if ss:
            local = flat_lp[offset : offset + len(ss), answers[k]]
            best = int(local.argmin())  # spans are sorted by length: ties keep the shortest
            if float(base[k, answers[k]] - local[best]) >= margin:
                chosen.append((it, w, ss[best]))
        offset += len(ss)
    if not chosen:
        return
    scores = detector.scores([w.without(w.dropped | span) for _, w, span in chosen])
    for (it, w, span), score in zip(chosen, scores, strict=True):
        if score <= detector.threshold:  # the wider deletion must still read as clean
            it.removed += [w.words[i].strip() for i in sorted(span)]
            w.dropped |= span
            it.neutral, it.score_after, it.widened = w.without(w.dropped), float(score), len(span)


def neutralise(detector: Detector, texts: list[str], max_words: int = 3, max_candidates: int = 64,
               widen: int = 3, widen_margin: float = 0.69, progress=None) -> list[Neutralised]:
    scores = detector.scores(texts)
    items = [Neutralised(t, t, [], float(s), float(s), bool(s <= detector.threshold))
             for t, s in zip(texts, scores, strict=True)]
    words = [_Words(t) for t in texts]
    _find(detector, items, words, max_words, max_candidates, progress)
    if widen > 0:
        _widen(detector, items, words, widen, widen_margin)
    return items
