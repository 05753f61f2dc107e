"""FastAPI routes of the OpenAI-compatible API (``qihuang serve``).

``create_app(answerer, ServeSettings(...))`` serves ``GET /health``, ``GET /v1/models`` and
``POST /v1/chat/completions`` (plain JSON or server-sent events). Every answer goes through the
:class:`~qihuang.answer.answerer.Answerer`, so it is triaged, grounded and carries the
disclaimer; those details travel in the extra ``qihuang`` field.

Limits: a Bearer key (401 when set and missing/wrong), a request body size (413), a
``max_tokens`` ceiling (400), and a bounded queue: one request is answered at a time,
``max_queue`` more may wait, any further one gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from qihuang import __version__
from qihuang.answer.engine import GenerationParams
from qihuang.errors import QihuangError
from qihuang.serve import protocol as P


@dataclass
class ServeSettings:
    """Server limits and identity."""

    model_name: str = "qihuang"
    api_key: str | None = None
    max_queue: int = 4  # requests that may wait while one is answered
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1 << 20
    max_messages: int = 64


class ApiError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.code, self.param, self.headers = status, type, code, param, headers or {}

    def response(self) -> JSONResponse:
        body = P.ErrorResponse(error=P.ErrorDetail(message=str(self), type=self.type, code=self.code,
                                                   param=self.param))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


class Admission:
    """Counts requests in the server; refuses beyond ``1 + max_queue``."""

    def __init__(self, max_queue: int):
        self.capacity = 1 + max(0, max_queue)
        self.pending = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            if self.pending >= self.capacity:
                raise ApiError(503, f"server busy: {self.pending} requests queued; retry later",
                               type="server_busy", code="queue_full", headers={"Retry-After": "1"})
            self.pending += 1

    def leave(self) -> None:
        with self._lock:
            self.pending -= 1

    def releaser(self):
        """A ``leave`` that acts only once, however many times it is called."""
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                self.leave()

        return release


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes (declared or streamed).

    The body is read here (bounded) and replayed to the app, so chunked uploads are capped too."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = ApiError(413, f"request body larger than {self.limit} bytes", code="body_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_big.response()(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                return await too_big.response()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _describe(errors) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def _conversation(req: P.ChatCompletionRequest, settings: ServeSettings) -> tuple[str, list[dict], str | None]:
    """(question, history messages, system) from the OpenAI message list."""
    if len(req.messages) > settings.max_messages:
        raise ApiError(400, f"at most {settings.max_messages} messages per request", param="messages")
    system = "\n".join(m.text() for m in req.messages if m.role in ("system", "developer")) or None
    turns: list[dict] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            continue
        if turns and turns[-1]["role"] == m.role:  # merge consecutive turns of one role
            turns[-1]["content"] += "\n" + m.text()
        else:
            turns.append({"role": m.role, "content": m.text()})
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise ApiError(400, "the last message must be a non-empty user message", param="messages")
    return turns[-1]["content"], turns[:-1], system


def _params(req: P.ChatCompletionRequest, base: GenerationParams, settings: ServeSettings) -> GenerationParams:
    if req.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    wanted = req.requested_max_tokens()
    if wanted is not None and wanted > settings.max_tokens_limit:
        raise ApiError(400, f"max_tokens must be <= {settings.max_tokens_limit}", param="max_tokens")
    try:
        return GenerationParams(
            max_new_tokens=min(wanted or base.max_new_tokens, settings.max_tokens_limit),
            temperature=base.temperature if req.temperature is None else req.temperature,
            top_p=base.top_p if req.top_p is None else req.top_p,
            top_k=base.top_k if req.top_k is None else req.top_k,
            repetition_penalty=base.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
            stop=list(req.stop or []), seed=req.seed)
    except QihuangError as exc:
        raise ApiError(400, str(exc)) from exc


def with_verification(payload: dict, answer) -> dict:
    """``payload`` with the answer's verification (and abstention) in its ``qihuang`` field."""
    info = payload.setdefault("qihuang", {})
    info["verification"] = answer.verification.to_dict() if getattr(answer, "verification", None) else None
    info["abstained"] = bool(getattr(answer, "abstained", False))
    return payload


def _sse(obj) -> str:
    data = (obj.model_dump_json(exclude_none=True) if hasattr(obj, "model_dump_json")
            else json.dumps(obj, ensure_ascii=False))
    return f"data: {data}\n\n"


def _stream_events(answerer, question, history, system, params, grounded, model, include_usage,
                   release) -> Iterator[str]:
    """SSE lines of one streamed answer; ``release`` frees the queue slot however it ends."""
    head = {"id": P._id(), "created": int(time.time()), "model": model}
    try:
        yield _sse(P.ChatCompletionChunk(**head, choices=[P.ChunkChoice(delta=P.Delta(role="assistant", content=""))]))
        for item in answerer.stream(question, history=history, system=system, grounded=grounded, params=params):
            if isinstance(item, str):
                if item:
                    yield _sse(P.ChatCompletionChunk(**head, choices=[P.ChunkChoice(delta=P.Delta(content=item))]))
                continue
            last = P.ChunkChoice(delta=P.Delta(), finish_reason=P.finish_reason(item))
            yield _sse(with_verification(P.ChatCompletionChunk(**head, choices=[last], qihuang=P.info_of(item))
                                         .model_dump(exclude_none=True), item))
            if include_usage:
                yield _sse(P.ChatCompletionChunk(**head, choices=[], usage=P.usage_of(item)))
        yield "data: [DONE]\n\n"
    except QihuangError as exc:
        yield _sse({"error": {"message": str(exc), "type": "invalid_request_error"}})
    except Exception as exc:  # noqa: BLE001 - report to the client instead of cutting the stream
        yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error"}})
    finally:
        release()


def check_key(request: Request, api_key: str | None) -> None:
    """401 unless the request carries ``Authorization: Bearer <api_key>`` (no-op without a key)."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                       type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def create_app(answerer, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``answerer``."""
    settings = settings or ServeSettings()
    app = FastAPI(title="qihuang API", version=__version__, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    admission = Admission(settings.max_queue)
    started = int(time.time())
    app.state.admission, app.state.settings = admission, settings

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return ApiError(422, _describe(exc.errors()), code="invalid_request").response()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, "kb": answerer.kb is not None,
                "queue": {"pending": admission.pending, "capacity": admission.capacity}}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request, settings.api_key)
        return P.ModelList(data=[P.ModelCard(id=settings.model_name, created=started)]).model_dump()

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: P.ChatCompletionRequest):
        check_key(request, settings.api_key)
        question, history, system = _conversation(body, settings)
        params = _params(body, answerer.params, settings)
        admission.enter()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            release = admission.releaser()
            events = _stream_events(answerer, question, history, system, params, body.grounded,
                                    settings.model_name, include_usage, release)
            return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(release),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            answer = await run_in_threadpool(answerer.answer, question, history, system, body.grounded, params)
        except QihuangError as exc:
            raise ApiError(400, str(exc)) from exc
        finally:
            admission.leave()
        choice = P.Choice(message=P.AssistantMessage(content=answer.text), finish_reason=P.finish_reason(answer))
        return with_verification(P.ChatCompletion(model=settings.model_name, choices=[choice],
                                                  usage=P.usage_of(answer), qihuang=P.info_of(answer)).model_dump(),
                                 answer)

    return app
