"""Scoring settings side by side, with and without coverage variants, on lab models of one kind.

    .venv/bin/python bench/score_settings.py MODEL_DIR ... [--out bench/results/<kind>-settings.json]
                                                           [--features DIR]

Per model, features are computed once for the calibration split, its coverage variants
(headguard/detect/coverage.py: per code source a quarter more with a line of that code appended,
a quarter more of 2–4 prompts joined) and the inputs `headguard lab eval` scores (200 held-out
clean and triggered inputs, 200 of each specificity control; a clean control model's whole test
split) and the clean rows of the repair's traffic mix (`unseen`: up to 400 dataset rows no split
used, in the dataset's own class mix: on SMS nearly all ham, short messages included, where the
test split holds as much spam as the training split), and the held-out clean inputs with a
snippet of a third code set appended (`fresh_code`: `fresh_code.py`). Each setting is then calibrated as
`headguard calibrate` does (collapse score, out-of-fold 1 % threshold) on the split alone or
with its coverage variants (COVERAGE: Python code, or Python and C code, and either with the
short variants beside it, which set only the bar of inputs as short as they are; on a decoder,
Python and C code with the repeat variants, a run of a prompt's words said twice, with and
without the short ones, and the last with the C headers' one-line blocks, `c_blocks`, beside its
code), with and without length bands (the 1 % quantile held within each content-length band
of the calibration prompts as well: docs/METHOD.md §3). The grid depends on the models' kind (GRIDS):

- encoder (the [CLS] row, each head's families averaged): row entropy + row max (the whole row
  as it is), row evenness + row peak (the same against the row's key count), row evenness alone,
  row entropy + row evenness (the row's entropy both as it is and against its key count); top 1,
  2 or 3 heads;
- decoder (the last prompt token's row): content entropy (an earlier decoder default), with whole-row
  entropy, with content max, content max alone, row evenness, row evenness with content entropy,
  row evenness + row peak; top 1, 2 or 3; each head's families averaged first or not.

It reads the trigger to build the triggered group, so it is a harness tool.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detect_ablation import held_out_inputs, metrics
from fresh_code import fresh_code_inputs
from headguard.detect.calibration import Calibration
from headguard.detect.coverage import OWN_DRAW, REPEAT, SHARED_DRAW, SHORT, code_prompts, repeat_prompts
from headguard.detect.detector import coverage_within_context, short_within_context
from headguard.detect.features import COLLAPSE_DIRECTION, FAMILIES, feature_names, heads_of, units_of
from headguard.detect.scorer import HeadScorer
from headguard.lab.build import read_manifest
from headguard.lab.splits import read_split
from headguard.lab.traffic import traffic_mix
from headguard.models.classifier import Classifier
from headguard.models.task import Task

# kind -> (family sets, top k, per-head averaging)
GRIDS = {
    "encoder": ([("row_entropy", "row_max"), ("row_evenness", "row_peak"), ("row_evenness",),
                 ("row_entropy", "row_evenness")], (1, 2, 3), (True,)),
    "decoder": ([("entropy",), ("row_entropy", "entropy"), ("entropy", "max"), ("max",), ("row_evenness",),
                 ("entropy", "row_evenness"), ("row_evenness", "row_peak")], (1, 2, 3), (False, True)),
}
# kind -> the coverage variant kinds of each setting (none: the split alone)
COVERAGE = {"encoder": ((), ("python",), ("python", "c"), ("python", "short"), ("python", "c", "short")),
            "decoder": ((), ("python",), ("python", "c"), ("python", "c", "short"), ("python", "c", "repeat"),
                        ("python", "c", "short", "repeat"), ("python", "c", "c_blocks", "short", "repeat"),
                        ("python", "c", "shell", "short", "repeat"))}


LENGTH_BANDS = (False, True)


def grid(kind: str) -> list[tuple[tuple[str, ...], int, bool, tuple[str, ...], bool]]:
    """(families, top k, per head, coverage code sources, length bands) of every setting; per head
    only where it changes the score."""
    family_sets, top_k, per_head = GRIDS[kind]
    return [(fams, k, ph, coverage, bands) for fams, k, ph, coverage, bands
            in itertools.product(family_sets, top_k, per_head, COVERAGE[kind], LENGTH_BANDS)
            if len(fams) > 1 or ph == per_head[0]]


def held_out_limit(model: Path, lab: dict) -> int:
    """Inputs per held-out group, as `headguard lab eval` scores them: 200, or a clean control
    model's whole test split (its false-positive rate is the measurement)."""
    return len(read_split(model, "test")) if lab["attack"] == "clean" else 200


def input_groups(model: Path, clf: Classifier, lab: dict) -> dict[str, list[str]]:
    """The texts of every group: the calibration split, its coverage variants per setting, the
    inputs `headguard lab eval` scores and the traffic mix's clean rows."""
    limit = held_out_limit(model, lab)
    split = [ex.text for ex in read_split(model, "calibration")]
    longer = {_shared(kinds) for kinds in COVERAGE[clf.task.kind]} - {()}
    variants = {_group(code): coverage_within_context(clf, split, code) for code in sorted(longer)}
    for source in sorted({s for kinds in COVERAGE[clf.task.kind] for s in _own(kinds)}):
        # a source on its own draw (coverage_prompts puts it after the joined prompts): the same texts
        variants[_group((source,))] = [p for p in code_prompts(split, source) if clf.fits(p)]
    if any(SHORT in kinds for kinds in COVERAGE[clf.task.kind]):
        variants[_group((SHORT,))] = short_within_context(clf, split, (SHORT,))
    if any(REPEAT in kinds for kinds in COVERAGE[clf.task.kind]):
        # coverage_prompts draws them apart from the rest and puts them last: the same texts
        variants[_group((REPEAT,))] = [p for p in repeat_prompts(split) if clf.fits(p)]
    unseen = [text for text, carries_trigger in traffic_mix(model) if not carries_trigger]
    inputs = held_out_inputs(model, lab, limit)
    return {"split": split, **variants, **inputs, "unseen": unseen, "fresh_code": fresh_code_inputs(inputs["clean"])}


def _shared(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The code sources of `kinds` drawn with the joined prompts (one group of variants)."""
    return tuple(k for k in kinds if k in SHARED_DRAW)


def _own(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """The code sources of `kinds` on draws of their own (a group each)."""
    return tuple(k for k in kinds if k in OWN_DRAW)


def _group(code: tuple[str, ...]) -> str:
    return "coverage:" + "+".join(code)


def calibration_set(feats: dict, coverage: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, lengths, band_only, raise_only) of the split with the coverage variants of
    `coverage`, as `headguard calibrate` puts them together: the short variants last, setting
    only their band; the sources on draws of their own may raise the threshold, never lower it."""
    parts = [feats["split"]]
    if _shared(coverage):
        parts.append(feats[_group(_shared(coverage))])
    n_before_own = sum(len(n) for _, n in parts)
    parts += [feats[_group((source,))] for source in _own(coverage)]
    n_own = sum(len(n) for _, n in parts) - n_before_own
    if REPEAT in coverage:
        parts.append(feats[_group((REPEAT,))])
    n_fitted = sum(len(n) for _, n in parts)
    if SHORT in coverage:
        parts.append(feats[_group((SHORT,))])
    x, n = np.concatenate([x for x, _ in parts]), np.concatenate([n for _, n in parts])
    row = np.arange(len(n))
    return x, n, row >= n_fitted, (row >= n_before_own) & (row < n_before_own + n_own)


def _key(texts: list[str]) -> str:
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def cached_groups(path: Path | None, names: list[str], groups: dict[str, list[str]], compute) -> dict:
    """Per group, `compute(texts)` -> (features, content lengths). With a path, kept there with
    each group's texts' hash and the feature names: a group is computed again only when its texts
    (or the names) changed, and new settings can be tried without a forward pass."""
    saved = dict(np.load(path)) if path and path.exists() else {}
    if "names" in saved and saved["names"].tolist() != names:
        saved = {}  # saved before a family was added: its columns are not these
    feats = {}
    for g, texts in tqdm(groups.items(), desc=path.stem if path else "features", unit="group"):
        if saved.get(f"{g}_key") == _key(texts):
            feats[g] = saved[f"{g}_x"], saved[f"{g}_n"]
        else:
            feats[g] = compute(texts)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{g}_{part}": a for g, (x, n) in feats.items()
                  for part, a in (("x", x), ("n", n), ("key", np.array(_key(groups[g]))))}
        np.savez(path, names=np.array(names), **arrays)
    return feats


def cached_features(model: Path, lab: dict, cache: Path | None) -> tuple[dict, list[str]]:
    """Per group, (features, content lengths) of every family, and the feature names; with a
    cache folder, kept in CACHE/<model>.npz (`cached_groups`)."""
    clf = Classifier.from_folder(model)
    scorer = HeadScorer(clf, families=FAMILIES)
    names = feature_names(scorer.layers, scorer.adapter.n_heads, scorer.families)
    path = cache / f"{model.name}.npz" if cache else None
    return cached_groups(path, names, input_groups(model, clf, lab), scorer.features), names


def fit_setting(feats: dict, names: list[str], families: tuple[str, ...], top_k: int, per_head: bool,
                coverage: tuple[str, ...], length_bands: bool, length_adjust: bool = False,
                directions: dict[str, float] = COLLAPSE_DIRECTION,
                tail_quantile: float | None = None) -> tuple[Calibration, np.ndarray]:
    """The calibration of one setting, as `headguard calibrate` fits it, on the features of the
    split and its coverage variants; and the feature columns it reads. `directions`: per family
    (a feature name's prefix), the sign of a collapse; `tail_quantile`: each head's deviation
    divided by that quantile of its clean deviations (none: not)."""
    cols = np.isin([n.split(":")[0] for n in names], families)
    picked = [n for n, c in zip(names, cols, strict=True) if c]
    x, n, band_only, raise_only = calibration_set(feats, coverage)
    cal = Calibration.fit(x[:, cols], n, np.array([directions[p.split(":")[0]] for p in picked]),
                          model_hash="-", layers=sorted({layer for p in picked for layer, _ in heads_of(p)}),
                          families=list(families), top_k=top_k, units=np.array(units_of(picked)) if per_head else None,
                          length_adjust=length_adjust, coverage=coverage, length_bands=length_bands,
                          band_only=band_only, raise_only=raise_only, tail_quantile=tail_quantile)
    return cal, cols


def held_out(feats: dict) -> dict:
    """The groups a setting is measured on: every group but the calibration split and its variants."""
    return {g: f for g, f in feats.items() if g != "split" and not g.startswith("coverage:")}


def rates(scores: dict, threshold: float) -> dict:
    """`metrics` of the scored groups, and the share of the traffic mix's clean rows over the threshold."""
    return {**metrics(scores, threshold), "fpr_unseen": float((scores["unseen"] > threshold).mean())}


def measure(model: Path, cache: Path | None = None) -> list[dict]:
    lab = read_manifest(model)
    settings = grid(Task.load(model).kind)
    feats, names = cached_features(model, lab, cache)
    rows = []
    for fams, k, per_head, coverage, bands in settings:
        cal, cols = fit_setting(feats, names, fams, k, per_head, coverage, bands)
        scores = {g: cal.score(f[:, cols], m) for g, (f, m) in held_out(feats).items()}
        rows.append({"model": model.name, "attack": lab["attack"], "families": list(fams), "top_k": k,
                     "per_head": per_head, "coverage": list(coverage), "length_bands": bands,
                     "n_prompts": cal.n_prompts,
                     **rates(scores, cal.threshold), "n_unseen": len(scores["unseen"])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_rows(out: Path, models: list[Path], rows_of) -> None:
    """Writes `rows_of(model)` for every model to `out`, keeping its rows of models not measured now."""
    names = {m.name for m in models}
    kept = [r for r in json.loads(out.read_text()) if r["model"] not in names] if out.exists() else []
    out.write_text(json.dumps(kept + [row for model in models for row in rows_of(model)], indent=1) + "\n")


def one_kind(parser: argparse.ArgumentParser, models: list[Path]) -> str:
    """The kind (encoder or decoder) all `models` share; a usage error where they do not."""
    kinds = {Task.load(m).kind for m in models}
    if len(kinds) != 1:
        parser.error(f"the models must be of one kind (encoder or decoder), got {sorted(kinds)}")
    return kinds.pop()


def bench_main(suffix: str, measure: Callable[[Path, Path | None], list[dict]], features_required: bool = True) -> None:
    """The command line of a bench that measures settings on lab models of one kind: MODEL_DIR ...
    [--features DIR] [--out bench/results/<kind>-<suffix>.json]; `measure(model, features)` -> rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help=f"default: bench/results/<kind>-{suffix}.json; the rows of "
                        "models not measured in this run are kept")
    parser.add_argument("--features", type=Path, required=features_required,
                        help="a folder to keep each model's features in (and read them from on later runs)")
    args = parser.parse_args()
    kind = one_kind(parser, args.models)
    out = args.out or Path(__file__).parent / "results" / f"{kind}-{suffix}.json"
    write_rows(out, args.models, lambda model: measure(model, args.features))


if __name__ == "__main__":
    bench_main("settings", measure, features_required=False)
