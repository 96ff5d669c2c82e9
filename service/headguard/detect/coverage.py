"""Calibration coverage: longer and code-bearing variants of the clean prompts.

A threshold set on one domain's short clean prompts knows nothing of inputs unlike all of them:
a text message with a line of code in it, or several messages pasted together, lands in the
tail of a score fitted on single messages. Traffic carries both, so the detector calibrates on
its prompts plus variants of them that do: per code source, a quarter as many again with a line
of that source appended, and a quarter as many again of two to four prompts joined
(docs/METHOD.md §3). The code comes with the interpreter, so the variants need no lab data:
`python` is lines of Python's own standard library, `c` lines of the C headers CPython installs
beside it (brace-and-semicolon syntax, which a decoder's heads read unlike Python's).
"""

from __future__ import annotations

import importlib.util
import logging
import random
import sysconfig
from functools import cache
from pathlib import Path

SHARE = 0.25  # each kind of variant, as a share of the clean prompts
SOURCE_MODULES = ("argparse", "textwrap", "shlex", "heapq", "bisect", "fractions", "json.decoder", "string")
CODE_SOURCES = ("python", "c")

log = logging.getLogger(__name__)


def _statements(text: str, skip_first: str, marks: str) -> list[str]:
    """Statement-like lines: 20–70 characters, not starting with a comment or string mark,
    holding one of `marks`."""
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if 20 <= len(s) <= 70 and s[0] not in skip_first and any(c in s for c in marks):
            lines.append(s)
    return lines


@cache
def _python_lines() -> tuple[str, ...]:
    lines = []
    for name in SOURCE_MODULES:
        lines += _statements(Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8"), "#'\"", "=(:[")
    return tuple(lines)


@cache
def _c_lines() -> tuple[str, ...]:
    include = Path(sysconfig.get_paths()["include"])
    lines = []
    for header in sorted(include.rglob("*.h")):
        text = header.read_text(encoding="utf-8", errors="replace")
        lines += [s for s in _statements(text, "#/*", "=(;{") if not s.endswith("\\")]  # not macro bodies
    if not lines:
        # A Python without its development headers (Debian's python3 without python3-dev):
        # the variants fall back on Python code, and the calibration says which sources it used.
        log.warning("no C headers under %s: coverage variants use Python code only", include)
    return tuple(lines)


def code_lines(source: str = "python") -> tuple[str, ...]:
    """The lines a code variant appends, of one source in CODE_SOURCES."""
    if source not in CODE_SOURCES:
        raise ValueError(f"unknown code source {source!r}; choose from {', '.join(CODE_SOURCES)}")
    return _python_lines() if source == "python" else _c_lines()


def available_sources(sources: tuple[str, ...]) -> tuple[str, ...]:
    """The code sources of `sources` that have lines on this interpreter."""
    return tuple(s for s in sources if code_lines(s))


def coverage_prompts(prompts: list[str], seed: int = 0, code: tuple[str, ...] = ("python",)) -> list[str]:
    """The variants to calibrate on beside `prompts` (none for fewer than 4 prompts): a share of
    code variants per source of `code` that has lines here, then a share of joined prompts."""
    if len(prompts) < 4:
        return []
    rng = random.Random(seed)
    n = max(1, int(SHARE * len(prompts)))
    variants = []
    for source in available_sources(code):
        lines = code_lines(source)
        variants += [f"{text} {rng.choice(lines)}" for text in rng.sample(prompts, n)]
    return variants + [" ".join(rng.sample(prompts, rng.randint(2, 4))) for _ in range(n)]
