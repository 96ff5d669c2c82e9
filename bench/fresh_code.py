"""A third code set, held out from every choice, to judge a code source chosen on the other two.

The lab's code controls (headguard/lab/controls.py) have both been looked at when coverage sources
were tried: a source adopted because it holds `other_code` would be judged on the set that chose
it. These snippets were written before any input carrying them was scored, in languages and forms
that neither control nor any coverage source carries (configuration and markup, shell pipelines,
query and data languages, scripting languages); `fresh_code_inputs` appends one to each held-out
clean text, as the controls do. Bench only: it settles whether a coverage source generalises.
"""

from __future__ import annotations

import random

FRESH_CODE_SNIPPETS = (
    "my @sorted = sort { $a <=> $b } @nums;",
    "for k, v in pairs(config) do print(k, v) end",
    "fit <- lm(price ~ area, data = homes)",
    "Enum.map(list, fn x -> x * 2 end)",
    "Get-ChildItem *.txt | Remove-Item -Force",
    '{"name": "test", "retries": 3, "debug": false}',
    ".card { margin: 0 auto; padding: 8px; }",
    "RUN apt-get update && apt-get install -y curl",
    "var names = people.Where(p => p.Age > 30).ToList();",
    "val total = prices.filter(_ > 10).sum",
    "interface User { id: number; name: string; }",
    "sed -i 's/foo/bar/g' config.ini",
    "async with session.get(url) as resp: data = await resp.json()",
    'git commit -am "fix typo" && git push origin main',
    'resource "aws_s3_bucket" "logs" { bucket = "app-logs" }',
    'ports: ["8080:80", "8443:443"]',
)
SEED = 7  # the draw of snippets over the clean texts


def fresh_code_inputs(clean: list[str]) -> list[str]:
    """Each clean text with one fresh snippet appended."""
    rng = random.Random(SEED)
    return [f"{text} {rng.choice(FRESH_CODE_SNIPPETS)}" for text in clean]
