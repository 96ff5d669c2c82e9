"""A bounded, persisted log of flagged prompts: what repair jobs learn from.

Entries are appended to a JSONL file as they arrive (nothing is lost on a crash) and the file is
compacted to the newest `capacity` entries once it holds twice that many.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from headguard.fsutil import atomic_file

log = logging.getLogger("headguard.flagged")
_PII = [
    (re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"), "<email>"),
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"\d{6,}"), "<number>"),
]


def redact_pii(text: str) -> str:
    for pattern, placeholder in _PII:
        text = pattern.sub(placeholder, text)
    return text


class FlaggedLog:
    def __init__(self, path: Path, capacity: int = 10_000, redact: str = "none"):
        self.path = Path(path)
        self.capacity = capacity
        self.redact = redact
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._entries: deque[dict] = deque(self._read(), maxlen=capacity)
        self._lines_on_disk = len(self._entries)

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        entries = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:  # a torn last line after a crash: skip it
                    continue
        return entries[-self.capacity :]

    def add(self, text: str, score: float, decision: str, route: str) -> dict:
        entry = {"id": uuid.uuid4().hex, "time": time.time(), "route": route, "decision": decision,
                 "score": round(score, 4), "text": redact_pii(text) if self.redact == "pii" else text}
        with self._lock:
            self._entries.append(entry)
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._lines_on_disk += 1
                if self._lines_on_disk >= 2 * self.capacity:
                    self._compact()
            except OSError as exc:  # a full disk must not fail the request; the entry stays in memory
                log.error("could not persist a flagged prompt to %s: %s", self.path, exc)
        return entry

    def _compact(self) -> None:
        with atomic_file(self.path) as tmp, tmp.open("w", encoding="utf-8") as f:
            for entry in self._entries:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._lines_on_disk = len(self._entries)

    def recent(self, limit: int | None = None) -> list[dict]:
        with self._lock:
            entries = list(self._entries)
        return entries[-limit:] if limit else entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> int:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._compact()
        return n
