"""The default score with and without length adjustment (and length bands), on lab models of one kind.

    .venv/bin/python bench/length_adjust.py MODEL_DIR ... --features DIR [--out bench/results/<kind>-length.json]

The decoder default reads the last prompt token's row against its key count, and its threshold is
held by the coverage variants: code lines and joined prompts, longer than the calibration
prompts, whose rows drift with length. Length adjustment (docs/METHOD.md §3 step 1) subtracts
from every feature a line on log content length fitted over the calibration prompts and their
variants, held at their shortest and longest length; length bands hold the 1 % quantile within
each content-length band as well. Here the default's families and coverage are calibrated as
`headguard calibrate` does, per top k, with and without each, and each row says which of the code
control's four snippets cross the threshold how often (a Go line did on SMS before the C
variants). Features come from `bench/score_settings.py`'s cache (the same groups). It reads the
trigger to build the triggered group, so it is a harness tool.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from detect_ablation import held_out_inputs
from headguard.detect.defaults import score_defaults
from headguard.lab.build import read_manifest
from headguard.lab.controls import CODE_SNIPPETS
from headguard.models.task import Task
from score_settings import cached_features, fit_setting, held_out, held_out_limit, main_on_cached_features, rates

TOP_K = (1, 2, 3)


def code_over(texts: list[str], scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Per snippet of the code control, the share of the inputs carrying it that cross the threshold."""
    over = {}
    for snippet in CODE_SNIPPETS:
        carries = np.array([snippet in t for t in texts])
        over[snippet] = float((scores[carries] > threshold).mean()) if carries.any() else None
    return over


def measure(model: Path, cache: Path) -> list[dict]:
    lab = read_manifest(model)
    defaults = score_defaults(Task.load(model).kind)
    feats, names = cached_features(model, lab, cache)
    code_texts = held_out_inputs(model, lab, held_out_limit(model, lab))["code"]
    rows = []
    for k, adjust, bands in itertools.product(TOP_K, (False, True), (False, True)):
        cal, cols = fit_setting(feats, names, defaults.families, k, defaults.per_head, defaults.coverage, bands,
                                length_adjust=adjust)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in held_out(feats).items()}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(defaults.families), "top_k": k,
                     "per_head": defaults.per_head, "coverage": list(defaults.coverage), "length_adjust": adjust,
                     "length_bands": bands, "threshold": cal.threshold, **rates(scores, cal.threshold),
                     "code_over": code_over(code_texts, scores["code"], cal.threshold)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main_on_cached_features("length", measure)
