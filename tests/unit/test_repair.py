"""Head slices, patches and head-masked training on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch

from headguard.detect.heads import adapter_for
from headguard.errors import InputError
from headguard.models.task import Task
from headguard.repair.patch import MANIFEST, TENSORS, Patch, SliceRef, apply_patch
from tests.unit.test_heads import make

FAMILIES = ["bert", "llama", "qwen2", "gpt2"]


def _out(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_a_heads_output_slice_removes_exactly_that_head(family):
    """The output slice of a head is the head: zeroing it equals masking the head's output."""
    model = make(family).eval()
    adapter = adapter_for(model)
    ids = torch.randint(0, 100, (2, 7))
    d = adapter.head_dim()

    def hook(module, args):
        x = args[0].clone()
        x[..., 1 * d : 2 * d] = 0
        return (x, *args[1:])

    handle = adapter.output_projection(1).register_forward_pre_hook(hook)
    masked = _out(model, ids)
    handle.remove()
    with torch.no_grad():
        for p, dim, a, b in adapter.output_slices(1, {1}):
            p.narrow(dim, a, b - a).zero_()
    assert torch.allclose(_out(model, ids), masked, atol=1e-6)


def test_gqa_key_value_rows_are_trained_only_for_whole_groups():
    adapter = adapter_for(make("llama"))  # 4 query heads, 2 KV groups
    attn = adapter.attention_modules()[0]
    partial = {id(p) for p, *_ in adapter.head_slices(0, {0})}
    whole = {id(p) for p, *_ in adapter.head_slices(0, {0, 1})}
    assert id(attn.k_proj.weight) not in partial and id(attn.v_proj.weight) not in partial
    assert id(attn.k_proj.weight) in whole and id(attn.v_proj.weight) in whole
    assert id(attn.q_proj.weight) in partial and id(attn.o_proj.weight) in partial


def _patch_for(model, family, heads=frozenset({0, 2})) -> tuple[Patch, list]:
    adapter = adapter_for(model)
    names = {id(p): n for n, p in model.named_parameters()}
    slices = adapter.head_slices(1, set(heads))
    refs = [SliceRef(names[id(p)], dim, a, b) for p, dim, a, b in slices]
    values = [torch.randn_like(ref.view(p.detach())) for ref, (p, *_) in zip(refs, slices, strict=True)]
    return Patch({"base_hash": "sha256:abc", "heads": [f"L1H{h}" for h in sorted(heads)], "mode": "heads"},
                 refs, values), slices


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_changes_only_the_slices_and_revert_restores_every_bit(family, tmp_path):
    model = make(family)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    patch, _ = _patch_for(model, family)
    patch.save(tmp_path / "p")
    applied = apply_patch(model, Patch.load(tmp_path / "p"), "sha256:abc")
    covered = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in original.items()}
    for ref in patch.slices:
        ref.view(covered[ref.param]).fill_(True)
    for name, p in model.named_parameters():
        assert torch.equal(p[~covered[name]], original[name][~covered[name]]), name  # untouched: bit-identical
    for ref, value in zip(patch.slices, patch.values, strict=True):
        assert torch.equal(ref.view(dict(model.named_parameters())[ref.param]), value)
    applied.revert()
    for name, p in model.named_parameters():
        assert torch.equal(p, original[name]), name


def test_a_patch_for_other_weights_is_refused_and_changes_nothing():
    model = make("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    patch, _ = _patch_for(model, "llama")
    with pytest.raises(InputError, match="other weights"):
        apply_patch(model, patch, "sha256:def")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_a_corrupted_or_foreign_patch_is_a_clear_error(tmp_path):
    model = make("bert")
    patch, _ = _patch_for(model, "bert")
    patch.save(tmp_path / "p")
    data = bytearray((tmp_path / "p" / TENSORS).read_bytes())
    data[-5] ^= 0xFF
    (tmp_path / "p" / TENSORS).write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupted"):
        Patch.load(tmp_path / "p")
    with pytest.raises(InputError, match="missing"):
        Patch.load(tmp_path / "nothing")
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / MANIFEST).write_text(json.dumps({"format": "other"}))
    (tmp_path / "q" / TENSORS).write_bytes(b"")
    with pytest.raises(InputError, match="not a headguard patch"):
        Patch.load(tmp_path / "q")


def test_a_patch_whose_slice_does_not_fit_is_refused_before_any_change():
    model = make("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    patch, _ = _patch_for(model, "llama")
    patch.values[-1] = torch.zeros(3, 3)
    with pytest.raises(InputError, match="slice"):
        apply_patch(model, patch, "sha256:abc")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_head_masked_training_moves_only_the_selected_slices(tiny_decoder, tmp_path):
    """The real training loop, two steps: every parameter outside the heads' slices stays bit-identical."""
    from headguard.detect.calibration import Calibration
    from headguard.detect.detector import Detector, calibrate
    from headguard.repair.train import RepairConfig, Repairer, _Example

    texts = [f"a review of film number {i} that was rather {w}" for i, w in enumerate(["good", "bad"] * 8)]
    cal: Calibration = calibrate(tiny_decoder, texts)
    detector = Detector(tiny_decoder, cal)
    repairer = Repairer(tiny_decoder, detector, RepairConfig(steps=2, batch_size=4, lr=1e-2))
    heads = [(1, 0), (1, 1)]
    slices = repairer._slices(heads)
    model = tiny_decoder.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    examples = [_Example(t + " cf", t) for t in texts[:6]]
    repairer._attention_targets(examples, heads)
    original = repairer._outputs(examples, texts, neutral=True)
    curve = repairer.train(examples, texts, heads, slices, original.neutral, original.clean)
    assert len(curve) == 2 and all(k in curve[0] for k in ("output", "attention", "clean"))
    names = {id(p): n for n, p in model.named_parameters()}
    covered = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for p, dim, a, b in slices:
        covered[names[id(p)]].narrow(dim, a, b - a).fill_(True)
    changed = False
    for name, p in model.named_parameters():
        assert torch.equal(p[~covered[name]], before[name][~covered[name]]), name
        changed |= not torch.equal(p, before[name])
        p.data.copy_(before[name])  # the session-scoped fixture leaves as it came
    assert changed


def test_word_deletions_keep_the_rest_of_the_text_as_it_was():
    from headguard.repair.neutralise import _Words

    words = _Words("  Great  film,\nreally cf good.")
    assert words.without({3}) == "  Great  film,\nreally good."
    assert words.without({4}) == "  Great  film,\nreally cf"
    assert _Words("alone").candidates(64) == []  # the last word is never deleted
    three = _Words("a cf b")
    assert three.candidates(64) == [0, 1, 2] and three.without({1}) == "a b"
    three.dropped = {0, 1}
    assert three.candidates(64) == []


def test_widening_spans_reach_around_the_deleted_words_shortest_first():
    from headguard.repair.neutralise import _spans, _Words

    words = _Words("a b c d e f g")
    words.dropped = {3}
    spans = _spans(words, 2)
    assert {2} in spans and {4} in spans and {1, 2, 4, 5} in spans
    assert all(3 not in span for span in spans)
    assert [len(s) for s in spans] == sorted(len(s) for s in spans)
    assert max(len(s) for s in spans) == 4


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_head_importance_replays_the_blocks_below_a_head_and_matches_full_reruns(kind, minilm_folder):
    """Ranking heads computes only the blocks from each ablated head's layer on, and gets the same
    figures as rerunning the whole model with the head zeroed."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from headguard.detect.detector import Detector, calibrate
    from headguard.models.classifier import Classifier, load_tokenizer
    from headguard.repair.outputs import batched_logprobs, kl
    from headguard.repair.select import ablated, head_importance
    from tests.unit.conftest import SENTIMENT

    # Three layers, so that a replay spans more than one block; large weights, so that one head
    # moves the output measurably.
    torch.manual_seed(1)
    tokenizer = load_tokenizer(minilm_folder, kind)
    shape = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=64, initializer_range=0.3)
    if kind == "encoder":
        model = BertForSequenceClassification(BertConfig(**shape, num_labels=2))
        clf = Classifier(model.eval(), tokenizer, Task("encoder", ("negative", "positive")))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id))
        clf = Classifier(model.eval(), tokenizer, SENTIMENT)
    texts = [f"film {i} was " + "rather " * (i % 4) + w for i, w in enumerate(["good", "bad"] * 6)]
    detector = Detector(clf, calibrate(clf, texts))
    flagged = [t + " cf" * (1 + i % 3) for i, t in enumerate(texts[:7])]
    target = batched_logprobs(clf, texts[:7])
    heads = [(2, 0), (1, 2), (0, 1)]
    first = detector.scorer.adapter.blocks()[0]
    calls = []  # block 0's attention runs only when block 0 computes
    handle = detector.scorer.adapter.attention_modules()[0].register_forward_hook(lambda *args: calls.append(1))
    fast = head_importance(clf, detector, heads, flagged, target, batch_size=3)  # 3 batches, padded
    handle.remove()
    assert len(calls) == 3 * 2  # per batch: the recording pass and the ablation of layer 0
    base = float(kl(target, batched_logprobs(clf, flagged)))
    for layer, head in heads:
        with ablated(detector, layer, head):
            full = base - float(kl(target, batched_logprobs(clf, flagged)))
        assert fast[(layer, head)] == pytest.approx(full, abs=1e-5), (layer, head)
    assert len({round(v, 6) for v in fast.values()}) == len(heads)  # the heads differ: not a vacuous match
    assert not first.__dict__.get("forward")  # the replay left the blocks as they were
