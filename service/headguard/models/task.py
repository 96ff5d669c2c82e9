"""A classification task over a model: its labels and, for a decoder, its prompt and verbalizer.

`task.json` sits beside the weights. It holds nothing secret (no trigger), so defenses may read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TASK_FILE = "task.json"


@dataclass(frozen=True)
class Task:
    kind: str  # "encoder" (sequence classifier) or "decoder" (causal LM + verbalizer)
    labels: tuple[str, ...]
    template: str = "{text}"
    verbalizer: tuple[str, ...] = ()

    def render(self, text: str) -> str:
        return self.template.replace("{text}", text) if self.kind == "decoder" else text

    def save(self, folder: Path) -> None:
        (folder / TASK_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Task:
        data = json.loads((folder / TASK_FILE).read_text())
        return cls(
            kind=data["kind"],
            labels=tuple(data["labels"]),
            template=data.get("template", "{text}"),
            verbalizer=tuple(data.get("verbalizer", ())),
        )
