"""The fake OpenAI-compatible server answers like the real API and injects the faults it is told to."""

from __future__ import annotations

import json

import httpx
import pytest

from fake_openai import Fault, FakeOpenAI

CHAT = {"model": "m", "messages": [{"role": "user", "content": "你好"}]}


def test_scripted_replies_then_default_and_request_log():
    fake = FakeOpenAI(script=["第一条", {"question": "问", "answer": "答"}], default="默认")
    with fake as base_url, httpx.Client(base_url=base_url) as client:
        texts = [client.post("/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"]
                 for _ in range(3)]
        models = client.get("/models").json()
    assert texts[0] == "第一条"
    assert json.loads(texts[1]) == {"question": "问", "answer": "答"}
    assert texts[2] == "默认"
    assert [r.attempt for r in fake.requests] == [0, 1, 2]
    assert fake.requests[0].body["messages"][0]["content"] == "你好"
    assert models["data"][0]["id"] == "fake-model"


def test_faults_rate_limit_server_error_malformed_and_auth():
    fake = FakeOpenAI(script=[Fault.rate_limit(retry_after=0.5), Fault.server_error(503), Fault.malformed()],
                      api_key="sk-test")
    with fake as base_url, httpx.Client(base_url=base_url, headers={"Authorization": "Bearer sk-test"}) as client:
        r429 = client.post("/chat/completions", json=CHAT)
        r503 = client.post("/chat/completions", json=CHAT)
        bad = client.post("/chat/completions", json=CHAT)
        ok = client.post("/chat/completions", json=CHAT)
        unauth = httpx.post(base_url + "/chat/completions", json=CHAT)
    assert (r429.status_code, r429.headers["retry-after"]) == (429, "0.5")
    assert r503.status_code == 503 and r503.json()["error"]["code"] == "server_error"
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.text)
    assert ok.status_code == 200 and unauth.status_code == 401
    assert fake.statuses()[429] == 1


def test_timeout_and_disconnect_then_recovery():
    fake = FakeOpenAI(script=[Fault.timeout(2.0), Fault.disconnect()], default="恢复")
    with fake as base_url, httpx.Client(base_url=base_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/chat/completions", json=CHAT)
        with pytest.raises(httpx.TransportError):
            client.post("/chat/completions", json=CHAT)
        again = client.post("/chat/completions", json=CHAT)
    assert again.json()["choices"][0]["message"]["content"] == "恢复"


def test_responder_sees_attempts_and_openai_client_streams():
    openai = pytest.importorskip("openai")

    def responder(req):
        return Fault.server_error() if req.attempt == 0 else "第二次才成功"

    fake = FakeOpenAI(responder=responder)
    with fake as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=2)
        reply = client.chat.completions.create(model="m", messages=CHAT["messages"])
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "流式"}],
                                                stream=True)
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert reply.choices[0].message.content == "第二次才成功"
    assert "".join(pieces) == "第二次才成功"
    assert [r.status for r in fake.requests] == [500, 200, 500, 200]
