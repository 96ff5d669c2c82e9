"""Detection on a real backdoored model, through the real CLI: calibrate, scan, and lab eval."""

from __future__ import annotations

import json

import pytest

from headguard.lab.attacks import make_attack
from headguard.lab.metrics import triggered
from headguard.lab.splits import read_split
from tests.conftest import run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def calibration(minilm_badnets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "minilm.cal"
    proc = run_cli("calibrate", "--model", str(minilm_badnets), "--out", str(out))
    summary = json.loads(proc.stdout)
    # The 400-prompt split, 100 with a line of Python and 100 with a line of C, up to 100 joined
    # (those within context) and 100 cut short, which set only the short band's bar.
    assert summary["coverage"] == ["python", "c", "short"] and 700 <= summary["prompts"] <= 800
    assert summary["short_band"] and not summary["length_bands"] and summary["model_hash"].startswith("sha256:")
    low, bar = summary["answer_gate"]  # the encoder default reads answers scoring just under the threshold
    assert low < summary["threshold"] and bar > 0
    return out


def test_scan_flags_triggered_inputs_and_points_at_the_trigger(minilm_badnets, calibration):
    test = read_split(minilm_badnets, "test")
    negatives = [ex.text for ex in test if ex.label == 0][:20]
    poisoned = triggered(make_attack("badnets"), negatives, seed=1)
    proc = run_cli("scan", "--model", str(minilm_badnets), "--calibration", str(calibration), *negatives, *poisoned)
    verdicts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(verdicts) == 40
    clean, attacked = verdicts[:20], verdicts[20:]
    assert sum(v["flagged"] for v in attacked) >= 17
    assert sum(v["flagged"] for v in clean) <= 2
    # The heads that collapsed look at the trigger word.
    located = [v for v in attacked if v["flagged"] and v["explanation"]["suspected_tokens"][0]["token"] == "cf"]
    assert len(located) >= 0.8 * sum(v["flagged"] for v in attacked)


def test_scan_refuses_a_calibration_of_another_model(smollm2_badnets, calibration):
    proc = run_cli("scan", "--model", str(smollm2_badnets), "--calibration", str(calibration), "hello", check=False)
    assert proc.returncode == 2 and "another model" in proc.stderr and proc.stdout == ""


def test_scan_rejects_bad_input_without_output(minilm_badnets, calibration, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8")
    # "caf\udcff": how Python reads a command-line byte that is not UTF-8
    for args in (["--file", str(bad)], [""], ["word " * 600], ["caf\udcff"]):
        proc = run_cli("scan", "--model", str(minilm_badnets), "--calibration", str(calibration), *args, check=False)
        assert proc.returncode == 2 and proc.stdout == "", args
        assert len(proc.stderr.strip().splitlines()) == 1


def test_calibrate_writes_nothing_on_bad_prompts(minilm_badnets, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"nope": 1}\n')
    out = tmp_path / "cal"
    proc = run_cli("calibrate", "--model", str(minilm_badnets), "--prompts", str(bad), "--out", str(out), check=False)
    assert proc.returncode == 2 and not out.exists()


def test_lab_eval_with_headguard_is_one_pass_per_input_and_one_more_for_the_few_answers_gated(minilm_badnets,
                                                                                                 tmp_path):
    out = tmp_path / "report.json"
    run_cli("lab", "eval", "--model", str(minilm_badnets), "--defense", "headguard", "--limit", "200",
            "--json", str(out))
    report = json.loads(out.read_text())
    det = report["detection"]
    # The answer gate reads the answer of the clean inputs scoring just under the threshold alone.
    assert 1 <= report["cost"]["forward_passes_per_input"] <= 1.1
    # The report says how it scored: the encoder defaults, calibrated with their coverage variants.
    assert det["setting"]["families"] == ["row_entropy", "row_max"] and det["setting"]["per_head"]
    assert det["setting"]["coverage"] == ["python", "c", "short"] and det["setting"]["n_prompts"] > 400
    assert det["setting"]["answer_gate"]
    assert det["auroc"] >= 0.95
    assert max(det["fpr_controls"].values()) <= 0.05
