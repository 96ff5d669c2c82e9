"""Local generation stays within the model's context: a position table has no row past it."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from headguard.errors import InputError
from headguard.models.classifier import Classifier, load_tokenizer
from headguard.models.generate import GenerationRequest, Generator
from tests.unit.conftest import SENTIMENT

CONTEXT = 24


@pytest.fixture(scope="module")
def short_context_generator(minilm_folder) -> Generator:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_folder, "decoder")
    # eos outside the vocabulary: greedy decoding never stops early, so only the context can end it
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=4,
                        eos_token_id=tokenizer.vocab_size + 1, pad_token_id=tokenizer.pad_token_id)
    return Generator(Classifier(GPT2LMHeadModel(config), tokenizer, SENTIMENT))


def test_generation_stops_at_the_end_of_the_context(short_context_generator):
    req = GenerationRequest(text="a film", max_new_tokens=100, temperature=0.0)
    out = short_context_generator.generate(req)
    assert out.prompt_tokens + out.completion_tokens == CONTEXT
    assert out.finish_reason == "length"
    pieces: list[str] = []
    streamed = short_context_generator.stream(req, pieces.append, threading.Event())
    assert streamed.completion_tokens == out.completion_tokens and streamed.finish_reason == "length"


def test_a_prompt_that_fills_the_context_is_refused(short_context_generator):
    with pytest.raises(InputError, match="no room to answer"):
        short_context_generator.generate(GenerationRequest(text="word " * CONTEXT, max_new_tokens=4))
