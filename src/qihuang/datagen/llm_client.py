"""The synthesis client: chat completions through the ``openai`` client (:func:`qihuang.llm.openai_client`:
retries, backoff, ``Retry-After`` and timeouts are the client's) with counters for the run's
statistics, and an append-only on-disk cache so a rerun sends nothing it has already paid for.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from qihuang.llm import MalformedReply, RequestFailed, Traffic, api_key_from_env, failure, openai_client, reply_text

__all__ = ["ChatClient", "ReplyCache", "RequestFailed", "api_key_from_env"]


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
    """Async chat completions for one model at ``base_url``. ``counts`` says what happened: ``requests``
    (every try sent), ``retries``, ``http_<status>``, ``timeout``, ``connection_error``,
    ``malformed_response``."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 5
    extra: dict = field(default_factory=dict)  # temperature, response_format, …
    _traffic: Traffic = field(default_factory=Traffic)
    _calls: int = 0
    _client: Any = None

    @property
    def counts(self) -> dict[str, int]:
        counts = dict(self._traffic.counts)
        counts.setdefault("requests", 0)
        counts["retries"] = counts["requests"] - self._calls  # the client's retries and re-asked malformed bodies
        return counts

    def note(self, key: str) -> None:
        """Count an event of the caller's (e.g. a reply re-asked for)."""
        self._traffic.add(key)

    def payload(self, messages: list[dict]) -> dict:
        return {"model": self.model, "messages": messages, **self.extra}

    async def __aenter__(self) -> ChatClient:
        self._client = openai_client(self.base_url, self.api_key, timeout=self.timeout, max_retries=self.retries,
                                     asynchronous=True, traffic=self._traffic)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(self, payload: dict) -> str:
        """The assistant text for one request; raises RequestFailed when the client gives up,
        ConfigError when the endpoint rejects the key, model or URL. A malformed body (which the
        client does not retry) is asked again once."""
        self._calls += 1
        last = ""
        for _ in range(2):
            try:
                raw = await self._client.chat.completions.with_raw_response.create(**payload)
                return reply_text(raw)
            except MalformedReply as exc:
                self._traffic.add("malformed_response")
                last = str(exc)
            except openai.OpenAIError as exc:
                raise failure(exc, self.base_url, self.model) from None
        raise RequestFailed("request_failed", last)
