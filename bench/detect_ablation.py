"""Detection ablations on one lab model: feature family, scoring method, layers, calibration size.

    .venv/bin/python bench/detect_ablation.py MODEL_DIR [--out bench/results/NAME.ablation.json]

Features of every family are computed once (calibration split, 200 held-out clean prompts, 200
triggered prompts, 200 of each specificity control); each variant then refits the calibration
on its columns and is scored on the same inputs. The first row is the default for the model's
kind (headguard/detect/defaults.py). The last rows are ceilings that read the trigger to choose a
feature or train a linear probe (`oracle_rows`): is the backdoor in these features at all? Only
this harness reads the trigger.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from headguard.detect.calibration import SPREAD_FLOOR, Calibration
from headguard.detect.defaults import ScoreDefaults, score_defaults
from headguard.detect.detector import coverage_within_context, own_draw_rows, short_within_context
from headguard.detect.features import FAMILIES, feature_directions, feature_names, feature_units
from headguard.detect.scorer import HeadScorer
from headguard.lab.attacks import Attack
from headguard.lab.build import read_manifest
from headguard.lab.controls import CONTROLS
from headguard.lab.evaluate import held_out_inputs as lab_inputs
from headguard.lab.splits import read_split
from headguard.models.classifier import Classifier

N = 200


def variants(n_layers: int, defaults: ScoreDefaults) -> list[dict]:
    """The rows of the ablation table; the first is the default for the model's kind, and most
    rows change one thing of it."""
    base = dict(families=defaults.families, method="collapse", top_k=defaults.top_k,
                length_adjust=defaults.length_adjust, per_head=defaults.per_head, coverage=defaults.coverage,
                length_bands=defaults.length_bands)
    rows = [base]
    rows += [{**base, "families": (f,), "per_head": False} for f in FAMILIES if (f,) != defaults.families]
    rows += [{**base, "top_k": k} for k in (1, 3, 5) if k != defaults.top_k]
    rows += [{**base, "length_adjust": not defaults.length_adjust}]
    if len(defaults.families) > 1:
        rows += [{**base, "per_head": not defaults.per_head}]
    rows += [{**base, "coverage": () if defaults.coverage else ("python",)}]
    rows += [dict(families=fams, method="mahalanobis", length_adjust=True, n_components=k, coverage=defaults.coverage)
             for fams in [("row_entropy",), ("entropy",), ("cosine",), ("entropy", "max", "cosine")] for k in (8, 32)]
    half = n_layers // 2
    rows += [{**base, "layers": (0, half)}, {**base, "layers": (half, n_layers)}]
    rows += [{**base, "calibration_size": n} for n in (50, 100, 200)]
    # Without the spread floor (calibration.SPREAD_FLOOR), at every calibration size.
    rows += [{**base, "calibration_size": n, "spread_floor": 0.0} for n in (50, 100, 200, None)]
    return rows


def held_out_inputs(model: Path, lab: dict, limit: int = N) -> dict[str, list[str]]:
    """The inputs `headguard lab eval` scores (clean, triggered, controls) for a lab model."""
    attack = Attack(lab["attack"], tuple(lab["triggers"]))
    return lab_inputs(read_split(model, "test"), attack, lab["target_index"], limit)


def metrics(scores: dict, threshold: float) -> dict:
    """AUROC of clean against triggered inputs (None without triggered inputs: a clean control
    model), and the share of each group above the threshold."""
    row = {"auroc": None, "tpr_at_fpr_1pct": None}
    if "triggered" in scores:
        y = np.r_[np.zeros(len(scores["clean"])), np.ones(len(scores["triggered"]))]
        row = {"auroc": float(roc_auc_score(y, np.r_[scores["clean"], scores["triggered"]])),
               "tpr_at_fpr_1pct": float((scores["triggered"] > threshold).mean())}
    return {
        **row,
        "fpr_clean": float((scores["clean"] > threshold).mean()),
        "fpr_controls": {g: float((scores[g] > threshold).mean()) for g in CONTROLS},
    }


def _held_row(method: str, families: list[str], score: dict, threshold: float, calibration_size: int) -> dict:
    """Metrics of an oracle on the second half of every held-out group; the first half chose or trained it."""
    held = {g: x[len(x) // 2:] for g, x in score.items()}
    variant = {"families": families, "method": method, "layers": None, "calibration_size": calibration_size}
    return {"variant": variant, **metrics(held, threshold)}


def oracle_rows(feats: dict, names: list[str], family_of: np.ndarray) -> list[dict]:
    """A ceiling, not a defense: is the backdoor in these features at all, if the trigger is known?
    Every held-out group is split in halves; the first half of the triggered inputs (and, where
    said, of the clean and control inputs) chooses or trains the oracle, the second half measures it.

    - best single feature: the one feature (a head's number or a head pair's cosine) whose
      calibration 99th percentile, in the direction the trigger moves it, catches most triggered inputs;
    - the same among features whose clean and control FPRs are all <= 2 % on the first halves;
    - a linear probe (logistic regression on every feature) trained on 3/4 of the calibration
      prompts against triggered inputs, its threshold the 99th percentile of the other quarter;
    - the same probe also given the control inputs as negatives.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = {g: f for g, (f, _) in feats.items()}
    first = {g: f[: len(f) // 2] for g, f in x.items() if g != "calibration"}
    cal = x["calibration"]
    rows = []

    direction = np.sign(np.median(first["triggered"], 0) - np.median(cal, 0))
    signed = {g: f * direction for g, f in x.items()}
    threshold = np.quantile(signed["calibration"], 0.99, axis=0)
    caught = (first["triggered"] * direction > threshold).mean(0)
    worst = np.max([(first[g] * direction > threshold).mean(0) for g in ["clean", *CONTROLS]], 0)
    for label, allowed in (("best single feature", np.ones_like(worst, bool)),
                           ("best single feature with clean and control FPR ≤ 2 %", worst <= 0.02)):
        if allowed.any():
            f = int(np.argmax(np.where(allowed, caught, -1)))
            score = {g: v[:, f] for g, v in signed.items() if g != "calibration"}
            rows.append(_held_row(f"oracle: {label} ({names[f]})", [str(family_of[f])], score, threshold[f], len(cal)))

    fit, held_cal = cal[: 3 * len(cal) // 4], cal[3 * len(cal) // 4:]
    controls = [first[g] for g in CONTROLS]
    for label, negatives in (("linear probe on every feature", [fit]),
                             ("linear probe on every feature, controls as negatives", [fit, *controls])):
        neg = np.concatenate(negatives)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        probe.fit(np.r_[neg, first["triggered"]], np.r_[np.zeros(len(neg)), np.ones(len(first["triggered"]))])
        score = {g: probe.decision_function(v) for g, v in x.items() if g != "calibration"}
        rows.append(_held_row(f"oracle: {label}", sorted(set(family_of)), score,
                              float(np.quantile(probe.decision_function(held_cal), 0.99)), len(fit)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--features", type=Path, help="also save every group's features here (.npz), for analysis")
    args = parser.parse_args()

    lab = read_manifest(args.model)
    clf = Classifier.from_folder(args.model)
    scorer = HeadScorer(clf, families=FAMILIES)
    groups = {"calibration": [ex.text for ex in read_split(args.model, "calibration")],
              **held_out_inputs(args.model, lab)}
    feats = {name: scorer.features(texts) for name, texts in groups.items()}
    n_layers, n_heads = scorer.adapter.n_layers, scorer.adapter.n_heads
    names = feature_names(scorer.layers, n_heads, FAMILIES)
    if args.features:
        np.savez_compressed(args.features, names=np.array(names), **{f"{g}_x": x for g, (x, _) in feats.items()},
                            **{f"{g}_length": n for g, (_, n) in feats.items()})
    directions = np.array(feature_directions(scorer.layers, n_heads, FAMILIES))
    units = np.array(feature_units(scorer.layers, n_heads, FAMILIES))
    prefixes = [n.split(":")[0] for n in names]
    family_of = np.array(["cosine" if p == "cos" else p for p in prefixes])
    layer_of = np.array([int(n.split(":")[1].split("H")[0][1:]) for n in names])

    results = []
    coverage: dict[tuple, tuple] = {}  # (size, kinds) -> variants' features, lengths, band-only and raise-only masks
    for v in variants(n_layers, score_defaults(clf.task.kind)):
        lo, hi = v.get("layers", (0, n_layers))
        cols = np.isin(family_of, v["families"]) & (layer_of >= lo) & (layer_of < hi)
        size = v.get("calibration_size") or len(groups["calibration"])
        x, lengths = feats["calibration"]
        x, lengths = x[:size], lengths[:size]
        band_only = raise_only = np.zeros(len(x), bool)
        if v.get("coverage"):  # as headguard calibrate: the prompts' coverage variants too, short ones last
            key = (size, tuple(v["coverage"]))
            if key not in coverage:
                prompts = groups["calibration"][:size]
                longer = coverage_within_context(clf, prompts, key[1])
                short = short_within_context(clf, prompts, key[1])
                vx, vn = scorer.features(longer + short)
                coverage[key] = (vx, vn, np.arange(len(vn)) >= len(longer),
                                 own_draw_rows(prompts, longer + short, key[1]))
            x, lengths = np.r_[x, coverage[key][0]], np.r_[lengths, coverage[key][1]]
            band_only = np.r_[band_only, coverage[key][2]]
            raise_only = np.r_[raise_only, coverage[key][3]]
        cal = Calibration.fit(x[:, cols], lengths, directions[cols], model_hash="-", layers=[],
                              families=list(v["families"]), method=v["method"],
                              n_components=v.get("n_components", 32), length_adjust=v.get("length_adjust", False),
                              top_k=v.get("top_k", 1), units=units[cols] if v.get("per_head") else None,
                              spread_floor=v.get("spread_floor", SPREAD_FLOOR),
                              length_bands=v.get("length_bands", False), band_only=band_only,
                              raise_only=raise_only)
        scores = {g: cal.score(f[:, cols], n) for g, (f, n) in feats.items()}
        row = {"variant": {**v, "layers": [lo, hi], "calibration_size": size}, **metrics(scores, cal.threshold)}
        results.append(row)
        print(json.dumps(row), flush=True)
    for row in oracle_rows(feats, names, family_of) if "triggered" in feats else []:  # none on a clean model
        results.append(row)
        print(json.dumps(row), flush=True)
    out = args.out or Path(__file__).parent / "results" / f"{args.model.name}.ablation.json"
    out.write_text(json.dumps({"model": args.model.name, "attack": lab["attack"], "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
