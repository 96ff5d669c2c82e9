import numpy as np
import pytest

TEXTS = ["a short one", "a much longer review that goes on and on about the film and its actors", "fine"]


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_decoder"])
@pytest.mark.parametrize("batch_size", [8, 2])
def test_padded_batch_equals_one_by_one(fixture, batch_size, request):
    """Batches run shortest first; the rows still come back in the inputs' order."""
    clf = request.getfixturevalue(fixture)
    batched = clf.proba(TEXTS, batch_size=batch_size)
    single = np.concatenate([clf.proba([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(-1), 1.0, atol=1e-6)


def test_decoder_reads_the_last_prompt_token_through_left_padding(tiny_decoder):
    batch = tiny_decoder.encode(TEXTS)
    assert tiny_decoder.tokenizer.padding_side == "left"
    assert batch["attention_mask"][:, -1].all()  # every row ends on a real token


def test_decoder_label_logits_are_the_full_forward_last_position(tiny_decoder):
    """The answer is read from the last position's logits alone; they equal a full forward pass's."""
    import torch

    batch = tiny_decoder.encode(TEXTS)
    with torch.no_grad():
        full = tiny_decoder.model(**batch).logits[:, -1, tiny_decoder._label_ids]
        assert torch.allclose(tiny_decoder.label_logits(batch), full, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_encoder", "tiny_decoder"])
def test_an_answers_margin_is_its_top_label_log_probability_over_the_next(fixture, request):
    clf = request.getfixturevalue(fixture)
    logp = np.sort(np.log(clf.proba(TEXTS)), -1)
    np.testing.assert_allclose(clf.answer_margins(TEXTS), logp[:, -1] - logp[:, -2], atol=1e-4)
    assert clf.answer_margins([]).shape == (0,)


def test_decoder_renders_the_template(tiny_decoder):
    assert tiny_decoder.task.render("great") == "Review: great\nSentiment:"
    assert len(tiny_decoder._label_ids) == 2 and len(set(tiny_decoder._label_ids)) == 2


def test_empty_input_list(tiny_encoder):
    assert tiny_encoder.proba([]).shape == (0, 2)


def test_length_batches_group_similar_lengths_and_restore_the_order():
    from headguard.models.batching import in_input_order, length_batches

    texts = ["ccc", "a", "bbbbb", "dd"]
    batches = length_batches(texts, 2)
    assert batches == [[1, 3], [0, 2]]
    assert in_input_order(batches, np.array([10, 30, 0, 20])).tolist() == [0, 10, 20, 30]
