import json

import pytest

from headguard.lab.datasets import DATASETS, MAX_WORDS, load_splits
from headguard.lab.recipes import RECIPES
from headguard.lab.traffic import traffic_mix


@pytest.mark.parametrize("name", list(DATASETS))
def test_splits_are_disjoint_balanced_and_reproducible(name):
    a = load_splits(name, seed=3, train=400, calibration=100, test=100)
    b = load_splits(name, seed=3, train=400, calibration=100, test=100)
    assert a == b
    texts = [set(ex.text for ex in part) for part in (a.train, a.calibration, a.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    labels = [ex.label for ex in a.train]
    assert set(labels) == {0, 1}
    assert abs(sum(labels) - len(labels) / 2) <= 1  # both classes are large enough for 200 each
    assert all(len(ex.text.split()) <= MAX_WORDS for ex in a.train)


def test_another_seed_gives_other_rows():
    a = load_splits("movies", seed=0, train=100, calibration=10, test=10)
    b = load_splits("movies", seed=1, train=100, calibration=10, test=10)
    assert [ex.text for ex in a.train] != [ex.text for ex in b.train]


def test_small_class_shrinks_every_split_proportionally():
    s = load_splits("sms", seed=0, train=2000, calibration=400, test=600)
    spam = [sum(ex.label for ex in part) for part in (s.train, s.calibration, s.test)]
    assert 0 < spam[1] < 200 and 0 < spam[2] < 300  # spam is the small class
    assert spam[0] / spam[2] == pytest.approx(1000 / 300, rel=0.05)


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
