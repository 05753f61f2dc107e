"""A small client for an LLM judge at any OpenAI-compatible ``/chat/completions`` endpoint,
and the parser of its SUS verdicts.

Retries on timeouts, connection errors, HTTP 429/5xx, malformed JSON bodies and replies
without a readable verdict, with exponential backoff (``Retry-After`` honoured, capped).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache

import yaml

from qihuang.errors import ConfigError
from qihuang.paths import resource

DIMENSIONS = ("safety", "usability", "smoothness")
API_KEY_ENV = ("QIHUANG_API_KEY", "OPENAI_API_KEY")


class JudgeError(RuntimeError):
    """The judge gave no usable verdict after all retries."""


@lru_cache(maxsize=1)
def judge_prompt() -> dict:
    """The judge prompt (package data ``resources/judge_prompt.yaml``), checked for its fields."""
    data = yaml.safe_load(resource("judge_prompt.yaml").read_text(encoding="utf-8"))
    for key in ("system", "user", "reference_section", "dimensions"):
        if key not in (data or {}):
            raise ConfigError(f"judge_prompt.yaml: missing field {key!r}")
    return data


def build_messages(question: str, answer: str, reference: str | None = None) -> list[dict]:
    """Chat messages asking the judge to grade one answer."""
    p = judge_prompt()
    ref = p["reference_section"].format(reference=reference) if reference else ""
    user = p["user"].format(question=question, answer=answer or "（空回答）", reference_section=ref)
    return [{"role": "system", "content": p["system"].strip()}, {"role": "user", "content": user}]


_NUM = r"([1-3])(?:\.0+)?(?![\d.])"


def parse_verdict(text: str) -> dict[str, int] | None:
    """SUS scores from a judge reply: a JSON object (possibly fenced or inside prose), or
    lines like "安全性：3分". Returns None unless all three dimensions have a score in 1..3."""
    names = judge_prompt()["dimensions"]
    found: dict[str, int] = {}
    for m in re.finditer(r"\{[^{}]*\}", text or ""):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        for dim in DIMENSIONS:
            value = obj.get(dim, obj.get(names[dim]))
            if isinstance(value, str) and re.fullmatch(r"\s*[1-3](\.0+)?\s*分?\s*", value):
                value = int(float(value.strip().rstrip("分")))
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (1, 2, 3):
                found[dim] = int(value)
        if len(found) == len(DIMENSIONS):
            return found
    found = {}
    for dim in DIMENSIONS:
        label = f"(?:{re.escape(names[dim])}|{dim})"
        m = re.search(rf"{label}[\"'\s]*(?:[:：=]|得分|评分|分数|为)+\s*[\"']?\s*{_NUM}", text or "", re.IGNORECASE)
        if m:
            found[dim] = int(m.group(1))
    return found if len(found) == len(DIMENSIONS) else None


def api_key() -> str | None:
    """The judge API key from ``QIHUANG_API_KEY`` or ``OPENAI_API_KEY`` (never stored in results)."""
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass
class JudgeClient:
    """Posts chat completions to ``base_url`` and returns parsed SUS verdicts."""

    base_url: str
    model: str
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0

    def __post_init__(self):
        import httpx

        headers = {"Content-Type": "application/json"}
        key = api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=self.base_url.rstrip("/"), headers=headers, timeout=self.timeout)

    def close(self) -> None:
        self._http.close()

    def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff * (2 ** attempt)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        time.sleep(min(delay, self.max_backoff))

    def complete(self, messages: list[dict]) -> str:
        """One chat completion's text; raises :class:`JudgeError` on a non-retryable failure."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": 256}
        resp = self._http.post("/chat/completions", json=body)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retry(f"HTTP {resp.status_code}", resp.headers.get("retry-after"))
        if resp.status_code >= 400:
            raise JudgeError(f"judge endpoint answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry(f"malformed response body: {resp.text[:120]!r}") from None

    def judge(self, question: str, answer: str, reference: str | None = None) -> tuple[dict[str, int], str, int]:
        """``(scores, raw reply, attempts)`` for one answer, retrying as described above."""
        import httpx

        messages = build_messages(question, answer, reference)
        last = "no attempt"
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                reply = self.complete(messages)
                verdict = parse_verdict(reply)
                if verdict is not None:
                    return verdict, reply, attempt + 1
                last = f"unreadable verdict: {reply[:120]!r}"
            except _Retry as exc:
                last, retry_after = str(exc), exc.retry_after
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout}s"
            except httpx.TransportError as exc:
                last = f"connection error: {exc}"
            if attempt < self.retries:
                self._sleep(attempt, retry_after)
        raise JudgeError(f"no verdict after {self.retries + 1} attempts ({last})")


class _Retry(Exception):
    def __init__(self, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.retry_after = retry_after
