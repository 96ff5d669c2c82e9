"""Calibration coverage: longer, code-bearing, repeated and shorter variants of the clean prompts.

A threshold set on one domain's clean prompts knows nothing of inputs unlike all of them: a
text message with a line of code in it, several messages pasted together, a message pasted
twice, or a reply of a few words lands in the tail of a score fitted on the prompts alone.
Traffic carries all of these, so the detector calibrates on its prompts plus variants of them
that do: per code source, a quarter as many again with a line of that source appended, and a
quarter as many again of two to four prompts joined (`coverage_prompts`); with `repeat`, a
quarter as many again with a run of their own words said twice (`repeat_prompts`); with
`short`, a quarter as many again of the first three to eight words of a prompt
(`short_prompts`), which set the bar only for inputs as short as they are (docs/METHOD.md §3).
The code comes with the interpreter, so the variants need no lab data: `python` is lines of
Python's own standard library, `c` lines of the C headers CPython installs beside it
(brace-and-semicolon syntax, which a decoder's heads read unlike Python's), and `c_blocks` the
same headers' short `if`/`for`/`while` blocks folded onto one line, whole statements with their
braces closed, as code pasted into a chat message often is, and `shell` lines of the shell
scripts `venv` installs (bash, fish, csh, PowerShell: `$` variables, pipes, `test` and `[ ]`);
the last two measured, not in a default (docs/METHOD.md §5). `python` and `c` share one
seeded draw with the joined prompts (the defaults were calibrated on it); every other source
draws on its own (`code_prompts`), so adding one changes no other variant.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import re
import sysconfig
from collections.abc import Iterator
from functools import cache
from pathlib import Path

SHARE = 0.25  # each kind of variant, as a share of the clean prompts
SOURCE_MODULES = ("argparse", "textwrap", "shlex", "heapq", "bisect", "fractions", "json.decoder", "string")
CODE_SOURCES = ("python", "c", "c_blocks", "shell")
SHARED_DRAW = ("python", "c")  # the code sources drawn with the joined prompts, on one seeded draw
OWN_DRAW = tuple(s for s in CODE_SOURCES if s not in SHARED_DRAW)  # each on a seeded draw of its own
SHORT = "short"  # the variant kind of a prompt's first few words
REPEAT = "repeat"  # the variant kind of a prompt with a run of its own words said twice
VARIANT_KINDS = (*CODE_SOURCES, SHORT, REPEAT)
SHORT_WORDS = (3, 8)  # a short variant keeps this many of a prompt's first words, at most all but one

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


def _c_headers() -> Iterator[str]:
    """The text of every C header CPython installs (none without its development headers)."""
    for header in sorted(Path(sysconfig.get_paths()["include"]).rglob("*.h")):
        yield header.read_text(encoding="utf-8", errors="replace")


@cache
def _c_lines() -> tuple[str, ...]:
    lines = []
    for text in _c_headers():
        lines += [s for s in _statements(text, "#/*", "=(;{") if not s.endswith("\\")]  # not macro bodies
    if not lines:
        # A Python without its development headers (Debian's python3 without python3-dev):
        # the variants fall back on Python code, and the calibration says which sources it used.
        log.warning("no C headers under %s: coverage variants use Python code only",
                    sysconfig.get_paths()["include"])
    return tuple(lines)


BLOCK_HEAD = re.compile(r"(if|else if|for|while) ?\(.*\) ?\{")  # a header line that opens a block


@cache
def _c_block_lines() -> tuple[str, ...]:
    """The C headers' blocks of one or two statements, `if (...) {`, the statements and `}` on
    lines of their own, folded onto one line: `if (b == NULL) { return -1; }`."""
    blocks = []
    for text in _c_headers():
        lines = [s.strip() for s in text.splitlines()]
        for i, head in enumerate(lines):
            if not BLOCK_HEAD.fullmatch(head) or "..." in head:
                continue
            end = next((j for j in range(i + 1, min(i + 4, len(lines))) if lines[j] == "}"), None)
            body = lines[i + 1:end] if end else []
            if body and all(b.endswith(";") and "{" not in b for b in body):
                blocks.append(" ".join([head, *body, "}"]))
    return tuple(blocks)


@cache
def _shell_lines() -> tuple[str, ...]:
    """Statement lines of the activation scripts `venv` installs: bash, fish, csh and PowerShell
    (none where the interpreter ships without `venv`)."""
    spec = importlib.util.find_spec("venv")
    if spec is None:
        return ()
    lines = []
    for script in sorted(p for p in (Path(spec.origin).parent / "scripts").rglob("*") if p.is_file()):
        text = script.read_text(encoding="utf-8", errors="replace")
        lines += [s for s in _statements(text, "#<", "=($;{|[") if "://" not in s]  # not the help links
    return tuple(dict.fromkeys(lines))  # a line two scripts share, once


def code_lines(source: str = "python") -> tuple[str, ...]:
    """The lines a code variant appends, of one source in CODE_SOURCES."""
    if source not in CODE_SOURCES:
        raise ValueError(f"unknown code source {source!r}; choose from {', '.join(CODE_SOURCES)}")
    return {"python": _python_lines, "c": _c_lines, "c_blocks": _c_block_lines, "shell": _shell_lines}[source]()


def available_sources(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The variant kinds of `kinds` this interpreter can make: `short`, `repeat`, and the code
    sources that have lines here."""
    unknown = [k for k in kinds if k not in VARIANT_KINDS]
    if unknown:
        raise ValueError(f"unknown coverage variant {unknown[0]!r}; choose from {', '.join(VARIANT_KINDS)}")
    return tuple(k for k in kinds if k not in CODE_SOURCES or code_lines(k))


def _share_of(prompts: list[str]) -> int:
    """How many variants of one kind: SHARE of the prompts, at least one."""
    return max(1, int(SHARE * len(prompts)))


def _with_code(rng: random.Random, prompts: list[str], lines: tuple[str, ...]) -> list[str]:
    """A share of the prompts, drawn with `rng`, each with a line of `lines` appended."""
    return [f"{text} {rng.choice(lines)}" for text in rng.sample(prompts, _share_of(prompts))]


def short_prompts(prompts: list[str], seed: int = 0) -> list[str]:
    """A share of the prompts cut to their first few words (SHORT_WORDS), drawn from those that
    have more (none for fewer than 4 prompts)."""
    lo, hi = SHORT_WORDS
    cuttable = [p.split() for p in prompts if len(p.split()) > lo]
    if len(prompts) < 4 or not cuttable:
        return []
    rng = random.Random(seed)
    return [" ".join(words[:rng.randint(lo, min(hi, len(words) - 1))])
            for words in rng.choices(cuttable, k=_share_of(prompts))]


def repeat_prompts(prompts: list[str], seed: int = 0) -> list[str]:
    """A share of the prompts with a run of at least half their words said again right after
    itself (the whole prompt twice among them): pasted twice, quoted back, stuttered. Their own
    seeded draw, so adding them changes no other variant."""
    worded = [p.split() for p in prompts if p.split()]
    if len(prompts) < 4 or not worded:
        return []
    rng = random.Random(seed)
    variants = []
    for words in rng.choices(worded, k=_share_of(prompts)):
        length = rng.randint((len(words) + 1) // 2, len(words))
        start = rng.randint(0, len(words) - length)
        end = start + length
        variants.append(" ".join(words[:end] + words[start:end] + words[end:]))
    return variants


def code_prompts(prompts: list[str], source: str, seed: int = 0) -> list[str]:
    """A share of the prompts with a line of `source` appended, on a seeded draw of the source's
    own (none for fewer than 4 prompts or a source with no lines here)."""
    lines = code_lines(source)
    if len(prompts) < 4 or not lines:
        return []
    rng = random.Random(f"{seed}:{source}")  # a string seed hashes the same in every process
    return _with_code(rng, prompts, lines)


def coverage_prompts(prompts: list[str], seed: int = 0, kinds: tuple[str, ...] = ("python",)) -> list[str]:
    """The longer variants to calibrate on beside `prompts` (none for fewer than 4 prompts): a
    share of code variants per code source of `kinds` that has lines here, `python` and `c`
    first, then a share of joined prompts (both on one draw), then the other code sources'
    `code_prompts`, then with `repeat` the `repeat_prompts`. `short` among `kinds` adds nothing
    here: its variants are `short_prompts`."""
    kinds = available_sources(kinds)
    if len(prompts) < 4:
        return []
    rng = random.Random(seed)
    variants = [v for k in kinds if k in SHARED_DRAW for v in _with_code(rng, prompts, code_lines(k))]
    joined = [" ".join(rng.sample(prompts, rng.randint(2, 4))) for _ in range(_share_of(prompts))]
    own = [v for k in kinds if k in OWN_DRAW for v in code_prompts(prompts, k, seed)]
    return variants + joined + own + (repeat_prompts(prompts, seed) if REPEAT in kinds else [])
