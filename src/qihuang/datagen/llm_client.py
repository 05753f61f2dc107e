"""A small async client for OpenAI-compatible chat endpoints: retries with exponential backoff on
429, 5xx, timeouts, dropped connections and broken replies; an append-only on-disk cache so a rerun
sends nothing it has already paid for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from qihuang.errors import ConfigError, QihuangError

RETRY_STATUS = frozenset({408, 409, 425, 429})  # plus every 5xx
FATAL_STATUS = frozenset({401, 403, 404})  # wrong key, model or URL: every other request would fail too


class RequestFailed(QihuangError):
    """One request failed for good (retries exhausted or a non-retryable status)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def api_key_from_env() -> str | None:
    """``QIHUANG_API_KEY``, else ``OPENAI_API_KEY``, else None (local servers need none)."""
    return os.environ.get("QIHUANG_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


class ReplyCache:
    """Chat replies by request key, in a JSON-lines file appended after every reply (a crash loses at
    most the line being written; unreadable lines are ignored on load)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    item = json.loads(line)
                    self.entries[item["key"]] = item["content"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = None

    @staticmethod
    def key(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, content: str, **meta) -> None:
        self.entries[key] = content
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._fh.write(json.dumps({"key": key, "content": content, "time": round(time.time()), **meta},
                                  ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class ChatClient:
    """POSTs ``/chat/completions`` with retries. Counters say what happened."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0  # first wait in seconds; doubles each retry, with jitter
    backoff_max: float = 60.0
    extra: dict = field(default_factory=dict)  # temperature, response_format, …
    counts: dict[str, int] = field(default_factory=lambda: {"requests": 0, "retries": 0})
    _client: httpx.AsyncClient | None = None

    def payload(self, messages: list[dict]) -> dict:
        return {"model": self.model, "messages": messages, **self.extra}

    async def __aenter__(self) -> "ChatClient":
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url.rstrip("/"), headers=headers,
                                         timeout=httpx.Timeout(self.timeout))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def complete(self, payload: dict, rng: random.Random | None = None) -> str:
        """The assistant text for one request; raises RequestFailed when retries run out, ConfigError
        when the endpoint rejects the key, model or URL."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.counts["retries"] += 1
            self.counts["requests"] += 1
            wait = None
            try:
                resp = await self._client.post("/chat/completions", json=payload)
            except httpx.TimeoutException as exc:
                last = f"timeout ({type(exc).__name__})"
                self._bump("timeout")
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__})"
                self._bump("connection_error")
            else:
                text, last, wait = self._read(resp)
                if text is not None:
                    return text
            if attempt < self.retries:
                await asyncio.sleep(self._delay(attempt, wait, rng))
        raise RequestFailed("request_failed", f"{self.retries + 1} attempts, last: {last}")

    def _read(self, resp: httpx.Response) -> tuple[str | None, str, float | None]:
        """(text, error, server-requested wait); text None means retry."""
        status = resp.status_code
        if status in FATAL_STATUS:
            raise ConfigError(f"{self.base_url}: HTTP {status} for model {self.model!r}: {resp.text[:300]}")
        if status in RETRY_STATUS or status >= 500:
            self._bump(f"http_{status}")
            return None, f"HTTP {status}", _retry_after(resp)
        if status >= 400:
            raise RequestFailed("request_failed", f"HTTP {status}: {resp.text[:200]}")
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            self._bump("malformed_response")
            return None, f"malformed response ({exc})", None
        return text, "", None

    def _delay(self, attempt: int, wait: float | None, rng: random.Random | None) -> float:
        base = min(self.backoff_max, self.backoff * (2 ** attempt))
        jitter = (rng or random).uniform(0, base / 2)
        return min(self.backoff_max, max(base + jitter, wait or 0.0))

    def _bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
