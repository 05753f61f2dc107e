"""The OpenAI-compatible wire format (pydantic models), kept apart from the routes.

Only what ``qihuang serve`` implements is modelled: ``/v1/models`` and
``/v1/chat/completions`` (plain and streamed). Answers carry an extra ``qihuang`` object
(grounding, citations, triage, disclaimer) that OpenAI clients keep as an extra field.
Requests may add ``grounded`` (bool), ``top_k`` and ``repetition_penalty``.

Ranges (422 outside them): ``temperature`` [0, 2] (below 0.01 decodes greedily), ``top_p`` (0, 1],
``top_k`` [0, 100000] (0 = off), ``repetition_penalty`` [0.1, 10], ``seed`` [0, 2**63 - 1],
``max_tokens`` >= 1 (the server's ``max_tokens_limit`` gives 400 beyond), ``stop`` at most 4
non-empty strings. Fields OpenAI defines but this server does not implement (:data:`UNSUPPORTED`)
are refused with 400 naming the field rather than ignored; unknown fields are ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qihuang.engines.base import MAX_SEED, REPETITION_PENALTY_RANGE

# field -> the values that mean "not used" (anything else is refused with 400)
UNSUPPORTED: dict[str, tuple] = {
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "functions": (None, []), "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False), "response_format": (None, {"type": "text"}),
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0), "audio": (None,),
    "modalities": (None, ["text"]), "prediction": (None,), "n": (None, 1),
}


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
    model: str | None = Field(default=None, description="the served model id (GET /v1/models); 404 otherwise")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, description="below 0.01: greedy decoding")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=100_000, description="0 disables top-k")
    repetition_penalty: float | None = Field(default=None, ge=REPETITION_PENALTY_RANGE[0],
                                             le=REPETITION_PENALTY_RANGE[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, description="only n=1 is supported")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    grounded: bool | None = Field(default=None, description="ground in the knowledge base (default: the server's)")
    tools: Any = Field(default=None, description="not supported (400)")
    tool_choice: Any = Field(default=None, description="not supported (400)")
    functions: Any = Field(default=None, description="not supported (400)")
    function_call: Any = Field(default=None, description="not supported (400)")
    parallel_tool_calls: Any = None
    response_format: Any = Field(default=None, description='only {"type": "text"}')
    logprobs: Any = Field(default=None, description="not supported (400 unless false)")
    top_logprobs: Any = Field(default=None, description="not supported (400)")
    logit_bias: Any = Field(default=None, description="not supported (400)")
    frequency_penalty: Any = Field(default=None, description="only 0")
    presence_penalty: Any = Field(default=None, description="only 0")
    audio: Any = Field(default=None, description="not supported (400)")
    modalities: Any = Field(default=None, description='only ["text"]')
    prediction: Any = Field(default=None, description="not supported (400)")

    def unsupported(self) -> str | None:
        """The first field set to something this server does not implement, else None."""
        for name, unused in UNSUPPORTED.items():
            value = getattr(self, name)
            if not any(value == u and type(value) is type(u) or value is u for u in unused):
                return name
        return None

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
    """The extra ``qihuang`` field: how the answer was grounded and triaged (``verification``: how its
    claims were checked, when the answerer does that; ``dropped_turns``: old history turns left out
    to fit the model's context)."""

    model_config = ConfigDict(extra="allow")
    grounded: bool
    citations: list[dict]
    triage: dict
    disclaimer: str
    refused: bool
    verification: dict | None = None
    abstained: bool = False  # nothing in the KB and --ungrounded abstain: the model was not called
    dropped_turns: int = 0


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
    """The ``qihuang`` field of an :class:`~qihuang.answer.answerer.Answer`."""
    return QihuangInfo(grounded=answer.grounded, citations=[c.to_dict() for c in answer.citations],
                       triage=answer.triage.to_dict(), disclaimer=answer.disclaimer, refused=answer.refused,
                       verification=answer.verification.to_dict(), abstained=answer.abstained,
                       dropped_turns=answer.dropped_turns)


def usage_of(answer) -> Usage:
    return Usage(prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens,
                 total_tokens=answer.prompt_tokens + answer.completion_tokens)
