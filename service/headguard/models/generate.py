"""Text generation with the loaded decoder, so that the guard is a complete endpoint without an upstream."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from headguard.errors import InputError
from headguard.models.classifier import Classifier


@dataclass
class GenerationRequest:
    text: str  # the user text; the model's task template is applied here, as for scoring
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class _Cancelled(StoppingCriteria):
    """Stops generation when the client has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The text before the first stop sequence, and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Generator:
    def __init__(self, clf: Classifier):
        if clf.task.kind != "decoder":
            raise InputError("this model is a classifier and cannot generate")
        self.clf = clf
        self.tokenizer = clf.tokenizer

    def _inputs(self, text: str) -> dict[str, torch.Tensor]:
        prompt = self.clf.task.render(text)
        return {k: v.to(self.clf.device) for k, v in self.tokenizer(prompt, return_tensors="pt").items()
                if k != "token_type_ids"}

    def _budget(self, req: GenerationRequest, n_prompt: int) -> int:
        """New tokens for this request: what it asks for, within the model's context (a model with a
        position table has no position past it)."""
        room = self.clf.context_length - n_prompt
        if room < 1:
            raise InputError(f"the prompt is {n_prompt} tokens and fills this model's context of "
                             f"{self.clf.context_length}: no room to answer")
        return min(req.max_new_tokens, room)

    def _kwargs(self, req: GenerationRequest, inputs: dict, budget: int, cancel: threading.Event | None) -> dict:
        if req.seed is not None:
            torch.manual_seed(req.seed)
        sample = req.temperature > 0
        kwargs = dict(**inputs, max_new_tokens=budget, do_sample=sample,
                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        if sample:
            kwargs.update(temperature=req.temperature, top_p=req.top_p)
        else:  # greedy; silence the sampling defaults of the model's generation config
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if req.stop:
            kwargs.update(stop_strings=list(req.stop), tokenizer=self.tokenizer)
        if cancel is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
        return kwargs

    @torch.no_grad()
    def generate(self, req: GenerationRequest) -> Generation:
        inputs = self._inputs(req.text)
        n_prompt = inputs["input_ids"].shape[1]
        budget = self._budget(req, n_prompt)
        out = self.clf.model.generate(**self._kwargs(req, inputs, budget, None))
        new = out[0, n_prompt:]
        text, stopped = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), req.stop)
        ended = stopped or (len(new) and int(new[-1]) == self.tokenizer.eos_token_id)
        return Generation(text, n_prompt, len(new), "stop" if ended or len(new) < budget else "length")

    @torch.no_grad()
    def stream(self, req: GenerationRequest, emit: Callable[[str], None], cancel: threading.Event) -> Generation:
        """Generates on the calling (model) thread, handing each piece of text to `emit` as it appears.

        Tokenising, seeding and decoding all happen here, on the model thread.
        """
        inputs = self._inputs(req.text)
        n_prompt = inputs["input_ids"].shape[1]
        budget = self._budget(req, n_prompt)
        streamer = _Emitter(self.tokenizer, emit)
        out = self.clf.model.generate(**self._kwargs(req, inputs, budget, cancel), streamer=streamer)
        new = out[0, n_prompt:]
        ended = len(new) and int(new[-1]) == self.tokenizer.eos_token_id
        return Generation("", n_prompt, len(new), "stop" if ended or len(new) < budget else "length")


class _Emitter(TextStreamer):
    """A streamer that hands decoded text to a callback instead of printing it."""

    def __init__(self, tokenizer, emit: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.emit = emit

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.emit(text)
