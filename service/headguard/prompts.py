"""Reading prompt files: JSONL with one prompt per line, as {"text": ...} (or "prompt"/"input") or a string."""

from __future__ import annotations

import json
from pathlib import Path

from headguard.errors import InputError

TEXT_KEYS = ("text", "prompt", "input")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be scored, as the end of a sentence, or None.

    JSON escapes and undecodable command-line bytes both yield lone surrogates, which no tokenizer
    takes: refused as input, they cannot pass as a scoring fault (and so through a fail-open guard).
    """
    if not text.strip():
        return "is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"is not valid Unicode text: a lone surrogate at character {exc.start} "
                "(a byte that is not UTF-8, or an unpaired \\ud800-\\udfff escape)")
    return None


def read_prompts(path: Path) -> list[str]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not a JSON line") from None
        if isinstance(row, dict):
            row = next((row[k] for k in TEXT_KEYS if k in row), None)
        text = row
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}:{number}: expected a non-empty string or an object with a 'text' field")
        if problem := text_problem(text):
            raise InputError(f"{path}:{number}: the prompt {problem}")
        prompts.append(text)
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts
