"""qihuang.llm: the one openai client factory, its traffic counters and error mapping (fake loopback server)."""

from __future__ import annotations

import openai
import pytest

from fake_openai import Fault, FakeOpenAI
from qihuang.errors import ConfigError
from qihuang.llm import (NO_KEY, MalformedReply, RequestFailed, Traffic, failure, openai_client, reply_text)

MESSAGES = [{"role": "user", "content": "你好"}]


def test_client_retries_honour_retry_after_and_are_counted(monkeypatch):
    monkeypatch.delenv("QIHUANG_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    traffic = Traffic()
    fake = FakeOpenAI(script=[Fault.rate_limit(retry_after=0.01), Fault.disconnect(), "第三次成功"])
    with fake as base_url:
        client = openai_client(base_url, timeout=5.0, max_retries=3, traffic=traffic)
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        client.close()
    assert reply_text(raw) == "第三次成功" and raw.retries_taken == 2
    assert dict(traffic.counts) == {"requests": 3, "http_429": 1, "connection_error": 1}
    assert fake.requests[0].headers["authorization"] == f"Bearer {NO_KEY}"  # no key configured


def test_key_from_env_and_auth_errors_are_config_errors(monkeypatch):
    monkeypatch.setenv("QIHUANG_API_KEY", "sk-env")
    with FakeOpenAI(api_key="sk-right") as base_url:
        client = openai_client(base_url, max_retries=2)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model="m", messages=MESSAGES)
        client.close()
    err = failure(info.value, base_url, "m")
    assert isinstance(err, ConfigError) and "401" in str(err)


def test_exhausted_retries_and_malformed_bodies():
    traffic = Traffic()
    fake = FakeOpenAI(script=[Fault.server_error(502), Fault.server_error(502), Fault.malformed()])
    with fake as base_url:
        client = openai_client(base_url, max_retries=1, traffic=traffic)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="m", messages=MESSAGES)
        err = failure(info.value, base_url, "m")
        raw = client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
        with pytest.raises(MalformedReply):
            reply_text(raw)
        client.close()
    assert isinstance(err, RequestFailed) and "HTTP 502" in str(err)
    assert traffic.counts["http_502"] == 2 and traffic.counts["requests"] == 3
    with pytest.raises(ConfigError, match="retries"):
        openai_client("http://127.0.0.1:9/v1", max_retries=-1)
