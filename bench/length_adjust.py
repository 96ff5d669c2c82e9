"""The default score with and without length adjustment (and length bands), on lab models of one kind.

    .venv/bin/python bench/length_adjust.py MODEL_DIR ... --features DIR [--out bench/results/<kind>-length.json]

The decoder default reads the last prompt token's row against its key count, and its threshold is
held by the coverage variants: code lines and joined prompts, longer than the calibration
prompts, whose rows drift with length. Length adjustment (docs/METHOD.md §3 step 1) subtracts
from every feature a line on log content length fitted over the calibration prompts and their
variants, held at their shortest and longest length; length bands hold the 1 % quantile within
each content-length band as well. Here the default's families and coverage are calibrated as
`headguard calibrate` does, per top k, with and without each (a decoder's also with the C
headers' one-line blocks, `c_blocks`, among its code), and each row says which snippets of
the code control (four) and of the other-code control (sixteen, held out from every choice) cross
the threshold how often (a Go line did on SMS before the C variants), and how many inputs
carrying a third, fresh code set (`fresh_code.py`, written to judge a source chosen on the other
two) cross, and which. Features come from
`bench/score_settings.py`'s cache (the same groups). It reads the trigger to build the
triggered group, so it is a harness tool.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from detect_ablation import held_out_inputs
from fresh_code import FRESH_CODE_SNIPPETS, fresh_code_inputs
from headguard.detect.defaults import score_defaults
from headguard.lab.build import read_manifest
from headguard.lab.controls import CODE_SNIPPETS, OTHER_CODE_SNIPPETS
from headguard.models.task import Task
from score_settings import bench_main, cached_features, fit_setting, held_out, held_out_limit, rates

TOP_K = (1, 2, 3)


def coverages(default: tuple[str, ...], kind: str) -> list[tuple[str, ...]]:
    """The default's coverage and, on a decoder, the same with the C headers' one-line blocks
    (`c_blocks`), the venv's shell lines (`shell`) and both, after its C lines."""
    if kind != "decoder" or "c" not in default:
        return [default]
    at = default.index("c") + 1
    return [(*default[:at], *extra, *default[at:]) for extra in ((), ("c_blocks",), ("shell",), ("c_blocks", "shell"))]


def snippets_over(texts: list[str], scores: np.ndarray, threshold: float,
                  snippets: tuple[str, ...]) -> dict[str, float | None]:
    """Per snippet of a code control, the share of the inputs carrying it that cross the threshold."""
    over = {}
    for snippet in snippets:
        carries = np.array([snippet in t for t in texts])
        over[snippet] = float((scores[carries] > threshold).mean()) if carries.any() else None
    return over


def measure(model: Path, cache: Path) -> list[dict]:
    lab = read_manifest(model)
    kind = Task.load(model).kind
    defaults = score_defaults(kind)
    feats, names = cached_features(model, lab, cache)
    inputs = held_out_inputs(model, lab, held_out_limit(model, lab))
    fresh = fresh_code_inputs(inputs["clean"])
    rows = []
    for coverage, k, adjust, bands in itertools.product(coverages(defaults.coverage, kind), TOP_K, (False, True),
                                                        (False, True)):
        cal, cols = fit_setting(feats, names, defaults.families, k, defaults.per_head, coverage, bands,
                                length_adjust=adjust)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in held_out(feats).items()}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(defaults.families), "top_k": k,
                     "per_head": defaults.per_head, "coverage": list(coverage), "length_adjust": adjust,
                     "length_bands": bands, "threshold": cal.threshold, **rates(scores, cal.threshold),
                     "code_over": snippets_over(inputs["code"], scores["code"], cal.threshold, CODE_SNIPPETS),
                     "other_code_over": snippets_over(inputs["other_code"], scores["other_code"], cal.threshold,
                                                      OTHER_CODE_SNIPPETS),
                     "fpr_fresh_code": float((scores["fresh_code"] > cal.threshold).mean()),
                     "fresh_code_over": snippets_over(fresh, scores["fresh_code"], cal.threshold, FRESH_CODE_SNIPPETS)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    bench_main("length", measure)
