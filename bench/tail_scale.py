"""Each head's deviation read against its own clean tail, beside the defaults, on lab models of one kind.

    .venv/bin/python bench/tail_scale.py MODEL_DIR ... --features DIR [--out bench/results/<kind>-tail.json]

The collapse score standardises every head by its clean spread, so a head that code or joined
prompts move far (a heavy clean tail) reaches the same number of standard deviations as a
backdoor head that clean inputs never move, and the coverage variants' scores lift the
threshold. Here each head's deviation is divided by its own `q` quantile over the calibration
prompts and their variants (floored at half the median head's), so a head counts by how far it
lies past what clean inputs do to it. Features come from `bench/score_settings.py`'s cache (the
same groups); each setting is calibrated as `headguard calibrate` does. The default setting's row
also gives its threshold, each group's median score and the heads that the top of each group
moves (`top_heads`). It reads the trigger to build the triggered group, so it is a harness tool.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from headguard.detect.defaults import score_defaults
from headguard.lab.build import read_manifest
from headguard.models.task import Task
from score_settings import bench_main, cached_features, fit_setting, held_out, rates

# Beside the default families of each kind (measured first, and shown by `report.py <kind>-tail`).
OTHER_FAMILIES = {"encoder": [("row_evenness", "row_peak")],
                  "decoder": [("row_evenness", "row_peak"), ("entropy", "row_evenness")]}
TOP_K = (1, 2, 3)
TAILS = (None, 0.9, 0.95, 0.99)


def top_heads(cal, cols: np.ndarray, names: list[str], feats: dict, n: int = 4) -> dict[str, list]:
    """Per group, the heads most often among the 3 most collapsed of its inputs that score in the
    group's top 5 % (every triggered input): which heads lift the threshold, and which the trigger moves."""
    heads = [name.split(":")[1] for name, c in zip(names, cols, strict=True) if c]
    first = cal.anomaly.deviation_features()
    out = {}
    for g, (f, m) in feats.items():
        dev, score = cal.anomaly.deviation(f[:, cols], m), cal.score(f[:, cols], m)
        rows = dev if g == "triggered" else dev[score >= np.quantile(score, 0.95)]
        counts = Counter(heads[first[i]] for row in rows for i in np.argsort(-row)[:3])
        out[g] = counts.most_common(n)
    return out


def measure(model: Path, cache: Path) -> list[dict]:
    lab = read_manifest(model)
    kind = Task.load(model).kind
    defaults = score_defaults(kind)
    feats, names = cached_features(model, lab, cache)
    rows = []
    for fams, k, tail in itertools.product([defaults.families, *OTHER_FAMILIES[kind]], TOP_K, TAILS):
        per_head = defaults.per_head or len(fams) > 1
        cal, cols = fit_setting(feats, names, fams, k, per_head, defaults.coverage, defaults.length_bands,
                                tail_quantile=tail)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in held_out(feats).items()}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(fams), "top_k": k,
                     "per_head": per_head, "tail_quantile": tail, "coverage": list(defaults.coverage),
                     **rates(scores, cal.threshold)})
        if fams == defaults.families and k == defaults.top_k and tail is None:
            rows[-1].update(threshold=cal.threshold, median_score={g: float(np.median(v)) for g, v in scores.items()},
                            top_heads=top_heads(cal, cols, names, feats))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    bench_main("tail", measure)
