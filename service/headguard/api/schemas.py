"""Request bodies. OpenAI-compatible ones keep unknown fields, which are passed on to the upstream."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class ScanRequest(BaseModel):
    """Either `input` (a text or a list, as OpenAI's moderation endpoint takes it) or chat `messages`."""

    model_config = ConfigDict(extra="forbid")
    input: str | list[str] | None = Field(default=None, description="Text or texts to score.")
    messages: list[ChatMessage] | None = Field(default=None, min_length=1,
                                               description="A chat, scored as the model would see it.")
    model: str | None = Field(default=None, description="Optional; must name the served model.")

    @model_validator(mode="after")
    def _one_of(self) -> ScanRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' or 'messages'")
        return self


class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    n: int | None = Field(default=None, ge=1, le=128)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generation):
    prompt: str | Annotated[list[str], Field(min_length=1)]
