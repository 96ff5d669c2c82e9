"""What the model sees for a chat, and OpenAI's response and stream-chunk shapes for local generation."""

from __future__ import annotations

import json
import time
import uuid

from headguard.api.schemas import ChatMessage
from headguard.errors import InputError
from headguard.models.classifier import Classifier


def chat_input(clf: Classifier, messages: list[ChatMessage]) -> str:
    """The text that is generated from for a chat.

    A task model (a lab model: prompt template + verbalizer) answers its last user message through
    its template, exactly as it was calibrated. Any other model sees the chat through its own chat
    template, or the messages' texts one per line when it has none.
    """
    if clf.task.template != "{text}":
        users = [m.text() for m in messages if m.role == "user"]
        return users[-1] if users else messages[-1].text()
    tokenizer = clf.tokenizer
    if getattr(tokenizer, "chat_template", None):
        plain = [{"role": m.role, "content": m.text()} for m in messages]
        try:
            return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # templates raise on role orders they do not support
            raise InputError(f"this model's chat template refuses these messages: {exc}") from None
    return "\n".join(m.text() for m in messages)


def chat_scored(clf: Classifier, messages: list[ChatMessage]) -> list[str]:
    """What is scored for a chat: for a task model every system and user text (a trigger in an earlier
    message must not pass because only the last one is answered), else the rendered chat."""
    if clf.task.template != "{text}":
        texts = [m.text() for m in messages if m.role in ("system", "developer", "user") and m.text().strip()]
        return texts or [chat_input(clf, messages)]
    return [chat_input(clf, messages)]


def _base(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat.") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


def completion_body(chat: bool, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    body = _base("chat.completion" if chat else "text_completion", model)
    choice = {"index": 0, "finish_reason": finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    body["choices"] = [choice]
    body["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
    return body


class StreamChunks:
    """Server-sent events in the shape OpenAI streams: deltas, a final chunk, then [DONE]."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.head = _base("chat.completion.chunk" if chat else "text_completion", model)

    def _event(self, choice: dict) -> str:
        return f"data: {json.dumps({**self.head, 'choices': [{'index': 0, **choice}]})}\n\n"

    def first(self) -> str | None:
        if not self.chat:
            return None
        return self._event({"delta": {"role": "assistant", "content": ""}, "finish_reason": None})

    def piece(self, text: str) -> str:
        if self.chat:
            return self._event({"delta": {"content": text}, "finish_reason": None})
        return self._event({"text": text, "logprobs": None, "finish_reason": None})

    def last(self, finish_reason: str) -> str:
        if self.chat:
            return self._event({"delta": {}, "finish_reason": finish_reason}) + "data: [DONE]\n\n"
        return self._event({"text": "", "logprobs": None, "finish_reason": finish_reason}) + "data: [DONE]\n\n"

    def error(self, message: str) -> str:
        error = {"message": message, "type": "api_error", "code": "generation_failed"}
        return f"data: {json.dumps({'error': error})}\n\n"
