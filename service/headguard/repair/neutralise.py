"""Self-supervised targets: strip the words the collapsed heads attend to until the prompt scores clean.

No trigger list is used. The detector's explanation names the tokens its most anomalous heads
attend to; the word holding the heaviest one is removed (from the user's text only, never from the
model's prompt template) and the prompt is scored again, up to `max_words` times.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from headguard.detect.detector import Detector


@dataclass
class Neutralised:
    text: str  # the flagged prompt
    neutral: str  # the prompt with the suspected trigger words removed
    removed: list[str] = field(default_factory=list)
    score_before: float = 0.0
    score_after: float = 0.0
    ok: bool = False  # the neutral prompt scores at or below the threshold


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def suspected_word(detector: Detector, text: str, explanation: dict) -> tuple[int, int] | None:
    """The character span, within `text`, of the word holding the heaviest suspected token."""
    clf = detector.clf
    prompt = clf.task.render(text)
    offset = clf.task.template.index("{text}") if clf.task.kind == "decoder" else 0
    spans = _word_spans(text)
    starts = [s for s, _ in spans]
    encoding = clf.tokenizer(prompt, return_offsets_mapping=True)
    offsets = encoding["offset_mapping"]
    for token in explanation["suspected_tokens"]:
        pos = token["position"]
        if not 0 <= pos < len(offsets):
            continue
        start, end = offsets[pos]
        piece = prompt[start:end]
        start += len(piece) - len(piece.lstrip())  # byte-level tokens carry their leading space
        char = start - offset
        if end <= start or not 0 <= char < len(text):
            continue  # a template or special token: never removed
        i = bisect.bisect_right(starts, char) - 1
        if i >= 0 and spans[i][0] <= char < spans[i][1]:
            return spans[i]
    return None


def _remove(text: str, span: tuple[int, int]) -> str:
    start, end = span
    if end < len(text) and text[end] == " ":
        end += 1
    elif start > 0 and text[start - 1] == " ":
        start -= 1
    return text[:start] + text[end:]


def neutralise(detector: Detector, texts: list[str], max_words: int = 3, batch_size: int = 16) -> list[Neutralised]:
    verdicts = detector.scan(texts, batch_size)
    items = [Neutralised(t, t, [], v.score, v.score, v.score <= detector.threshold) for t, v in zip(texts, verdicts,
                                                                                                        strict=True)]
    explanations = [v.explanation for v in verdicts]
    pending = [i for i, item in enumerate(items) if not item.ok]
    for _ in range(max_words):
        changed = []
        for i in pending:
            span = suspected_word(detector, items[i].neutral, explanations[i])
            if span is None:
                continue
            items[i].removed.append(items[i].neutral[span[0] : span[1]])
            items[i].neutral = _remove(items[i].neutral, span)
            if items[i].neutral.strip():
                changed.append(i)
        if not changed:
            break
        for i, verdict in zip(changed, detector.scan([items[i].neutral for i in changed], batch_size), strict=True):
            items[i].score_after = verdict.score
            items[i].ok = verdict.score <= detector.threshold
            explanations[i] = verdict.explanation
        pending = [i for i in changed if not items[i].ok]
    return items
