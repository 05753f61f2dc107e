"""The OpenAI-compatible wire format (pydantic models), kept apart from the routes.

Only what ``qihuang serve`` implements is modelled: ``/v1/models`` and
``/v1/chat/completions`` (plain and streamed). Answers carry an extra ``qihuang`` object
(grounding, citations, triage, disclaimer) that OpenAI clients keep as an extra field.
Requests may add ``grounded`` (bool), ``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TextPart(BaseModel):
    """A ``{"type": "text", "text": ...}`` content part (other part types are rejected)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    grounded: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        if value is None:
            return []
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or not all(s for s in stops):
            raise ValueError("stop must be at most 4 non-empty strings")
        return stops

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class QihuangInfo(BaseModel):
    """The extra ``qihuang`` field: how the answer was grounded and triaged."""

    grounded: bool
    citations: list[dict]
    triage: dict
    disclaimer: str
    refused: bool


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"


def _id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    qihuang: QihuangInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length", "content_filter"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    qihuang: QihuangInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qihuang"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def finish_reason(answer) -> Literal["stop", "length", "content_filter"]:
    """OpenAI finish reason of an :class:`~qihuang.answer.answerer.Answer`."""
    if answer.refused:
        return "content_filter"
    return "length" if answer.finish_reason == "length" else "stop"


def info_of(answer) -> QihuangInfo:
    return QihuangInfo(grounded=answer.grounded, citations=[c.to_dict() for c in answer.citations],
                       triage=answer.triage.to_dict(), disclaimer=answer.disclaimer, refused=answer.refused)


def usage_of(answer) -> Usage:
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                 total_tokens=answer.prompt_tokens + answer.completion_tokens)
