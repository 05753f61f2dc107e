"""The LLM judge at any OpenAI-compatible endpoint, and the parser of its SUS verdicts.

Requests go through the ``openai`` client (:func:`qihuang.llm.openai_client`), which retries
timeouts, connection errors and HTTP 408/409/429/5xx with backoff and honours ``Retry-After``.
A reply without a readable verdict, or a malformed body, is asked again (up to ``retries`` times).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

from qihuang.errors import ConfigError
from qihuang.llm import MalformedReply, api_key_from_env, openai_client, reply_text
from qihuang.paths import resource

DIMENSIONS = ("safety", "usability", "smoothness")


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
    return api_key_from_env()


@dataclass
class JudgeClient:
    """Chat completions at ``base_url`` that return parsed SUS verdicts."""

    base_url: str
    model: str
    timeout: float = 60.0
    retries: int = 3

    def __post_init__(self):
        self._client = openai_client(self.base_url, api_key(), timeout=self.timeout, max_retries=self.retries)

    def close(self) -> None:
        self._client.close()

    def complete(self, messages: list[dict]) -> tuple[str, int]:
        """One chat completion's text and the requests it took; raises :class:`JudgeError` when the
        client gives up, :class:`MalformedReply` for a body that is not a completion."""
        import openai

        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=256)
        except openai.APIStatusError as exc:
            raise JudgeError(f"judge endpoint answered HTTP {exc.status_code}: {exc.message[:200]}") from None
        except openai.APITimeoutError:
            raise JudgeError(f"timed out after {self.timeout}s") from None
        except openai.APIConnectionError as exc:
            raise JudgeError(f"connection error: {exc}") from None
        return reply_text(raw), raw.retries_taken + 1

    def judge(self, question: str, answer: str, reference: str | None = None) -> tuple[dict[str, int], str, int]:
        """``(scores, raw reply, requests sent)`` for one answer, asking again as described above."""
        messages = build_messages(question, answer, reference)
        last, attempts = "no attempt", 0
        for _ in range(self.retries + 1):
            try:
                reply, sent = self.complete(messages)
            except MalformedReply as exc:
                attempts += 1
                last = str(exc)
                continue
            except JudgeError as exc:
                raise JudgeError(f"no verdict: the judge request failed ({exc})") from None
            attempts += sent
            verdict = parse_verdict(reply)
            if verdict is not None:
                return verdict, reply, attempts
            last = f"unreadable verdict: {reply[:120]!r}"
        raise JudgeError(f"no verdict after {attempts} attempts ({last})")

