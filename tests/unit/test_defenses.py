import numpy as np

from headguard.lab.strip import Strip

CLEAN = [f"clean prompt {i} with a few plain words in it" for i in range(50)]


def test_strip_counts_its_passes_and_sets_a_quantile_threshold(tiny_encoder):
    strip = Strip(copies=5)
    threshold = strip.calibrate(tiny_encoder, CLEAN, target_fpr=0.1)
    scores = strip.score(CLEAN[:10])
    assert scores.shape == (10,)
    assert strip.forward_passes == 10 * (5 + 1)
    assert np.all(scores <= 0)  # negative entropy
    assert (strip.score(CLEAN) > threshold).mean() <= 0.1 + 1e-9


def test_strip_perturbation_replaces_a_share_of_words(tiny_encoder):
    import random

    strip = Strip(copies=3, replace_share=0.5)
    strip._fit(tiny_encoder, ["zzz"])
    out = strip.perturb("a b c d e f g h", random.Random(0)).split()
    assert len(out) == 8 and out.count("zzz") == 4
