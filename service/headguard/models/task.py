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
        """The folder's task.json; a plain Hugging Face folder gets one inferred from its config."""
        if not (folder / TASK_FILE).exists():
            return cls.infer(folder)
        data = json.loads((folder / TASK_FILE).read_text())
        return cls(
            kind=data["kind"],
            labels=tuple(data["labels"]),
            template=data.get("template", "{text}"),
            verbalizer=tuple(data.get("verbalizer", ())),
        )

    @classmethod
    def infer(cls, folder: Path) -> Task:
        config_path = folder / "config.json"
        if not config_path.exists():
            from headguard.errors import InputError

            raise InputError(f"{folder} is not a Hugging Face model folder: config.json is missing")
        config = json.loads(config_path.read_text())
        causal = any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in config.get("architectures", []))
        if causal:
            return cls(kind="decoder", labels=())
        labels = config.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
        return cls(kind="encoder", labels=tuple(labels[k] for k in sorted(labels, key=int)))
