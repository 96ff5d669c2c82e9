"""Captured query rows equal the model's own eager attention, for every supported family."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from headguard.detect.capture import capture_outputs, capture_rows
from headguard.detect.heads import HeadRef, adapter_for

SMALL = dict(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)


def make(family):
    torch.manual_seed(0)
    if family == "bert":
        return BertModel(BertConfig(**SMALL))
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2))
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=1))
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0))


def no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("family", ["bert", "llama", "qwen2", "gpt2"])
def test_rows_match_eager_attention_with_padding(family):
    model = make(family).eval()
    model.config._attn_implementation = "eager"
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    kwargs = dict(input_ids=ids, attention_mask=mask, output_attentions=True)
    if family == "bert":  # right padding, [CLS] query
        mask[1, 5:] = 0
        query = torch.zeros(2, dtype=torch.long)
    else:  # left padding, last-token query
        mask[1, :2] = 0
        query = torch.full((2,), 6)
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with capture_rows(adapter_for(model), [0, 1, 2], query, mask.bool()) as rows, torch.no_grad():
        out = model(**kwargs)
    for layer in range(3):
        expected = out.attentions[layer][torch.arange(2), :, query] * mask[:, None]
        torch.testing.assert_close(rows[layer], expected, atol=1e-6, rtol=1e-5)


def test_stop_early_skips_deeper_layers_and_removes_hooks():
    model = make("llama").eval()
    adapter = adapter_for(model)
    ran = []
    deep = adapter.attention_modules()[2].register_forward_pre_hook(lambda *a: ran.append(2))
    ids = torch.randint(0, 100, (1, 5))
    with capture_rows(adapter, [0, 1], torch.tensor([4]), torch.ones(1, 5, dtype=torch.bool), stop_early=True) as rows:
        model(input_ids=ids)
    deep.remove()
    assert set(rows) == {0, 1} and ran == []
    assert no_hooks(model)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_head_outputs_are_what_the_output_projection_reads_and_can_stop_the_pass(family):
    """Each head's block of the output projection, applied to its output, sums to what the layer's
    attention adds to the residual stream at the query position; a stop at layer 1 skips layer 2."""
    model = make(family).eval()
    adapter = adapter_for(model)
    proj = adapter.output_projection(0)  # layer 1's runs no further than its input: the stop
    written, ran = [], []
    mine = [proj.register_forward_hook(lambda m, a, out: written.append(out[0, 3])),
            adapter.attention_modules()[2].register_forward_pre_hook(lambda *a: ran.append(2))]
    with capture_outputs(adapter, [0, 1], torch.tensor([3]), stop_early=True) as outputs:
        model(torch.randint(0, 100, (1, 5)))
    for handle in mine:
        handle.remove()
    assert set(outputs) == {0, 1} and ran == [] and no_hooks(model)
    o = outputs[0][0].view(adapter.n_heads, adapter.head_dim())
    bias = proj.bias if proj.bias is not None else 0
    per_head = torch.einsum("hwd,hd->hw", adapter.write_matrix(0), o)
    torch.testing.assert_close(per_head.sum(0) + bias, written[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_each_projection_runs_once_per_forward(family):
    """The rows come from the model's own projections: capture adds no projection call."""
    model = make(family).eval()
    adapter = adapter_for(model)
    calls = []
    for module in adapter.attention_modules():
        for proj in set(adapter.projections(module)):
            proj.register_forward_pre_hook(lambda m, a, proj=proj: calls.append(proj))
    ids = torch.randint(0, 100, (1, 5))
    with torch.no_grad():
        model(input_ids=ids)
        plain = len(calls)
        with capture_rows(adapter, [0, 1, 2], torch.tensor([0]), torch.ones(1, 5, dtype=torch.bool)):
            model(input_ids=ids)
    assert len(calls) == 2 * plain


def test_hooks_are_removed_on_error():
    model = make("bert").eval()
    adapter = adapter_for(model)
    with pytest.raises(RuntimeError):
        with capture_rows(adapter, [0], torch.tensor([0]), torch.ones(1, 3, dtype=torch.bool)):
            raise RuntimeError("boom")
    assert no_hooks(model)


def test_gqa_groups_and_head_names():
    adapter = adapter_for(make("llama"))
    assert (adapter.n_heads, adapter.n_kv_heads) == (4, 2)
    assert [adapter.kv_group(h) for h in range(4)] == [0, 0, 1, 1]
    assert str(HeadRef(12, 3)) == "L12H3" and HeadRef.parse("L12H3") == HeadRef(12, 3)


def test_unsupported_family_is_a_clear_error():
    from transformers import T5Config, T5Model

    with pytest.raises(ValueError, match="no head adapter"):
        adapter_for(T5Model(T5Config(vocab_size=10, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2)))
