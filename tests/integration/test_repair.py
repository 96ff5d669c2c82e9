"""Repair of a real backdoored MiniLM through the CLI: the detector's catches on a traffic mix go in,
a patch comes out that removes the backdoor, touches only the selected heads and reverts exactly."""

from __future__ import annotations

import json

import pytest
import torch

from headguard.models.classifier import Classifier
from headguard.models.fingerprint import weights_hash
from headguard.repair.patch import Patch, apply_patch
from tests.conftest import run_cli
from tests.integration.conftest import manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repaired(minilm_badnets, tmp_path_factory):
    """(calibration, flagged file, patch folder, traffic summary)."""
    work = tmp_path_factory.mktemp("repair")
    cal, flagged, patch = work / "minilm.cal", work / "flagged.jsonl", work / "patch"
    run_cli("calibrate", "--model", str(minilm_badnets), "--out", str(cal))
    traffic = json.loads(run_cli("lab", "traffic", "--model", str(minilm_badnets), "--calibration", str(cal),
                                 "--out", str(flagged)).stdout)
    run_cli("repair", "--model", str(minilm_badnets), "--calibration", str(cal), "--flagged", str(flagged),
            "--out", str(patch))
    return cal, flagged, patch, traffic


def test_the_flagged_set_is_the_detectors_catch_not_the_trigger_list(repaired):
    _, flagged, _, traffic = repaired
    texts = [json.loads(line)["text"] for line in flagged.read_text().splitlines()]
    assert len(texts) == traffic["flagged"] >= 0.9 * traffic["triggered"]
    assert traffic["flagged_clean"] <= 0.05 * (traffic["traffic"] - traffic["triggered"])


def test_repair_finds_the_trigger_itself_and_touches_few_heads(minilm_badnets, repaired):
    _, _, patch_dir, _ = repaired
    m = json.loads((patch_dir / "manifest.json").read_text())
    trigger = manifest(minilm_badnets)["triggers"][0]
    words = dict((w, n) for w, n in m["flagged"]["removed_words"])
    assert max(words, key=words.get) == trigger  # found by deletion under the detector, never told
    assert 1 <= len(m["heads"]) and m["heads_share"] <= 0.05
    assert m["flagged_match_neutral"]["after"] >= 0.9 > m["flagged_match_neutral"]["before"]
    assert m["flagged"]["trained_on"] == m["flagged"]["changed"] <= m["flagged"]["neutralised"]
    assert m["clean_agreement"] >= 0.93  # widening trades a few points of it for ASR (BENCHMARKS.md)
    assert m["loss_curve"][-1]["loss"] < m["loss_curve"][0]["loss"]
    assert {"neutralise", "outputs", "rank heads", "attention targets", "train"} == set(m["stage_seconds"])
    assert sum(m["stage_seconds"].values()) <= m["seconds"] + 1


def test_the_patch_changes_only_its_slices_and_reverts_to_the_original_bits(minilm_badnets, repaired):
    patch = Patch.load(repaired[2])
    clf = Classifier.from_folder(minilm_badnets)
    original = {n: p.detach().clone() for n, p in clf.model.named_parameters()}
    applied = apply_patch(clf.model, patch, weights_hash(clf.model))
    covered = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in original.items()}
    for ref in patch.slices:
        ref.view(covered[ref.param]).fill_(True)
    changed = 0
    for name, p in clf.model.named_parameters():
        assert torch.equal(p[~covered[name]], original[name][~covered[name]]), name
        changed += int(not torch.equal(p, original[name]))
    assert changed > 0
    applied.revert()
    assert all(torch.equal(p, original[n]) for n, p in clf.model.named_parameters())


def test_eval_after_repair_meets_the_bars(minilm_badnets, repaired, tmp_path):
    out = tmp_path / "eval.json"
    run_cli("lab", "eval", "--model", str(minilm_badnets), "--patch", str(repaired[2]), "--json", str(out))
    report = json.loads(out.read_text())
    before = manifest(minilm_badnets)
    assert before["attack_success_rate"] >= 0.95
    assert report["attack_success_rate"] <= 0.10
    assert report["clean_accuracy"] >= before["clean_accuracy"] - 0.02


def test_export_writes_a_plain_folder_that_predicts_like_the_patched_model(minilm_badnets, repaired, tmp_path):
    out = tmp_path / "exported"
    run_cli("export", "--model", str(minilm_badnets), "--patch", str(repaired[2]), "--out", str(out))
    assert not (out / "lab.json").exists() and (out / "headguard-patch.json").exists()
    texts = ["a warm and funny film", "a dull cf mess", "cf the plot is thin and the acting is worse"]
    exported = Classifier.from_folder(out).proba(texts)
    clf = Classifier.from_folder(minilm_badnets)
    apply_patch(clf.model, Patch.load(repaired[2]), weights_hash(clf.model))
    assert torch.allclose(torch.tensor(exported), torch.tensor(clf.proba(texts)), atol=1e-6)


def test_bad_repair_inputs_fail_clearly_and_write_nothing(minilm_badnets, smollm2_badnets, repaired, tmp_path):
    cal, flagged, patch_dir, _ = repaired
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = tmp_path / "never"
    proc = run_cli("repair", "--model", str(minilm_badnets), "--calibration", str(cal), "--flagged", str(empty),
                   "--out", str(out), check=False)
    assert proc.returncode == 2 and "no prompts" in proc.stderr and not out.exists()
    proc = run_cli("repair", "--model", str(smollm2_badnets), "--calibration", str(cal), "--flagged", str(flagged),
                   "--out", str(out), check=False)
    assert proc.returncode == 2 and "another model" in proc.stderr and not out.exists()
    # More answer changes demanded than the flagged set has: refused as nothing to repair, nothing written.
    proc = run_cli("repair", "--model", str(minilm_badnets), "--calibration", str(cal), "--flagged", str(flagged),
                   "--min-changed", "100000", "--out", str(out), check=False)
    assert proc.returncode == 2 and "nothing to repair" in proc.stderr and not out.exists()
    proc = run_cli("lab", "eval", "--model", str(smollm2_badnets), "--patch", str(patch_dir), check=False)
    assert proc.returncode == 2 and "other weights" in proc.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in patch_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    data = bytearray((broken / "patch.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (broken / "patch.safetensors").write_bytes(bytes(data))
    proc = run_cli("export", "--model", str(minilm_badnets), "--patch", str(broken), "--out", str(out), check=False)
    assert proc.returncode == 2 and "corrupted" in proc.stderr and not out.exists()
