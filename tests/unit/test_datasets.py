import pytest

from headguard.lab.datasets import DATASETS, MAX_WORDS, load_splits


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
