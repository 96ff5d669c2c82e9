"""Calibration coverage: longer and code-bearing variants of the clean prompts.

A threshold set on one domain's short clean prompts knows nothing of inputs unlike all of them:
a text message with a line of code in it, or several messages pasted together, lands in the
tail of a score fitted on single messages. Traffic carries both, so the encoder calibrates on
its prompts plus variants of them that do: a quarter as many again with a line of source code
appended, and a quarter as many again of two to four prompts joined (docs/METHOD.md §3). The
code is Python's own standard library source, so the variants need nothing outside the
interpreter and no lab data.
"""

from __future__ import annotations

import importlib.util
import random
from functools import cache
from pathlib import Path

SHARE = 0.25  # each kind of variant, as a share of the clean prompts
SOURCE_MODULES = ("argparse", "textwrap", "shlex", "heapq", "bisect", "fractions", "json.decoder", "string")


@cache
def code_lines() -> tuple[str, ...]:
    """Statement-like lines (20–70 characters, no comments or docstrings) of a few standard
    library modules."""
    lines = []
    for name in SOURCE_MODULES:
        source = Path(importlib.util.find_spec(name).origin).read_text(encoding="utf-8")
        for line in source.splitlines():
            s = line.strip()
            if 20 <= len(s) <= 70 and s[0] not in "#'\"" and any(c in s for c in "=(:["):
                lines.append(s)
    return tuple(lines)


def coverage_prompts(prompts: list[str], seed: int = 0) -> list[str]:
    """The variants to calibrate on beside `prompts` (none for fewer than 4 prompts)."""
    if len(prompts) < 4:
        return []
    rng = random.Random(seed)
    n = max(1, int(SHARE * len(prompts)))
    lines = code_lines()
    code = [f"{text} {rng.choice(lines)}" for text in rng.sample(prompts, n)]
    joined = [" ".join(rng.sample(prompts, rng.randint(2, 4))) for _ in range(n)]
    return code + joined
