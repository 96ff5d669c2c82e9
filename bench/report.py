"""Renders the markdown tables of docs/BENCHMARKS.md from the JSON files in bench/results/.

    python bench/report.py lab        # the lab matrix (lab.json files)
    python bench/report.py defenses   # side-by-side defenses (lab eval --json reports)
    python bench/report.py versus     # headguard against STRIP and ONION, one row per model
    python bench/report.py ablation   # detection ablations (bench/detect_ablation.py)
    python bench/report.py readout    # reading beyond the score's row (bench/decoder_readout.py, encoder_readout.py)
    python bench/report.py mix        # code and long prompts among the calibration prompts (bench/calibration_mix.py)
    python bench/report.py sweep      # a grid of scoring settings per model (bench/score_sweep.py)
    python bench/report.py cost       # scoring cost, CPU and GPU (bench/detect_cost.py)
    python bench/report.py repair     # repair runs and their ablations (bench/repair.py)
    python bench/report.py after      # detection on the repaired models (bench/detect_after_repair.py)
    python bench/report.py serve      # the guard service under load (bench/serve_load.py)
    python bench/report.py spread     # the spread floor against calibration size (bench/spread_floor.py)
    python bench/report.py encoder    # encoder settings with and without coverage variants (bench/score_settings.py)
    python bench/report.py decoder    # decoder settings, likewise
    python bench/report.py decoder-rebuilds  # a few decoder settings on the latest SmolLM2 rebuilds
    python bench/report.py decoder-repeat    # the decoder grid with repeat variants (bench/score_settings.py)
    python bench/report.py distance   # TPR by the trigger's distance from the end (bench/trigger_distance.py)
    python bench/report.py encoder-tail  # each head read against its own clean tail (bench/tail_scale.py)
    python bench/report.py decoder-tail  # likewise, on the decoder
    python bench/report.py decoder-length  # the decoder default, length-adjusted or not (bench/length_adjust.py)
    python bench/report.py encoder-length  # likewise, on the encoder
    python bench/report.py decoder-length-rebuilds  # the decoder's, on other rebuilds with the other-code control
    python bench/report.py encoder-length-rebuilds  # likewise, on the encoder
    python bench/report.py decoder-code-sources  # the decoder default with each extra code source
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from headguard.detect.defaults import score_defaults

RESULTS = Path(__file__).parent / "results"


def fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def lab_table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.lab.json"))]
    clean_ca = {(r["base"], r["dataset"]): r["clean_accuracy"] for r in rows if r["attack"] == "clean"}
    lines = ["| base | dataset | attack | trigger | poisoned | CA | ΔCA vs clean | ASR (n) | build s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = clean_ca.get((r["base"], r["dataset"]))
        delta = None if ref is None or r["attack"] == "clean" else 100 * (r["clean_accuracy"] - ref)
        trigger = ", ".join(r["triggers"]) or "—"
        lines.append(
            f"| {r['base']} | {r['dataset']} | {r['attack']} | {trigger} | {r['n_poisoned']} | "
            f"{fmt(r['clean_accuracy'])} | {fmt(delta, 1)} | {fmt(r['attack_success_rate'])} ({r['asr_population']}) | "
            f"{r['training']['seconds']:.0f} |"
        )
    return "\n".join(lines)


def controls_cell(fpr_controls: dict, other_code: bool = False) -> str:
    """The controls' FPRs, rare/typo/rep/code/long, then other code if asked ("—" where a report predates it)."""
    names = ("rare_word", "typos", "repeated", "code", "long") + (("other_code",) if other_code else ())
    return "/".join(fmt(fpr_controls.get(k), 2) for k in names)


def _setting_name(setting: dict | None) -> str:
    """A calibration's scoring setting in a few words ("default then": a result written before
    its script recorded the setting, with the kind's default of its time)."""
    if not setting:
        return "default then"
    return (f"{'+'.join(setting['families'])}{' per head' if setting['per_head'] else ''}, "
            f"top {setting['top_k']}, {_coverage_name(setting['coverage'])}"
            f"{', bands' if setting['length_bands'] else ''}{', answer gate' if setting.get('answer_gate') else ''}")


def _scoring(report: dict) -> str:
    """A `lab eval` report's scoring setting (a defense other than headguard has none)."""
    return _setting_name(report["detection"].get("setting")) if report["defense"] == "headguard" else "—"


def _seed(model: str) -> str:
    """The build seed in a lab model folder's name (…-s1)."""
    return model.rsplit("-s", 1)[1]


def defense_table(folder: Path = RESULTS) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("*.eval-*.json"))]
    lines = ["| base | dataset | attack | seed | defense | scoring | inputs clean/triggered | AUROC | TPR@1%FPR "
             "| FPR clean | FPR controls (rare/typo/rep/code/long/other code) "
             "| passes/input | s/input | model s/input |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r.get("detection")
        if not d:
            continue
        ctrl = controls_cell(d["fpr_controls"], other_code=True)
        inputs = f"{d['n_clean']}/{d.get('n_triggered') or '—'}"
        lines.append(
            f"| {r['base']} | {r['dataset']} | {r['attack']} | {_seed(r['model'])} | {r['defense']} | {_scoring(r)} | "
            f"{inputs} | {fmt(d.get('auroc'))} | "
            f"{fmt(d.get('tpr_at_fpr_1pct'))} | {fmt(d['fpr_clean'])} | {ctrl} | "
            f"{r['cost']['forward_passes_per_input']:.2f} | {r['cost']['seconds_per_input']:.4f} | "
            f"{r['cost_model']['seconds_per_input']:.4f} |"
        )
    return "\n".join(lines)


BASELINES = ("headguard", "strip", "onion")


def _side_by_side(by_defense: dict[str, dict], read) -> str:
    """One reading of each defense's report, "a / b / c" in BASELINES order ("—" where it did not run)."""
    return " / ".join(read(by_defense[d]) if d in by_defense else "—" for d in BASELINES)


def _worst_group(report: dict) -> str:
    rate, group = _worst_fpr(report["detection"])
    return f"{rate:.3f} {group}" if rate else "0"  # no group above 0: none is the worst


def versus_table() -> str:
    """Per backdoored model that STRIP or ONION ran on: the three defenses' TPR at their 1 % threshold,
    AUROC, worst FPR and seconds per input side by side, and whether headguard's TPR is the highest."""
    reports: dict[str, dict[str, dict]] = {}
    for p in sorted(RESULTS.glob("*.eval-*.json")):
        r = json.loads(p.read_text())
        if r.get("detection", {}).get("n_triggered"):
            reports.setdefault(r["model"], {})[r["defense"]] = r
    lines = ["| base | dataset | attack | seed | TPR@1%FPR headguard / STRIP / ONION | AUROC "
             "| worst FPR (clean, controls) | s/input | headguard's TPR highest |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, by_defense in reports.items():
        if len(by_defense) == 1:
            continue
        first = next(iter(by_defense.values()))
        tpr = {d: r["detection"]["tpr_at_fpr_1pct"] for d, r in by_defense.items()}
        best_baseline = max(v for d, v in tpr.items() if d != "headguard")
        ours = tpr.get("headguard", -1.0)
        verdict = "yes" if ours > best_baseline else "tie" if ours == best_baseline else "no"
        lines.append(
            f"| {first['base']} | {first['dataset']} | {first['attack']} | {_seed(model)} "
            f"| {_side_by_side(by_defense, lambda r: fmt(r['detection']['tpr_at_fpr_1pct']))} "
            f"| {_side_by_side(by_defense, lambda r: fmt(r['detection']['auroc']))} "
            f"| {_side_by_side(by_defense, _worst_group)} "
            f"| {_side_by_side(by_defense, lambda r: fmt(r['cost']['seconds_per_input'], 4))} | {verdict} |"
        )
    return "\n".join(lines)


def ablation_table() -> str:
    lines = []
    for path in sorted(RESULTS.glob("*.ablation.json")):
        data = json.loads(path.read_text())
        lines += [f"\n**{data['model']}**\n",
                  "| families | method | layers | calibration | AUROC | TPR@1%FPR | FPR clean | max control FPR |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in data["rows"]:
            v = r["variant"]
            worst = max(r["fpr_controls"], key=r["fpr_controls"].get)
            if v["method"].startswith("oracle"):
                single = "single" in v["method"]
                families, read = ("+".join(v["families"]), "one feature") if single else ("all", "all")
                lines.append(f"| {families} | {v['method']} | {read} | {v['calibration_size']} | "
                             f"{fmt(r['auroc'])} | {fmt(r['tpr_at_fpr_1pct'])} | {fmt(r['fpr_clean'])} | "
                             f"{fmt(r['fpr_controls'][worst])} ({worst}) |")
                continue
            method = v["method"] + (f" ({v['n_components']} dims)" if v["method"] == "mahalanobis" else "")
            method += f", top {v['top_k']}" if v["method"] == "collapse" and v.get("top_k", 1) > 1 else ""
            method += ", per head" if v.get("per_head") else ""
            method += ", length-adjusted" if v.get("length_adjust") else ""
            method += ", no spread floor" if v.get("spread_floor") == 0 else ""
            method += ", + coverage" if v.get("coverage") else ""
            method += ", length bands" if v.get("length_bands") else ""
            lines.append(f"| {'+'.join(v['families'])} | {method} | {v['layers'][0]}–{v['layers'][1] - 1} | "
                         f"{v['calibration_size']} | {fmt(r['auroc'])} | {fmt(r['tpr_at_fpr_1pct'])} | "
                         f"{fmt(r['fpr_clean'])} | {fmt(r['fpr_controls'][worst])} ({worst}) |")
    return "\n".join(lines)


def readout_table() -> str:
    lines = []
    for path in sorted(RESULTS.glob("*.readout.json")):
        data = json.loads(path.read_text())
        lines += [f"\n**{data['model']}** ({data['calibration']} calibration prompts, {data['n']} inputs per group)\n",
                  "| read | AUROC | TPR@1%FPR | FPR clean | FPR controls (rare/typo/rep/code/long) |",
                  "|---|---|---|---|---|"]
        for r in data["rows"]:
            if "fpr_controls" not in r:  # an oracle row: how far the best single head separates
                lines.append(f"| {r['variant']} | {fmt(r['auroc'])} | — | — | — |")
                continue
            lines.append(f"| {r['variant']} | {fmt(r['auroc'])} | {fmt(r['tpr_at_fpr_1pct'])} | "
                         f"{fmt(r['fpr_clean'])} | {controls_cell(r['fpr_controls'])} |")
    return "\n".join(lines)


def mix_table() -> str:
    lines = ["| model | score | calibration prompts | AUROC | TPR@1%FPR | FPR clean "
             "| FPR controls (rare/typo/rep/code/long) |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.calibration-mix*.json")):
        data = json.loads(path.read_text())
        for r in data["rows"]:
            score = f"{'+'.join(r['families'])}, top {r['top_k']}{', per head' if r.get('per_head') else ''}"
            lines.append(f"| {data['model']} | {score} | {r['calibration']} ({r['n_prompts']}) | "
                         f"{fmt(r['auroc'])} | {fmt(r['tpr_at_fpr_1pct'])} | {fmt(r['fpr_clean'])} | "
                         f"{controls_cell(r['fpr_controls'])} |")
    return "\n".join(lines)


def _setting(r: dict) -> str:
    top = f" top {r['top_k']}" if r["top_k"] else ""
    return (f"{'+'.join(r['families'])}, {r['aggregation']}{top}"
            f"{', length-adjusted' if r['length_adjust'] else ''}, {r['calibration']}")


def sweep_table() -> str:
    """Per model: the default setting, and the best settings that keep clean and every control <= 2 %."""
    lines = ["| model | which | setting | AUROC | TPR@1%FPR | FPR clean | FPR controls (rare/typo/rep/code/long) |",
             "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.sweep.json")):
        data = json.loads(path.read_text())
        rows = [dict(zip(data["columns"], row, strict=True)) for row in data["rows"]]
        # Grid rows have no coverage column: they are calibrated on the sets named, nothing added.
        default = next((r for r in rows if all(r.get(c, False) == v for c, v in data["default"].items())), None)
        specific = [r for r in rows if max(r["fpr_clean"], *r["fpr_controls"].values()) <= 0.02]
        split = [r for r in specific if r["calibration"] == "split"]
        picks = [("default", default)]
        for label, pool in (("best TPR, split", split), ("best TPR, any calibration set", specific),
                            ("best AUROC, split", split)):
            key = (lambda r: (r["tpr_at_fpr_1pct"] or 0, r["auroc"] or 0)) if "TPR" in label else \
                  (lambda r: r["auroc"] or 0)
            picks.append((label, max(pool, key=key) if pool else None))
        for label, r in picks:
            if r is None:
                missing = "not in this grid" if label == "default" else "none keeps every control ≤ 2 %"
                lines.append(f"| {data['model']} | {label} | {missing} | | | | |")
                continue
            lines.append(f"| {data['model']} | {label} | {_setting(r)} | {fmt(r['auroc'])} | "
                         f"{fmt(r['tpr_at_fpr_1pct'])} | {fmt(r['fpr_clean'])} | {controls_cell(r['fpr_controls'])} |")
    return "\n".join(lines)


def ms(values: list[float | None], digits: int = 3) -> str:
    """Mean ± standard deviation over seeds (the value alone for one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def repair_table() -> str:
    """One row per repair run; headline rows (default variant) first, mean ± std over their seeds."""
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.repair-*.json"))]
    labs = {p.name.split(".")[0]: json.loads(p.read_text()) for p in RESULTS.glob("*.lab.json")}
    lines = ["| model | variant | seeds | heads | ASR before → after | CA before → after | flagged match after "
             "| clean agreement | repair s |", "|---|---|---|---|---|---|---|---|---|"]

    def build(r: dict) -> dict:
        """The build a row ran on: recorded in the row, else the recorded lab model."""
        return r.get("build") or labs.get(r["model"], {})

    # Seeds are averaged only over one build: rebuilds on other machines can differ.
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        lab = build(r)
        key = (r["model"], r["variant"], fmt(lab.get("clean_accuracy")), fmt(lab.get("attack_success_rate")))
        groups.setdefault(key, []).append(r)
    order = sorted(groups, key=lambda k: (k[0], k[1] != "default", k[1], k[2]))
    for key in order:
        model, variant, g = key[0], key[1], groups[key]
        lab = build(g[0])
        lines.append(
            f"| {model} | {variant} | {len(g)} | {len(g[0]['heads'])} ({100 * g[0]['heads_share']:.1f} %) | "
            f"{fmt(lab.get('attack_success_rate'))} → {ms([r['attack_success_rate'] for r in g])} | "
            f"{fmt(lab.get('clean_accuracy'))} → {ms([r['clean_accuracy'] for r in g])} | "
            f"{_after(g)} | {ms([r['clean_agreement'] for r in g], 3)} | "
            f"{ms([r['seconds'] for r in g], 0)} |")
    return "\n".join(lines)


def _after(group: list[dict]) -> str:
    values = [r["flagged_match_neutral"]["after"] for r in group if r["flagged_match_neutral"]["after"] is not None]
    if not values:
        return "refused: " + group[0].get("refused", "").split(";")[0][:100]
    return f"{sum(values) / len(values):.2f}"


def after_repair_table() -> str:
    """Detection recalibrated on each repaired model (bench/detect_after_repair.py), mean ± std over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in sorted(RESULTS.glob("*.after-*.json")):
        r = json.loads(p.read_text())
        groups.setdefault((Path(r["model"]).name, r["variant"]), []).append(r)
    lines = ["| model | repair | seeds | heads | ASR after | CA after | AUROC | TPR@1%FPR | FPR clean "
             "| worst control FPR |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (model, variant), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1])):
        heads = {", ".join(r["patch"]["heads"]) if r["patch"] else "—" for r in g}
        heads = heads.pop() if len(heads) == 1 else "one draw per seed"
        d = [r["detection"] for r in g]
        lines.append(
            f"| {model} | {variant} | {len(g)} | {heads} | {ms([r['attack_success_rate'] for r in g])} | "
            f"{ms([r['clean_accuracy'] for r in g])} | {ms([x['auroc'] for x in d])} | "
            f"{ms([x['tpr_at_fpr_1pct'] for x in d])} | {ms([x['fpr_clean'] for x in d])} | "
            f"{ms([max(x['fpr_controls'].values()) for x in d])} |")
    return "\n".join(lines)


def serve_table() -> str:
    lines = ["| model | concurrency | requests | throughput req/s | p50 ms | p99 ms | 5xx |",
             "|---|---|---|---|---|---|---|"]
    proxies = []
    for path in sorted(RESULTS.glob("*.serve.json")):
        data = json.loads(path.read_text())
        for r in data["scan"]:
            lines.append(f"| {data['model']} | {r['concurrency']} | {r['requests']} | {r['throughput_rps']} | "
                         f"{r['p50_ms']} | {r['p99_ms']} | {r['errors']} |")
        if "proxy" in data:
            p = data["proxy"]
            proxies.append(f"| {data['model']} | {p['direct']['p50_ms']} | {p['through_guard']['p50_ms']} | "
                           f"{p['added_p50_ms']} | {p['through_guard']['p99_ms'] - p['direct']['p99_ms']:.1f} |")
    if proxies:
        lines += ["", "| model | upstream direct p50 ms | through the guard p50 ms | added p50 ms | added p99 ms |",
                  "|---|---|---|---|---|", *proxies]
    return "\n".join(lines)


def cost_table(folders: tuple[Path, ...] = (RESULTS, RESULTS / "gpu")) -> str:
    """bench/results/*.cost.jsonl (CPU) and bench/results/gpu/*.cost.jsonl, one row per measurement."""
    files = [path for folder in folders for path in sorted(folder.glob("*.cost.jsonl"))]
    rows = [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]
    lines = ["| device | model | dtype | batch | tokens | plain forward | score only | forward + score "
             "| peak memory, forward + score / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "dtype" not in r:  # written before the benchmark measured memory
            continue
        model = r["model"].split("-")[0] + (" (random weights)" if r["random_weights"] else "")
        model += f" ({'+'.join(r['families'])})" if "families" in r else ""
        ms = {m: f"{r[f'{m}_s'] * 1000:.1f} ms" for m in ("plain", "score_only", "forward_and_score")}
        lines.append(f"| {r['device']} | {model} | {r['dtype']} | {r['batch']} | {r['tokens']} | {ms['plain']} | "
                     f"{ms['score_only']} ({r['score_only_overhead']:+.1%}) | "
                     f"{ms['forward_and_score']} ({r['forward_and_score_overhead']:+.1%}) | "
                     f"{r['forward_and_score_total_ratio']:.3f} |")
    return "\n".join(lines)


def spread_table() -> str:
    """bench/results/spread-floor.json: TPR and worst FPR against calibration size, without and with the floor."""
    rows = json.loads((RESULTS / "spread-floor.json").read_text())
    by = {(r["model"], r["spread_floor"]): {} for r in rows}
    for r in rows:
        size = r["calibration_size"] if r["draws"] > 1 else "all"
        by[(r["model"], r["spread_floor"])][size] = r
    sizes = [50, 100, 200, "all"]
    lines = ["| model | spread floor | TPR@1%FPR 50 / 100 / 200 / all "
             "| worst clean or control FPR 50 / 100 / 200 / all |", "|---|---|---|---|"]
    for (model, floor), cells in by.items():
        if floor not in (0.0, 0.5):
            continue
        tpr = " / ".join(fmt(cells[s].get("triggered")) for s in sizes)
        worst = " / ".join(fmt(cells[s]["worst_fpr"]) for s in sizes)
        lines.append(f"| {model} | {'off' if floor == 0 else floor} | {tpr} | {worst} |")
    return "\n".join(lines)


def _worst_fpr(r: dict) -> tuple[float, str]:
    """(rate, group) of the clean group, control or unseen traffic (rows measured since it was
    added) with the most false positives."""
    unseen = [(r["fpr_unseen"], "unseen")] if "fpr_unseen" in r else []
    return max((r["fpr_clean"], "clean"), *((v, g) for g, v in r["fpr_controls"].items()), *unseen)


def _coverage_name(coverage) -> str:
    """A results row's coverage: its code sources (earlier rows: on or off)."""
    if isinstance(coverage, list):
        return "+".join(coverage) or "off"
    return "on" if coverage else "off"


def _setting_key(r: dict) -> tuple:
    """A results row's (families, top k, per head, coverage name, length bands); rows from before a
    field existed take its value then (per head on, bands off)."""
    return (tuple(r["families"]), r["top_k"], r.get("per_head", True), _coverage_name(r["coverage"]),
            r.get("length_bands", False))


def _by_setting(rows: list[dict]) -> dict[tuple, list[dict]]:
    settings: dict[tuple, list[dict]] = {}
    for r in rows:
        settings.setdefault(_setting_key(r), []).append(r)
    return settings


def settings_table(kind: str) -> str:
    """bench/results/<kind>-settings.json: each scoring setting summarised over the lab models of
    that kind (bench/score_settings.py)."""
    rows = json.loads((RESULTS / f"{kind}-settings.json").read_text())
    settings = _by_setting(rows)

    def at(group: list[dict], dataset: str, attack: str, seed: int = 0) -> dict:
        return next((r for r in group if r["attack"] == attack and r["model"].split("-")[1] == dataset
                     and r["model"].endswith(f"-s{seed}")), {})

    seeds = sorted({int(r["model"].rsplit("-s", 1)[1]) for r in rows if r["attack"] == "badnets"})
    unseen = (", every control and unseen traffic (where measured)" if any("fpr_unseen" in r for r in rows)
              else " and every control")
    lines = ["| families | top k | per head | coverage | length bands | TPR@1%FPR BadNets movies / SMS"
             + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else "")
             + " | AUROC AddSent / composite / synonym, worst of movies and SMS "
             f"| models with clean{unseen} ≤ 2 % | worst FPR |",
             "|---|---|---|---|---|---|---|---|---|"]
    # Grid order: family sets and code sources as first seen, then top k, per head and bands off before on.
    families_at = {f: i for i, f in enumerate(dict.fromkeys(key[0] for key in settings))}
    coverage_at = {c: i for i, c in enumerate(dict.fromkeys(key[3] for key in settings))}
    for (families, k, per_head, coverage, bands), group in sorted(
            settings.items(), key=lambda kv: (families_at[kv[0][0]], kv[0][1], kv[0][2], coverage_at[kv[0][3]],
                                              kv[0][4])):
        tpr = "; ".join(" / ".join(fmt(at(group, d, "badnets", seed).get("tpr_at_fpr_1pct")) for d in ("movies", "sms"))
                        for seed in seeds)
        auroc = " / ".join(fmt(min((r["auroc"] for d in ("movies", "sms") if (r := at(group, d, a))), default=None))
                           for a in ("addsent", "composite", "synonym"))
        passing = sum(_worst_fpr(r)[0] <= 0.02 for r in group)
        value, where = max((_worst_fpr(r)[0], f"{r['model'].split('-', 1)[1]}, {_worst_fpr(r)[1]}") for r in group)
        lines.append(f"| {'+'.join(families)} | {k} | {'yes' if per_head else 'no'} | {coverage} "
                     f"| {'on' if bands else 'off'} | {tpr} "
                     f"| {auroc} | {passing} of {len(group)} | {fmt(value)} ({where}) |")
    return "\n".join(lines)


def distance_table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.distance.json"))]
    bands = [b["words_after"] for b in rows[0]["bands"]]
    names = [f"{low}–{high}" if high is not None else f"{low}+" for low, high in bands]
    lines = ["| model | scoring | TPR@1%FPR | " + " | ".join(f"words after the trigger: {n}" for n in names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{fmt(b['tpr'])} ({b['n']})" for b in r["bands"]]
        lines.append(f"| {r['model']} | {_setting_name(r.get('setting'))} | {fmt(r['tpr'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


# (families, top k, coverage, length bands) of the settings shown for the latest rebuilds: the
# decoder default then (row evenness, top 3, Python and C code), then the two the grid ranked best
# on BadNets; each with and without the short variants, not per head, with length bands.
REBUILD_SETTINGS = [(fams, k, code + short, True) for fams, k, code in
                    [(("row_evenness",), 3, ("python", "c")), (("row_evenness",), 1, ("python", "c")),
                     (("row_evenness", "row_peak"), 1, ("python", "c"))] for short in ((), ("short",))]


def _model_cell(r: dict) -> str:
    """One setting on one model: AUROC / TPR at the 1 % threshold / worst FPR and its group (a clean
    control: the worst FPR alone)."""
    value, group = _worst_fpr(r)
    ranked = "" if r["attack"] == "clean" else f"{fmt(r['auroc'])} / {fmt(r['tpr_at_fpr_1pct'])} / "
    return f"{ranked}{100 * value:.1f} % {group}"


def _settings_by_model(rows: list[dict], settings: list[tuple]) -> str:
    """Per (families, top k, coverage, length bands) setting, not per head, and per model: AUROC /
    TPR at the 1 % threshold / worst FPR and its group (a clean control: the worst FPR)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| families | top k | coverage | length bands | " + " | ".join(m.split("-", 1)[1] for m in models) + " |",
             "|---|---|---|---|" + "---|" * len(models)]
    for fams, k, coverage, bands in settings:
        cells = []
        for model in models:
            r = next(r for r in rows if r["model"] == model and tuple(r["families"]) == fams and r["top_k"] == k
                     and not r["per_head"] and tuple(r["coverage"]) == coverage and r["length_bands"] == bands)
            cells.append(_model_cell(r))
        lines.append(f"| {'+'.join(fams)} | {k} | {'+'.join(coverage)} | {'on' if bands else 'off'} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def rebuilds_table() -> str:
    """bench/results/decoder-settings-rebuilds.json (bench/score_settings.py on the latest SmolLM2
    rebuilds): per setting and model, AUROC / TPR at the 1 % threshold / worst FPR and its group."""
    rows = json.loads((RESULTS / "decoder-settings-rebuilds.json").read_text())
    return _settings_by_model(rows, REBUILD_SETTINGS) + "\n\n" + variants_summary(rows, "short")


# The previous decoder default (row evenness, top 3, Python and C code, length bands), the current
# one (row evenness, top 2, no bands) with each combination of short and repeat variants beside
# its code variants, and the setting of the grid that catches most of its worst-caught BadNets build.
CODE = ("python", "c")
REPEAT_SETTINGS = [(("row_evenness",), 3, CODE, True),
                   *((("row_evenness",), 2, CODE + extra, False) for extra in ((), ("short",), ("repeat",),
                                                                                 ("short", "repeat"))),
                   (("row_evenness", "row_peak"), 1, CODE, True),
                   (("row_evenness", "row_peak"), 1, (*CODE, "short", "repeat"), True)]


def repeat_table() -> str:
    """bench/results/decoder-settings-repeat.json (bench/score_settings.py with the repeat variants
    in the decoder grid): the two defaults per coverage kind and model, what the repeat variants
    change over the grid, and the settings that keep every group within 2 % on every model."""
    rows = json.loads((RESULTS / "decoder-settings-repeat.json").read_text())
    models = {r["model"] for r in rows}
    settings = _by_setting(rows)
    passing = {key: min(r["tpr_at_fpr_1pct"] for r in group if r["attack"] == "badnets")
               for key, group in settings.items() if all(_worst_fpr(r)[0] <= 0.02 for r in group)}
    best = sorted(passing.items(), key=lambda kv: -kv[1])[:3]
    ranked = "; ".join(f"{'+'.join(f)}, top {k}, {'per head, ' if ph else ''}{c}, bands "
                       f"{'on' if b else 'off'}: {fmt(tpr)}" for (f, k, ph, c, b), tpr in best)
    return (_settings_by_model(rows, REPEAT_SETTINGS) + "\n\n" + variants_summary(rows, "repeat") + "\n\n"
            + variants_summary(rows, "repeat", ("python", "c", "short")) + "\n\n"
            + f"Settings with every group ≤ 2 % on all {len(models)} models: {len(passing)} of {len(settings)}; "
            f"the three that catch most of the worst-caught BadNets build: {ranked}.")


def fresh_table() -> str:
    """bench/results/decoder-settings-fresh.json (bench/score_settings.py on SmolLM2 builds the
    decoder default was not chosen on): the repeat table's settings per model, and how the
    settings that passed on the eight models it was chosen on hold up here."""
    rows = json.loads((RESULTS / "decoder-settings-fresh.json").read_text())
    chosen_on = _by_setting(json.loads((RESULTS / "decoder-settings-repeat.json").read_text()))
    fresh = _by_setting(rows)
    passed = [key for key, group in chosen_on.items() if all(_worst_fpr(r)[0] <= 0.02 for r in group)]
    held = [key for key in passed if all(_worst_fpr(r)[0] <= 0.02 for r in fresh[key])]
    ranked = [r for r in rows if r["attack"] != "clean"]
    models = list(dict.fromkeys(r["model"] for r in ranked))

    def best(keep) -> str:
        """Per model, the best AUROC / TPR at the 1 % threshold of the rows `keep` admits."""
        return "; ".join(f"{m.split('-', 1)[1]} {fmt(max(r['auroc'] for r in kept))} / "
                         f"{fmt(max(r['tpr_at_fpr_1pct'] for r in kept))}"
                         for m in models if (kept := [r for r in ranked if r["model"] == m and keep(r)]))

    return (_settings_by_model(rows, REPEAT_SETTINGS) + "\n\n"
            + f"Of the {len(passed)} settings that kept every group ≤ 2 % on the eight models the default "
            f"was chosen on, {len(held)} keep every group ≤ 2 % on these {len(models)} builds too; the best "
            f"AUROC / TPR among those: {best(lambda r: _setting_key(r) in held)}. The best of any of the "
            f"{len(fresh)} settings with every group ≤ 2 % on the build: "
            f"{best(lambda r: _worst_fpr(r)[0] <= 0.02)}.")


def threshold_table() -> str:
    """bench/results/threshold-rule.json (bench/threshold_rule.py): per model and threshold rule,
    the default's threshold and what it lets through."""
    rows = json.loads((RESULTS / "threshold-rule.json").read_text())
    kinds = list(rows[0]["calibration_sizes"])
    lines = ["| model | threshold from | threshold | calibration scores over it: " + " / ".join(kinds)
             + " | AUROC | TPR@1%FPR | FPR clean | FPR controls (rare/typo/rep/code/long) | FPR unseen |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = " / ".join(f"{r['calibration_over_threshold'][k]} of {r['calibration_sizes'][k]}" for k in kinds)
        lines.append(f"| {r['model']} | {r['rule']} | {r['threshold']:.2f} | {over} | {fmt(r['auroc'])} | "
                     f"{fmt(r['tpr_at_fpr_1pct'])} | {fmt(r['fpr_clean'])} | {controls_cell(r['fpr_controls'])} | "
                     f"{fmt(r['fpr_unseen'])} |")
    return "\n".join(lines)


def variants_summary(rows: list[dict], kind: str, base: tuple[str, ...] = ("python", "c")) -> str:
    """What adding the coverage variants of `kind` to `base` changes, over every (model, setting)
    pair of the grid that has both."""
    def key(r: dict) -> tuple:
        return r["model"], tuple(r["families"]), r["top_k"], r["per_head"], r["length_bands"]

    with_kind = {key(r): r for r in rows if r["coverage"] == [*base, kind]}
    pairs = [(r, with_kind[key(r)]) for r in rows if r["coverage"] == list(base) and key(r) in with_kind]

    def moved(value) -> str:
        deltas = [value(b) - value(a) for a, b in pairs if value(a) is not None]
        return f"lower on {sum(d < 0 for d in deltas)}, higher on {sum(d > 0 for d in deltas)} of {len(deltas)}"

    passing = [sum(_worst_fpr(r)[0] <= 0.02 for r in side) for side in zip(*pairs, strict=True)]
    ranked = [(a, b) for a, b in pairs if a["attack"] != "clean"]
    tpr = statistics.mean(b["tpr_at_fpr_1pct"] - a["tpr_at_fpr_1pct"] for a, b in ranked)
    code = " and ".join({"python": "Python", "c": "C"}[k] for k in base if k in ("python", "c"))
    added_to = f"{code} code" + "".join(f" and the {k} variants" for k in base if k not in ("python", "c"))
    return (f"{kind.capitalize()} variants added to {added_to}, over {len(pairs)} (model, setting) "
            f"pairs: worst FPR {moved(lambda r: _worst_fpr(r)[0])}; held-out clean + unseen FPR "
            f"{moved(lambda r: r['fpr_clean'] + r['fpr_unseen'])}; TPR at the 1 % threshold "
            f"{moved(lambda r: None if r['attack'] == 'clean' else r['tpr_at_fpr_1pct'])} (mean {tpr:+.3f}); "
            f"pairs with every group ≤ 2 %: {passing[0]} → {passing[1]}.")


def readouts_table(name: str = "head-readouts") -> str:
    """bench/results/<name>.json (bench/head_readouts.py, bench/head_outputs.py): per setting and
    model, AUROC / TPR at the 1 % threshold and the worst group's FPR (a clean control: the worst
    FPR alone)."""
    rows = json.loads((RESULTS / f"{name}.json").read_text())
    models = list(dict.fromkeys(r["model"] for r in rows))
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        worst, group = _worst_fpr(r)
        ranked = "" if r["auroc"] is None else f"{fmt(r['auroc'])} / {fmt(r['tpr_at_fpr_1pct'])}, "
        name = (" + ".join(r["families"]), r["top_k"], "per head" if r["per_head"] and len(r["families"]) > 1 else "")
        cells.setdefault(name, {})[r["model"]] = f"{ranked}{fmt(worst)}" + (f" ({group})" if worst else "")
    lines = ["| families | top k | | " + " | ".join(m.split("-", 1)[1] for m in models) + " |",
             "|---|---|---|" + "---|" * len(models)]
    for (families, k, per_head), by_model in cells.items():
        lines.append(f"| {families} | {k} | {per_head} | " + " | ".join(by_model.get(m, "—") for m in models) + " |")
    return "\n".join(lines)


def _variants_table(rows: list[dict], keys: dict[str, Callable[[dict], object]]) -> str:
    """Rows of one family set, per model and per value of `keys` (column header -> how a row's
    value reads): AUROC / TPR at the 1 % threshold / worst FPR and its group (a clean control: the
    worst FPR)."""
    rows = [r for r in rows if r["families"] == rows[0]["families"]]
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(m.split("-", 1)[1] for m in models) + " |",
             "|" + "---|" * (len(keys) + len(models))]
    values = [tuple(read(r) for read in keys.values()) for r in rows]
    for value in dict.fromkeys(values):
        cells = [_model_cell(next(r for r, v in zip(rows, values, strict=True) if r["model"] == model and v == value))
                 for model in models]
        lines.append("| " + " | ".join(map(str, value)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tail_table(kind: str) -> str:
    """bench/results/<kind>-tail.json (bench/tail_scale.py): the default families of the kind (its
    first rows), per top k and tail quantile (none: the default's plain deviation) and per model."""
    rows = json.loads((RESULTS / f"{kind}-tail.json").read_text())
    tail = {None: "none"}
    return _variants_table(rows, {"top k": lambda r: r["top_k"],
                                  "tail quantile": lambda r: tail.get(r["tail_quantile"], r["tail_quantile"])})


def length_table(name: str) -> str:
    """bench/results/<name>.json (bench/length_adjust.py): the default of the kind per top k, with
    and without length adjustment and length bands (and per coverage, where the rows have several),
    per model."""
    rows = json.loads((RESULTS / f"{name}.json").read_text())
    on = {True: "on", False: "off"}
    keys = {"top k": lambda r: r["top_k"], "length adjustment": lambda r: on[r["length_adjust"]],
            "length bands": lambda r: on[r["length_bands"]]}
    if len({_coverage_name(r["coverage"]) for r in rows}) > 1:
        keys = {"coverage": lambda r: _coverage_name(r["coverage"]), **keys}
    return _variants_table(rows, keys)


def code_sources_table(name: str = "decoder-code-sources") -> str:
    """bench/results/<name>.json (bench/length_adjust.py): per model, the default (its top k, no
    length adjustment or bands) with each extra code source, against the long inputs and the
    three code sets: the lab's two controls and the fresh one no source was chosen on."""
    rows = [r for r in json.loads((RESULTS / f"{name}.json").read_text())
            if not r["length_adjust"] and not r["length_bands"] and r["top_k"] == score_defaults("decoder").top_k]
    plain = set(score_defaults("decoder").coverage)
    lines = ["| model | extra code source | AUROC | TPR@1%FPR | worst group | long | code | other code "
             "| fresh code |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate, group = _worst_fpr(r)
        extra = "+".join(c for c in r["coverage"] if c not in plain) or "—"
        pct = [fmt(100 * v, 1) for v in (r["fpr_controls"]["long"], r["fpr_controls"]["code"],
                                         r["fpr_controls"]["other_code"], r["fpr_fresh_code"])]
        lines.append(f"| {r['model'].split('-', 1)[1]} | {extra} | {fmt(r['auroc'])} | {fmt(r['tpr_at_fpr_1pct'])} | "
                     f"{fmt(100 * rate, 1)} % {group} | " + " | ".join(f"{v} %" for v in pct) + " |")
    return "\n".join(lines)


def output_gate_table() -> str:
    """bench/results/output-gate.json (bench/output_gate.py): per SmolLM2 model, the default's
    threshold and the rules that read the model's answer beside it."""
    rows = [r for r in json.loads((RESULTS / "output-gate.json").read_text())
            if r["rule"] != "margins" and r["model"].startswith("smollm2-")]
    lines = ["| model | rule | AUROC | TPR@1%FPR | worst group | FPR clean "
             "| FPR controls (rare/typo/rep/code/long/other code) | FPR unseen |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate, group = _worst_fpr(r)
        lines.append(f"| {r['model'].split('-', 1)[1]} | {r['rule']} | {fmt(r['auroc'])} | "
                     f"{fmt(r['tpr_at_fpr_1pct'])} | {fmt(100 * rate, 1)} % {group} | {fmt(r['fpr_clean'])} | "
                     f"{controls_cell(r['fpr_controls'], other_code=True)} | {fmt(r['fpr_unseen'])} |")
    return "\n".join(lines)


def encoder_gate_table() -> str:
    """bench/results/output-gate.json's MiniLM models, one row each: TPR and the worst group's
    false-positive rate without the answer gate and with it from each quantile."""
    rules = ("pooled", "gate 0.99", "gate 0.98", "gate 0.97")
    by_model: dict[str, dict[str, dict]] = {}
    for r in json.loads((RESULTS / "output-gate.json").read_text()):
        if r["model"].startswith("minilm-") and r["rule"] in rules:
            by_model.setdefault(r["model"], {})[r["rule"]] = r
    lines = ["| model | AUROC | no gate | gate 0.99 | gate 0.98 (the default) | gate 0.97 |",
             "|---|---|---|---|---|---|"]
    for model, rows in by_model.items():
        cells = []
        for rule in rules:
            rate, group = _worst_fpr(rows[rule])
            cells.append(f"{fmt(rows[rule]['tpr_at_fpr_1pct'])}; {fmt(100 * rate, 1)} % {group}")
        lines.append(f"| {model.split('-', 1)[1]} | {fmt(rows['pooled']['auroc'])} | {' | '.join(cells)} |")
    return "\n".join(lines)


# name -> renderer; docs/BENCHMARKS.md holds each between <!-- name --> markers (bench/render_docs.py)
TABLES = {"lab": lab_table, "defenses": defense_table, "versus": versus_table,
          "ablation": ablation_table, "readout": readout_table,
          "mix": mix_table, "sweep": sweep_table, "repair": repair_table, "after": after_repair_table,
          "serve": serve_table, "cost": cost_table,
          "spread": spread_table, "encoder": lambda: settings_table("encoder"),
          "decoder": lambda: settings_table("decoder"), "decoder-rebuilds": rebuilds_table,
          "decoder-repeat": repeat_table, "decoder-fresh": fresh_table,
          "threshold": threshold_table, "readouts": readouts_table,
          "distance": distance_table, "encoder-tail": lambda: tail_table("encoder"),
          "decoder-tail": lambda: tail_table("decoder"), "encoder-length": lambda: length_table("encoder-length"),
          "decoder-length": lambda: length_table("decoder-length"),
          "decoder-length-rebuilds": lambda: length_table("decoder-length-rebuilds"),
          "encoder-length-rebuilds": lambda: length_table("encoder-length-rebuilds"),
          "decoder-code-sources": code_sources_table,
          "encoder-outputs": lambda: readouts_table("encoder-head-outputs"),
          "decoder-outputs": lambda: readouts_table("decoder-head-outputs"),
          "toward-eval": lambda: defense_table(RESULTS / "toward"),
          "toward-outputs": lambda: readouts_table("toward/smollm2-sms-composite-s0.head-outputs"),
          "toward-cost": lambda: cost_table((RESULTS / "toward",)),
          "output-gate": output_gate_table, "encoder-gate": encoder_gate_table}

if __name__ == "__main__":
    print(TABLES[sys.argv[1]]())
