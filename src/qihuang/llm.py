"""The one way qihuang talks to an OpenAI-compatible endpoint (data synthesis, the LLM judge).

:func:`openai_client` builds an ``openai`` client: it retries timeouts, dropped connections, HTTP
408/409/429 and 5xx with exponential backoff and honours ``Retry-After``; nothing here retries
what the client already does. :class:`Traffic` counts what went over the wire (requests, failed
statuses, timeouts, connection errors), retries included, for the run's statistics.
"""

from __future__ import annotations

import importlib
import inspect
import os
import threading
from collections import Counter
from typing import Any

from qihuang.errors import ConfigError, QihuangError

NO_KEY = "EMPTY"  # sent when no key is configured (local servers ignore it; the client needs one)
API_KEY_ENV = ("QIHUANG_API_KEY", "OPENAI_API_KEY")
# `openai` is imported where a client is made: importing it takes about 0.5 s, too much for `qihuang --help`


class RequestFailed(QihuangError):
    """One request failed for good (the client's retries exhausted, or a status it does not retry)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class MalformedReply(QihuangError):
    """HTTP 200 whose body is not a chat completion with a text message."""


def api_key_from_env() -> str | None:
    """``QIHUANG_API_KEY``, else ``OPENAI_API_KEY``, else None (local servers need none)."""
    return next((os.environ[n] for n in API_KEY_ENV if os.environ.get(n)), None)


def _httpx() -> Any:
    """The httpx package the installed ``openai`` client is built on (``httpx``, or ``httpx2``)."""
    import openai

    base = inspect.getmro(openai.DefaultHttpxClient)[1]
    return importlib.import_module(base.__module__.split(".")[0])


class Traffic:
    """Counts of what the client sent: ``requests`` (every try), ``http_<status>`` for failed
    statuses, ``timeout`` and ``connection_error``. Thread- and task-safe."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def sent(self, response: Any = None, error: BaseException | None = None) -> None:
        """Count one try: its response (a failed status is counted by status) or its transport error."""
        hx = _httpx()
        self.add("requests")
        if isinstance(error, hx.TimeoutException):
            self.add("timeout")
        elif error is not None:
            self.add("connection_error")
        elif response is not None and response.status_code >= 400:
            self.add(f"http_{response.status_code}")


def _transport(traffic: Traffic, asynchronous: bool) -> Any:
    hx = _httpx()
    if asynchronous:
        class Counted(hx.AsyncBaseTransport):
            def __init__(self) -> None:
                self.inner = hx.AsyncHTTPTransport()

            async def handle_async_request(self, request):
                try:
                    response = await self.inner.handle_async_request(request)
                except hx.TransportError as exc:
                    traffic.sent(error=exc)
                    raise
                traffic.sent(response)
                return response

            async def aclose(self) -> None:
                await self.inner.aclose()
    else:
        class Counted(hx.BaseTransport):  # type: ignore[no-redef]
            def __init__(self) -> None:
                self.inner = hx.HTTPTransport()

            def handle_request(self, request):
                try:
                    response = self.inner.handle_request(request)
                except hx.TransportError as exc:
                    traffic.sent(error=exc)
                    raise
                traffic.sent(response)
                return response

            def close(self) -> None:
                self.inner.close()
    return Counted()


def openai_client(base_url: str, api_key: str | None = None, *, timeout: float = 60.0, max_retries: int = 5,
                  asynchronous: bool = False, traffic: Traffic | None = None) -> Any:
    """An ``openai.OpenAI`` (or ``AsyncOpenAI``) client for ``base_url``; ``api_key`` defaults to
    :func:`api_key_from_env`. ``traffic`` counts every request it sends."""
    import openai

    if timeout <= 0 or max_retries < 0:
        raise ConfigError(f"timeout must be > 0 and retries >= 0, got {timeout} and {max_retries}")
    kwargs: dict[str, Any] = {"base_url": base_url.rstrip("/"), "api_key": api_key or api_key_from_env() or NO_KEY,
                              "timeout": timeout, "max_retries": max_retries}
    if traffic is not None:
        factory = openai.DefaultAsyncHttpxClient if asynchronous else openai.DefaultHttpxClient
        kwargs["http_client"] = factory(transport=_transport(traffic, asynchronous))
    return (openai.AsyncOpenAI if asynchronous else openai.OpenAI)(**kwargs)


def reply_text(raw: Any) -> str:
    """The assistant text of a raw chat-completion response (``with_raw_response``)."""
    try:
        text = raw.parse().choices[0].message.content
    except (ValueError, AttributeError, IndexError, TypeError) as exc:
        raise MalformedReply(f"malformed response ({type(exc).__name__}: {exc})") from None
    if not isinstance(text, str):
        raise MalformedReply("malformed response (content is not a string)")
    return text


def failure(exc: Exception, base_url: str, model: str) -> QihuangError:
    """What an ``openai`` client error means here: a wrong key, model or URL is a :class:`ConfigError`
    (every other request would fail too); anything else is a :class:`RequestFailed`."""
    import openai

    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)):
        return ConfigError(f"{base_url}: HTTP {exc.status_code} for model {model!r}: {exc.message[:300]}")
    if isinstance(exc, openai.APIStatusError):
        return RequestFailed("request_failed", f"HTTP {exc.status_code}: {exc.message[:200]}")
    if isinstance(exc, openai.APITimeoutError):
        return RequestFailed("request_failed", "timeout")
    return RequestFailed("request_failed", f"{type(exc).__name__}: {exc}")
