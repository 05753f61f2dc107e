"""FastAPI routes of the OpenAI-compatible API (``qihuang serve``).

``create_app(answerer, ServeSettings(...))`` serves ``GET /health``, ``GET /v1/models``,
``POST /v1/chat/completions`` (plain JSON or server-sent events), ``GET /openapi.json`` and
``GET /docs``. Every answer goes through the :class:`~qihuang.answer.answerer.Answerer`, so it is
triaged, grounded and carries the disclaimer; those details travel in the extra ``qihuang`` field.

Order of checks on a completion: the Bearer key (401, before the body is read), the body size
(413), valid UTF-8 / JSON / no lone surrogates (400), the schema and ranges (422, see
:mod:`qihuang.serve.protocol`), unsupported fields (400), the model id (404 ``model_not_found``),
``max_tokens`` (400), admission (503 with ``Retry-After`` from the queue), the context window (400
``context_length_exceeded`` once old turns are dropped). Every error is OpenAI's
``{"error": {"message", "type", "param", "code"}}``. An admitted request is planned once
(:meth:`~qihuang.answer.answerer.Answerer.plan`: triage, grounding, the prompt fitted to the context
window); non-streamed plans are batched by :class:`~qihuang.serve.batcher.Scheduler`, streamed ones
generated at once; a client that disconnects has its generation stopped.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from qihuang import __version__
from qihuang.answer.plan import ContextTooLong
from qihuang.engines.base import GenerationParams
from qihuang.errors import QihuangError
from qihuang.serve import protocol as P
from qihuang.serve.batcher import Busy, Job, Scheduler


@dataclass
class ServeSettings:
    """Server limits and identity."""

    model_name: str = "qihuang"
    api_key: str | None = None
    max_batch: int = 8  # requests generated together in one batch
    max_queue: int = 32  # requests that may wait beyond one batch (503 beyond)
    batch_wait_ms: float = 10.0  # how long the first request of a batch waits for companions
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


ERRORS = {
    400: "invalid request (bad UTF-8/JSON, unsupported field, max_tokens too large, context exceeded)",
    401: "missing or wrong API key", 404: "unknown model (model_not_found) or path",
    413: "request body too large", 422: "schema or range violation", 503: "queue full; see Retry-After",
}


def _describe(errors) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 beyond, declared or streamed)."""
    too_big = ApiError(413, f"request body larger than {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _bad_string(obj, path: str = "body") -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, else None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if (bad := _bad_string(k, path) or _bad_string(v, f"{path}.{k}")) is not None:
                return bad
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if (bad := _bad_string(v, f"{path}[{i}]")) is not None:
                return bad
    return None


def parse_request(raw: bytes) -> P.ChatCompletionRequest:
    """Bytes -> request: 400 for invalid UTF-8, JSON or text (lone surrogates), 422 for the schema."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not valid UTF-8 ({exc.reason} at byte {exc.start})",
                       code="invalid_unicode") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, too-long integers, too deep nesting
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}", code="invalid_json") from exc
    if (where := _bad_string(data)) is not None:
        raise ApiError(400, f"{where}: text holds a lone surrogate (not valid Unicode)", code="invalid_unicode",
                       param=where.removeprefix("body."))
    try:
        return P.ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, _describe(exc.errors()), code="invalid_request") from exc


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


def _check_fields(req: P.ChatCompletionRequest, settings: ServeSettings) -> None:
    if (name := req.unsupported()) is not None:
        what = P.ChatCompletionRequest.model_fields[name].description or "not supported"
        raise ApiError(400, f"unsupported parameter '{name}': {what}", code="unsupported_parameter", param=name)
    if req.model is not None and req.model != settings.model_name:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {settings.model_name!r}",
                       code="model_not_found", param="model")


def _params(req: P.ChatCompletionRequest, base: GenerationParams, settings: ServeSettings) -> GenerationParams:
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


def _sse(obj) -> str:
    data = (obj.model_dump_json(exclude_none=True) if hasattr(obj, "model_dump_json")
            else json.dumps(obj, ensure_ascii=False))
    return f"data: {data}\n\n"


def _error_of(exc: BaseException) -> dict:
    if isinstance(exc, QihuangError):
        return {"message": str(exc), "type": "invalid_request_error", "code": None}
    return {"message": f"generation failed: {exc}", "type": "server_error", "code": None}


_END = object()


def _start_stream(scheduler: Scheduler, answerer, job: Job) -> asyncio.Queue:
    """Generate ``job``'s answer in a thread now; its pieces, final Answer or error go to the queue.
    The thread frees the job's slot when the generation ends (at the next step once cancelled)."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            job.cancel.set()

    def work() -> None:
        try:
            for item in answerer.stream_plan(job.plan, job.params, job.cancel):
                put(item)
        except BaseException as exc:  # noqa: BLE001 - reported in the stream
            put(exc)
        finally:
            scheduler.release(job)
            put(_END)

    threading.Thread(target=work, name="qihuang-stream", daemon=True).start()
    return queue


async def _stream_events(request: Request, queue: asyncio.Queue, job: Job, model: str,
                         include_usage: bool) -> AsyncIterator[str]:
    """SSE lines of one streamed answer; a disconnect cancels its generation."""
    head = {"id": P._id(), "created": int(time.time()), "model": model}
    try:
        yield _sse(P.ChatCompletionChunk(**head, choices=[P.ChunkChoice(delta=P.Delta(role="assistant", content=""))]))
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=0.2)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            if item is _END:
                break
            if isinstance(item, BaseException):
                yield _sse({"error": _error_of(item)})
                break
            if isinstance(item, str):
                if item:
                    yield _sse(P.ChatCompletionChunk(**head, choices=[P.ChunkChoice(delta=P.Delta(content=item))]))
                continue
            last = P.ChunkChoice(delta=P.Delta(), finish_reason=P.finish_reason(item))
            yield _sse(P.ChatCompletionChunk(**head, choices=[last], qihuang=P.info_of(item)))
            if include_usage:
                yield _sse(P.ChatCompletionChunk(**head, choices=[], usage=P.usage_of(item)))
        yield "data: [DONE]\n\n"
    finally:  # done, disconnected or cancelled: the generation stops at its next step
        job.cancel.set()


async def _wait_or_gone(future: asyncio.Future, request: Request, scheduler: Scheduler, job: Job):
    """The job's Answer, or None when the client disconnected first (the job is then cancelled)."""
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.2)
            if done:
                return future.result()
            if await request.is_disconnected():
                scheduler.cancel(job)
                return None
    finally:
        if not future.done():
            scheduler.cancel(job)


async def _admit_and_plan(scheduler: Scheduler, answerer, job: Job, question: str, history: list[dict],
                          system: str | None, grounded: bool | None) -> Job:
    """Count ``job`` in (503 when full), then make its plan: the history fitted into the context (400
    when even the question alone does not fit)."""
    try:
        scheduler.admit(job)
    except Busy as busy:
        raise ApiError(503, str(busy), type="server_busy", code="queue_full",
                       headers={"Retry-After": str(busy.retry_after)}) from busy
    try:
        job.plan = await run_in_threadpool(answerer.plan, question, history, system, grounded,
                                           job.params.max_new_tokens)
    except ContextTooLong as exc:
        scheduler.release(job)
        raise ApiError(400, str(exc), code="context_length_exceeded", param="messages") from exc
    except QihuangError as exc:
        scheduler.release(job)
        raise ApiError(400, str(exc)) from exc
    except BaseException:
        scheduler.release(job)
        raise
    return job


def key_checker(api_key: str | None):
    """A FastAPI dependency: 401 unless ``Authorization: Bearer <api_key>`` (no-op without a key).
    It runs before the body is read (the completion route reads its body itself)."""
    bearer = HTTPBearer(auto_error=False, description="the server's API key (--api-key), when one is set")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        token = credentials.credentials.strip() if credentials is not None else ""
        if credentials is None or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


def _error_responses(*codes: int) -> dict:
    return {c: {"model": P.ErrorResponse, "description": ERRORS[c]} for c in codes}


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return ApiError(422, _describe(exc.errors()), code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code,
                        headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):  # a bug, never client input
        return ApiError(500, f"internal error: {type(exc).__name__}", type="server_error").response()


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI document with the real request/response/stream shapes and the bearer scheme."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes,
                         description="OpenAI-compatible chat completions, grounded in a medical knowledge base.")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (P.ChatCompletionRequest, P.ChatCompletionChunk):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
    app.openapi_schema = schema
    return schema


DOCS_HTML = """<!doctype html><html><head><title>qihuang API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div><script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({spec: %s, dom_id: "#ui"});</script></body></html>"""

CHAT_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
}
STREAM_CONTENT = {"text/event-stream": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionChunk"},
    "description": "with stream=true: 'data: <ChatCompletionChunk JSON>' events, then 'data: [DONE]'"}}


def create_app(answerer, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``answerer``."""
    settings = settings or ServeSettings()
    app = FastAPI(title="qihuang API", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    scheduler = Scheduler(answerer, settings.max_batch, settings.max_queue, settings.batch_wait_ms / 1000)
    started = int(time.time())
    app.state.scheduler, app.state.settings = scheduler, settings
    app.router.on_shutdown.append(scheduler.close)
    auth = [Depends(key_checker(settings.api_key))]
    _install_handlers(app)

    @app.get("/health")
    async def health():
        """Liveness and load: requests generating now, queued, and the capacity (no key needed)."""
        return {"status": "ok", "model": settings.model_name, "kb": answerer.kb is not None,
                "queue": scheduler.stats()}

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi():
        return _openapi(app)

    @app.get("/docs", dependencies=auth, include_in_schema=False)
    async def docs():
        return HTMLResponse(DOCS_HTML % json.dumps(_openapi(app)).replace("</", "<\\/"))

    @app.get("/v1/models", dependencies=auth, response_model=P.ModelList, responses=_error_responses(401))
    async def models():
        return P.ModelList(data=[P.ModelCard(id=settings.model_name, created=started)])

    @app.post("/v1/chat/completions", dependencies=auth, response_model=P.ChatCompletion,
              responses={200: {"content": STREAM_CONTENT}, **_error_responses(400, 401, 404, 413, 422, 503)},
              openapi_extra=CHAT_OPENAPI)
    async def chat(request: Request):
        """A chat completion (``stream: true`` for server-sent events); see the module doc for errors."""
        body = parse_request(await read_body(request, settings.max_body_bytes))
        _check_fields(body, settings)
        question, history, system = _conversation(body, settings)
        params = _params(body, answerer.params, settings)
        job = await _admit_and_plan(scheduler, answerer, Job(None, params, stream=body.stream), question, history,
                                    system, body.grounded)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_events(request, _start_stream(scheduler, answerer, job), job, settings.model_name,
                                    include_usage)
            return StreamingResponse(events, media_type="text/event-stream", background=BackgroundTask(job.cancel.set),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            answer = await _wait_or_gone(scheduler.submit(job), request, scheduler, job)
        except QihuangError as exc:
            raise ApiError(400, str(exc)) from exc
        if answer is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        choice = P.Choice(message=P.AssistantMessage(content=answer.text), finish_reason=P.finish_reason(answer))
        return P.ChatCompletion(model=settings.model_name, choices=[choice], usage=P.usage_of(answer),
                                qihuang=P.info_of(answer))

    return app
