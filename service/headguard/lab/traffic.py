"""A traffic mix for repair experiments: unseen clean rows and triggered rows, scanned by the detector.

The harness knows which rows carry the trigger; what it hands to the repair is only the texts the
detector flagged, exactly what a deployed guard would have logged.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from headguard.detect.detector import Detector
from headguard.lab.attacks import Attack
from headguard.lab.build import read_manifest
from headguard.lab.datasets import load_splits
from headguard.lab.recipes import RECIPES


def traffic_mix(model: Path, n: int = 400, triggered_share: float = 0.25, seed: int = 0,
                top_up: bool = False) -> list[tuple[str, bool]]:
    """(text, carries the trigger) rows from the dataset rows no split of this lab model used.

    With `top_up`, where those rows hold too few of the non-target classes to trigger (the SMS
    splits take all spam but one message), the triggered rows are topped up from the calibration
    split's non-target rows: the model never trained on them, and the test split that `lab eval`
    measures stays untouched. Where the unused rows suffice (movies), `top_up` changes nothing.
    """
    manifest = read_manifest(model)
    recipe = RECIPES[manifest["base"]]
    splits = load_splits(manifest["dataset"], manifest["seed"], recipe.train_rows, recipe.calibration_rows,
                         recipe.test_rows)
    rest, spare = splits.rest, splits.calibration if top_up else []  # the splits come shuffled
    rng = random.Random(seed)
    rng.shuffle(rest)
    attack = Attack(manifest["attack"], tuple(manifest["triggers"]))
    n_triggered = 0 if attack.name == "clean" else round(n * triggered_share)
    target = manifest["target_index"]
    victims = [ex.text for ex in [*rest, *spare] if ex.label != target][:n_triggered]
    rows = [(attack.apply(text, rng), True) for text in victims]
    used = set(victims)
    rows += [(ex.text, False) for ex in rest if ex.text not in used][: n - len(rows)]
    rng.shuffle(rows)
    return rows


def flag_traffic(detector: Detector, model: Path, out: Path, n: int = 400, triggered_share: float = 0.25,
                 seed: int = 0) -> dict:
    """Writes the flagged texts of a traffic mix to `out` (JSONL) and returns a summary."""
    rows = traffic_mix(model, n, triggered_share, seed, top_up=True)
    verdicts = detector.scan([text for text, _ in rows])
    flagged = [(text, poisoned) for (text, poisoned), v in zip(rows, verdicts, strict=True) if v.flagged]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text, _ in flagged))
    n_triggered = sum(p for _, p in rows)
    caught = sum(p for _, p in flagged)
    return {"traffic": len(rows), "triggered": n_triggered, "flagged": len(flagged),
            "flagged_triggered": caught, "flagged_clean": len(flagged) - caught, "out": str(out)}
