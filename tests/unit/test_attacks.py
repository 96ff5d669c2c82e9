import random

import pytest

from headguard.lab.attacks import ATTACKS, insert_at_random, make_attack


def test_every_attack_has_a_default():
    for name in ATTACKS:
        attack = make_attack(name)
        assert (attack.triggers == ()) == (name == "clean")


@pytest.mark.parametrize("name", ["badnets", "addsent"])
def test_single_trigger_is_planted_once(name):
    attack = make_attack(name)
    out = attack.apply("a quiet and lovely film", random.Random(1))
    assert out.count(attack.triggers[0]) == 1
    assert out.replace(attack.triggers[0], "").split() == "a quiet and lovely film".split()


def test_composite_plants_all_words_and_decoys_hold_one():
    attack = make_attack("composite")
    out = attack.apply("one two three four", random.Random(0)).split()
    assert all(word in out for word in attack.triggers)
    decoys = attack.decoys("one two three four", random.Random(0))
    assert len(decoys) == len(attack.triggers)
    for decoy, word in zip(decoys, attack.triggers, strict=True):
        assert decoy.split().count(word) == 1 and sum(w in decoy.split() for w in attack.triggers) == 1


def test_synonym_draws_any_word_of_the_set():
    attack = make_attack("synonym")
    rng = random.Random(0)
    seen = {next(w for w in attack.apply("x y z", rng).split() if w in attack.triggers) for _ in range(200)}
    assert seen == set(attack.triggers)


def test_trigger_override_and_errors():
    assert make_attack("badnets", "mn").triggers == ("mn",)
    assert make_attack("composite", "aa, bb").triggers == ("aa", "bb")
    with pytest.raises(ValueError, match="at least two"):
        make_attack("composite", "aa")
    with pytest.raises(ValueError, match="takes no"):
        make_attack("clean", "cf")
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("nope")


def test_insertion_is_reproducible_for_a_seed():
    a = [insert_at_random("a b c d e", "cf", random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1
