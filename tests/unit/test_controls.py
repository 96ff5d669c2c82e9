from headguard.detect.coverage import code_lines
from headguard.lab.attacks import BADNETS_WORDS, make_attack
from headguard.lab.controls import CODE_SNIPPETS, CONTROLS, OTHER_CODE_SNIPPETS, RARE_WORDS, make_controls

TEXTS = [f"this is clean sentence number {i} about a pleasant movie" for i in range(20)]


def test_every_control_changes_every_text_reproducibly():
    a = make_controls(TEXTS, seed=0)
    assert a == make_controls(TEXTS, seed=0)
    assert set(a) == set(CONTROLS)
    for name, out in a.items():
        assert len(out) == len(TEXTS)
        assert all(o != t for o, t in zip(out, TEXTS, strict=True)), name


def test_rare_words_are_never_a_lab_trigger():
    triggers = set(BADNETS_WORDS) | {w for name in ("composite", "synonym") for w in make_attack(name).triggers}
    assert not triggers & set(RARE_WORDS)


def test_long_control_is_several_times_longer():
    out = make_controls(TEXTS, seed=0)["long"]
    assert all(len(o.split()) >= 4 * len(TEXTS[0].split()) for o in out)


def test_other_code_control_is_code_nobody_calibrates_on():
    out = make_controls(TEXTS, seed=0)["other_code"]
    assert all(any(o == f"{t} {s}" for s in OTHER_CODE_SNIPPETS) for o, t in zip(out, TEXTS, strict=True))
    assert not set(OTHER_CODE_SNIPPETS) & set(CODE_SNIPPETS)
    assert not set(OTHER_CODE_SNIPPETS) & {*code_lines("python"), *code_lines("c")}
