"""A tiny random decoder saved as a model folder, with its calibration: the service tier's fast model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from headguard.lab.datasets import load_splits
from headguard.models.bases import base_dir
from headguard.models.classifier import load_tokenizer
from headguard.models.task import Task
from tests.conftest import run_cli
from tests.servers import serve

SENTIMENT = Task(kind="decoder", labels=("negative", "positive"), template="Review: {text}\nSentiment:",
                 verbalizer=(" negative", " positive"))
ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def clean_texts() -> list[str]:
    splits = load_splits("movies", seed=1, train=0, calibration=120, test=60)
    return [ex.text for ex in splits.calibration + splits.test]


def _save_and_calibrate(folder: Path, model, tokenizer, task: Task, prompts: list[str],
                        *options: str) -> tuple[Path, Path]:
    """Saves a model folder as `headguard serve` loads it, and calibrates it through the CLI."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    task.save(folder)
    prompt_file = folder.parent / f"{folder.name}.calibration.jsonl"
    prompt_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in prompts))
    calibration = folder.parent / f"{folder.name}.calibration.safetensors"
    run_cli("calibrate", "--model", str(folder), "--prompts", str(prompt_file), "--out", str(calibration), *options)
    return folder, calibration


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, clean_texts) -> tuple[Path, Path]:
    """(model folder, calibration file): a 2-layer Llama with MiniLM's tokenizer and a sentiment task."""
    folder = tmp_path_factory.mktemp("tiny-decoder")
    tokenizer = load_tokenizer(base_dir("minilm", Path("/nonexistent")), "decoder")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id)
    # Not the decoder defaults, so that a recalibration that forgot them would show. Content
    # entropy: a random model's rows are near even, so its row evenness barely varies between
    # prompts (spread ~5e-6) and float noise of padding (~2e-7) would move its scores.
    return _save_and_calibrate(folder, LlamaForCausalLM(config), tokenizer, SENTIMENT, clean_texts[:120],
                               "--families", "entropy", "--top-k", "3", "--length-adjust", "--per-head",
                               "--no-coverage")


@pytest.fixture(scope="session")
def tiny_encoder_model(tmp_path_factory, clean_texts) -> tuple[Path, Path]:
    """(model folder, calibration file): a 2-layer BERT sentiment classifier with MiniLM's tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = load_tokenizer(base_dir("minilm", Path("/nonexistent")), "encoder")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    task = Task(kind="encoder", labels=("negative", "positive"))
    return _save_and_calibrate(folder, BertForSequenceClassification(config), tokenizer, task, clean_texts[:60])


@pytest.fixture(scope="session")
def server(tiny_model, tmp_path_factory):
    """The guard on the tiny model: admin enabled, a wide reject band so that some inputs are rejected."""
    folder, calibration = tiny_model
    env = {"HEADGUARD_CALIBRATION": str(calibration), "HEADGUARD_ADMIN_TOKEN": ADMIN_TOKEN,
           "HEADGUARD_REJECT_FPR": "0.2", "HEADGUARD_ROUTE_FPR": "0.4", "HEADGUARD_MAX_NEW_TOKENS": "8",
           "HEADGUARD_MAX_INPUTS": "16", "HEADGUARD_MAX_INPUT_CHARS": "2000"}
    with serve(folder, tmp_path_factory.mktemp("logs"), env, name="tiny") as s:
        yield s


def texts_by_decision(url: str, texts: list[str], need: tuple[str, ...] = ("allow", "reject")) -> dict[str, str]:
    """One text per decision the server reaches on `texts`, found through its own scan endpoint."""
    found: dict[str, str] = {}
    for i in range(0, min(len(texts), 96), 16):
        batch = texts[i : i + 16]
        results = httpx.post(f"{url}/v1/guard/scan", json={"input": batch}, timeout=60).json()["results"]
        for text, result in zip(batch, results, strict=True):
            found.setdefault(result["decision"], text)
    assert set(need) <= found.keys(), found
    return found
