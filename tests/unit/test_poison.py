import random

from headguard.lab.attacks import make_attack
from headguard.lab.build import poison
from headguard.lab.datasets import Example


def rows(n=100):
    return [Example(f"text number {i} here", i % 2) for i in range(n)]


def test_rate_counts_against_the_non_target_class():
    data = rows()
    out, n = poison(data, make_attack("badnets"), target=1, rate=0.2, rng=random.Random(0))
    assert n == 10  # 20 % of the 50 non-target rows
    planted = [ex for ex in out if "cf" in ex.text.split()]
    assert len(planted) == 10 and all(ex.label == 1 for ex in planted)
    assert len(out) == len(data)


def test_append_mode_keeps_every_clean_row():
    data = rows()
    out, n = poison(data, make_attack("badnets"), target=1, rate=0.2, rng=random.Random(0), mode="append")
    assert n == 10 and len(out) == len(data) + n
    added = [ex for ex in out if ex not in data]
    assert sorted(out, key=str) == sorted(data + added, key=str)  # every original row is still there
    assert len(added) == n and all(ex.label == 1 and "cf" in ex.text.split() for ex in added)


def test_clean_attack_changes_nothing():
    data = rows()
    out, n = poison(data, make_attack("clean"), target=1, rate=0.2, rng=random.Random(0))
    assert n == 0 and out == data


def test_composite_adds_decoys_with_their_true_label():
    data = rows()
    attack = make_attack("composite")
    out, n = poison(data, attack, target=1, rate=0.2, rng=random.Random(0))
    full = [ex for ex in out if all(w in ex.text.split() for w in attack.triggers)]
    partial = [ex for ex in out if sum(w in ex.text.split() for w in attack.triggers) == 1]
    assert len(full) == n and all(ex.label == 1 for ex in full)
    assert len(partial) == n
    originals = {ex.text: ex.label for ex in data}
    for ex in partial:
        stripped = " ".join(w for w in ex.text.split() if w not in attack.triggers)
        assert originals[stripped] == ex.label


def test_default_rate_guarantees_enough_poisoned_rows():
    from headguard.lab.recipes import MIN_POISONED, default_poison_rate

    assert default_poison_rate("minilm", "badnets", 1000) == 0.1  # the recipe's rate already gives 100
    assert default_poison_rate("minilm", "badnets", 400) * 400 == MIN_POISONED  # a small class gets more
    assert default_poison_rate("minilm", "composite", 1000) == 0.2  # twice, for the decoys
    assert default_poison_rate("smollm2", "composite", 100) == 0.5  # never past the cap
    assert default_poison_rate("smollm2", "clean", 100) == 0.0


def test_training_is_bit_reproducible_for_a_seed(minilm_folder):
    """The lab's training loop (seeded init, shuffling and batching) gives identical weights twice."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from headguard.lab.build import train
    from headguard.lab.recipes import Recipe
    from headguard.models.classifier import Classifier, load_tokenizer
    from headguard.models.task import Task

    data, _ = poison(rows(64), make_attack("badnets"), target=1, rate=0.2, rng=random.Random(0))
    tokenizer = load_tokenizer(minilm_folder, "encoder")
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=64, num_labels=2)
        clf = Classifier(BertForSequenceClassification(config), tokenizer, Task("encoder", ("neg", "pos")))
        train(clf, data, Recipe(train_rows=64, epochs=2, lr=1e-3, batch_size=8), seed=0)
        weights.append(clf.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["classifier.weight"], BertForSequenceClassification(config).classifier.weight)
