"""Tiny random models that share the real MiniLM tokenizer (shipped by a registry package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from headguard.models.bases import base_dir
from headguard.models.classifier import Classifier, load_tokenizer
from headguard.models.task import Task

SENTIMENT = Task(kind="decoder", labels=("negative", "positive"), template="Review: {text}\nSentiment:",
                 verbalizer=(" negative", " positive"))


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    return base_dir("minilm", Path("/nonexistent"))  # the encoder base needs no cache


@pytest.fixture(scope="session")
def tiny_encoder(minilm_folder) -> Classifier:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_folder, "encoder")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, num_labels=2)
    return Classifier(BertForSequenceClassification(config), tokenizer, Task("encoder", ("negative", "positive")))


@pytest.fixture(scope="session")
def tiny_decoder(minilm_folder) -> Classifier:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(minilm_folder, "decoder")
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         pad_token_id=tokenizer.pad_token_id)
    return Classifier(LlamaForCausalLM(config), tokenizer, SENTIMENT)
