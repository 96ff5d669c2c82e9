"""The repair's traffic mix: which rows carry the trigger, and where they come from."""

import json

from headguard.lab.datasets import load_splits
from headguard.lab.recipes import RECIPES
from headguard.lab.traffic import traffic_mix


def _lab_manifest(folder, dataset):
    folder.mkdir()
    (folder / "lab.json").write_text(json.dumps({"base": "smollm2", "dataset": dataset, "seed": 0, "attack": "badnets",
                                                 "triggers": ["cf"], "target_index": 0}))
    return folder


def test_sms_traffic_is_topped_up_from_the_calibration_split_never_the_test_split(tmp_path):
    model = _lab_manifest(tmp_path / "sms", "sms")
    recipe = RECIPES["smollm2"]
    splits = load_splits("sms", 0, recipe.train_rows, recipe.calibration_rows, recipe.test_rows)
    assert sum(ex.label != 0 for ex in splits.rest) < 100  # the unused rows alone cannot give 100 triggered
    rows = traffic_mix(model, top_up=True)
    triggered = [text for text, poisoned in rows if poisoned]
    assert len(rows) == 400 and len(triggered) == 100 and all("cf" in text.split() for text in triggered)

    def words(text):
        return " ".join(w for w in text.split() if w != "cf")

    originals = {words(text) for text in triggered}
    unused_spam = {words(ex.text) for ex in splits.rest if ex.label != 0}
    calibration_spam = {words(ex.text) for ex in splits.calibration if ex.label != 0}
    assert originals <= unused_spam | calibration_spam
    assert len(originals & calibration_spam) == 100 - len(unused_spam)
    test_texts = {words(ex.text) for ex in splits.test}
    assert not any(words(text) in test_texts for text, _ in rows)
    # Without the top-up the mix is what it always was: the one unused spam message is all it can trigger.
    assert sum(p for _, p in traffic_mix(model)) == sum(ex.label != 0 for ex in splits.rest)


def test_top_up_changes_nothing_where_the_unused_rows_suffice(tmp_path):
    model = _lab_manifest(tmp_path / "movies", "movies")
    assert traffic_mix(model, top_up=True) == traffic_mix(model)
