"""A loopback OpenAI-compatible server for tests, with scripted replies and fault injection.

Usage::

    fake = FakeOpenAI(script=[Fault.rate_limit(), "你好"], default="好的")
    with fake as base_url:                      # "http://127.0.0.1:PORT/v1"
        ...call base_url + "/chat/completions"...
    fake.requests[0].body["messages"]           # what the client sent

What the server answers, per request, in this order:

1. the next item of ``script`` (consumed first-in first-out), else
2. ``responder(request)`` when given (``request.attempt`` counts earlier requests with the same
   prompt, so "fail the first try of every prompt" is deterministic under concurrency), else
3. ``default``.

An item is a ``str`` (the assistant text), a ``dict``/``list`` (sent as JSON *text* in the assistant
message, handy for clients that ask the model for JSON), a :class:`Fault`, or ``None`` (use the
default). Endpoints: ``POST /v1/chat/completions`` (also ``stream: true``, server-sent events),
``POST /v1/completions``, ``GET /v1/models``. With ``api_key`` set, requests without
``Authorization: Bearer <api_key>`` get 401.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """A non-normal answer. ``status``/``body`` replace the response; ``delay`` sleeps first;
    ``then`` (with ``status=None``) is the normal item answered after the delay; ``drop`` closes
    the connection without any response."""

    status: int | None = 500
    body: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    then: Any = None
    drop: bool = False

    @classmethod
    def rate_limit(cls, retry_after: float | None = None) -> "Fault":
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(429, _error_body("Rate limit reached", "rate_limit_exceeded"), headers=headers)

    @classmethod
    def server_error(cls, status: int = 500) -> "Fault":
        return cls(status, _error_body("The server had an error", "server_error"))

    @classmethod
    def timeout(cls, delay: float, then: Any = None) -> "Fault":
        """Sleep ``delay`` seconds (longer than the client's timeout), then answer ``then``."""
        return cls(None, delay=delay, then=then)

    @classmethod
    def malformed(cls) -> "Fault":
        """HTTP 200 whose JSON body is cut off."""
        return cls(200, '{"id": "chatcmpl-broken", "choices": [{"message": {"role": "assis')

    @classmethod
    def disconnect(cls) -> "Fault":
        return cls(None, drop=True)


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    index: int  # order of arrival, from 0
    attempt: int  # earlier requests with the same prompt
    status: int | None = None  # what the server answered (None: dropped or still running)


def _error_body(message: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": code, "code": code}})


def _prompt_key(body: Any) -> str:
    if isinstance(body, dict):
        return json.dumps([body.get("messages"), body.get("prompt"), body.get("model")],
                          ensure_ascii=False, sort_keys=True)
    return repr(body)


class FakeOpenAI:
    """Loopback OpenAI-compatible server; a context manager that yields its base URL (…/v1)."""

    def __init__(self, script: list | tuple = (), *, responder: Callable[[Request], Any] | None = None,
                 default: Any = "好的。", model: str = "fake-model", api_key: str | None = None):
        self.script = collections.deque(script)
        self.responder = responder
        self.default = default
        self.model = model
        self.api_key = api_key
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._seen: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        handler = type("_Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        return self.base_url

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- bookkeeping -----------------------------------------------------------------------
    def statuses(self) -> collections.Counter:
        """How many requests got each HTTP status (``None`` = dropped or timed out client-side)."""
        return collections.Counter(r.status for r in self.requests)

    def _register(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[Request, Any]:
        with self._lock:
            key = _prompt_key(body)
            req = Request(method, path, headers, body, len(self.requests), self._seen[key])
            self._seen[key] += 1
            self.requests.append(req)
            if self.script:
                return req, self.script.popleft()
        item = self.responder(req) if self.responder is not None else None
        return req, self.default if item is None else item


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAI

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        if self.path.rstrip("/").endswith("/models"):
            data = {"object": "list", "data": [{"id": self.fake.model, "object": "model", "owned_by": "fake"}]}
            return self._send(200, json.dumps(data))
        return self._send(404, _error_body(f"no route {self.path}", "not_found"))

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        req, item = self.fake._register("POST", self.path, headers, body)
        if self.fake.api_key and headers.get("authorization") != f"Bearer {self.fake.api_key}":
            return self._answer(req, 401, _error_body("Incorrect API key provided", "invalid_api_key"))
        if body is None:
            return self._answer(req, 400, _error_body("request body is not JSON", "invalid_request_error"))
        route = self.path.split("?")[0].rstrip("/")
        if not route.endswith(("/chat/completions", "/completions")):
            return self._answer(req, 404, _error_body(f"no route {self.path}", "not_found"))
        self._reply_item(req, item, chat=route.endswith("/chat/completions"))

    # ---- replies ---------------------------------------------------------------------------
    def _reply_item(self, req: Request, item: Any, chat: bool) -> None:
        if isinstance(item, Fault):
            if item.delay and self.fake._stop.wait(item.delay):
                return  # server shutting down
            if item.drop:
                self.close_connection = True
                self.connection.close()
                return
            if item.status is not None:
                return self._answer(req, item.status, item.body or "", item.headers)
            item = self.fake.default if item.then is None else item.then
            return self._reply_item(req, item, chat)
        if callable(item):
            return self._reply_item(req, item(req), chat)
        if isinstance(item, (dict, list)):
            item = json.dumps(item, ensure_ascii=False)
        text = str(item)
        body = req.body
        if chat and body.get("stream"):
            return self._stream(req, text)
        n = max(1, int(body.get("n") or 1))
        self._answer(req, 200, json.dumps(self._completion(text, body, chat, n), ensure_ascii=False))

    def _completion(self, text: str, body: dict, chat: bool, n: int) -> dict:
        prompt_chars = len(json.dumps(body.get("messages") or body.get("prompt") or "", ensure_ascii=False))
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                        "logprobs": None} for i in range(n)]
        else:
            choices = [{"index": i, "text": text, "finish_reason": "stop", "logprobs": None} for i in range(n)]
        return {"id": f"cmpl-fake-{id(body)}", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model") or self.fake.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_chars, "completion_tokens": len(text),
                          "total_tokens": prompt_chars + len(text)}}

    def _stream(self, req: Request, text: str) -> None:
        req.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        model = req.body.get("model") or self.fake.model
        pieces = [text[i:i + 4] for i in range(0, len(text), 4)] or [""]
        events = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
        try:
            for k, delta in enumerate(events):
                finish = "stop" if k == len(events) - 1 else None
                chunk = {"id": "chatcmpl-fake-stream", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                self._chunk(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _answer(self, req: Request, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        req.status = status
        self._send(status, text, headers)

    def _send(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        data = text.encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.close_connection = True
