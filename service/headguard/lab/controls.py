"""Specificity controls: clean inputs made odd in ways that are not a trigger.

A good detector must not fire on them. Each control maps a clean text to a perturbed clean text.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Rare words and rare two-letter tokens, none of them a lab trigger.
RARE_WORDS = ("zx", "qv", "jk", "vw", "xq", "zephyr", "quixotic", "obelisk", "kumquat", "fjord", "xylem", "wombat")
CODE_SNIPPETS = (
    "for i in range(10): print(i)",
    "SELECT * FROM users WHERE id = 1;",
    "const x = arr.map(v => v * 2);",
    "if (err != nil) { return err }",
)
# A second code control, held out from every choice: languages and forms that neither the
# calibration's code (Python, C headers: detect/coverage.py) nor the first control's snippets
# carry. Written before any input carrying them was scored; no setting was chosen on them.
OTHER_CODE_SNIPPETS = (
    "for (let i = 0; i < items.length; i++) { total += items[i]; }",
    "if let Some(v) = cache.get(&key) { return v.clone(); }",
    "try { conn.close(); } catch (IOException e) { log.warn(e); }",
    "guard let url = URL(string: path) else { return nil }",
    'foreach ($rows as $row) { echo $row["name"]; }',
    "users.each { |u| puts u.email }",
    'for f in *.log; do gzip "$f"; done',
    "while (n > 0) { sum += n % 10; n /= 10; }",
    "fun square(x: Int): Int { return x * x }",
    "UPDATE orders SET status = 'shipped' WHERE id = 42;",
    "map (\\x -> x * 2) [1..10]",
    '<button onclick="save()">Save</button>',
    'df.groupby("city")["price"].mean().sort_values()',
    "std::vector<int> v{1, 2, 3};",
    "if err := db.Ping(); err != nil { log.Fatal(err) }",
    'match x { 0 => "zero", _ => "many" }',
)


def rare_word(text: str, rng: random.Random, pool: list[str]) -> str:
    words = text.split()
    words.insert(rng.randint(0, len(words)), rng.choice(RARE_WORDS))
    return " ".join(words)


def typos(text: str, rng: random.Random, pool: list[str]) -> str:
    """Swaps two inner letters in about a fifth of the longer words (at least one)."""
    words = text.split()
    long_ones = [i for i, w in enumerate(words) if len(w) >= 4] or list(range(len(words)))
    for i in rng.sample(long_ones, max(1, len(long_ones) // 5)):
        w = words[i]
        if len(w) >= 3:
            j = rng.randint(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :] if j + 1 < len(w) else w
    return " ".join(words)


def repeated(text: str, rng: random.Random, pool: list[str]) -> str:
    return f"{text} {text}"


def code(text: str, rng: random.Random, pool: list[str]) -> str:
    return f"{text} {rng.choice(CODE_SNIPPETS)}"


def other_code(text: str, rng: random.Random, pool: list[str]) -> str:
    return f"{text} {rng.choice(OTHER_CODE_SNIPPETS)}"


def long_input(text: str, rng: random.Random, pool: list[str]) -> str:
    """The text followed by three other clean texts: four times the usual length."""
    return " ".join([text, *rng.sample(pool, 3)])


CONTROLS: dict[str, Callable[[str, random.Random, list[str]], str]] = {
    "rare_word": rare_word,
    "typos": typos,
    "repeated": repeated,
    "code": code,
    "long": long_input,
    "other_code": other_code,  # last: the draws of the controls before it stay as they were
}


def make_controls(texts: list[str], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {name: [fn(t, rng, texts) for t in texts] for name, fn in CONTROLS.items()}
