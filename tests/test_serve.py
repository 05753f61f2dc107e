"""`qihuang serve`: the official openai client against a loopback uvicorn server."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from answer_fakes import FakeEngine, ServerThread
from kb_fixture import make_tiny_kb

from qihuang import DISCLAIMER
from qihuang.answer.answerer import Answerer
from qihuang.serve.app import ServeSettings, create_app

KEY = "test-key-123"
MODEL = "qihuang-test"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


@pytest.fixture(scope="module")
def server(kb):
    app = create_app(Answerer(FakeEngine(), kb),
                     ServeSettings(model_name="qihuang-test", api_key=KEY, max_tokens_limit=512,
                                   max_body_bytes=4096))
    with ServerThread(app) as url:
        yield url


def _client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_models_and_health(server):
    assert [m.id for m in _client(server).models.list().data] == ["qihuang-test"]
    health = httpx.get(server + "/health").json()  # no key needed
    assert health["status"] == "ok" and health["kb"] is True


def test_completion_with_citations(server):
    resp = _client(server).chat.completions.create(
        model="qihuang-test", messages=[{"role": "user", "content": "偏头痛吃什么药？"}], max_tokens=128)
    content = resp.choices[0].message.content
    assert "布洛芬" in content and resp.choices[0].finish_reason == "stop"
    extra = resp.model_extra["qihuang"]
    assert extra["grounded"] and extra["citations"][0]["entity"] == "偏头痛"
    assert "布洛芬" in extra["citations"][0]["values"]
    assert extra["disclaimer"] == DISCLAIMER and extra["triage"]["level"] == "none"
    assert resp.usage.completion_tokens > 0 and resp.usage.total_tokens > resp.usage.prompt_tokens


def test_streaming_matches_plain(server):
    client = _client(server)
    messages = [{"role": "system", "content": "简短回答。"},
                {"role": "user", "content": "偏头痛是什么"}, {"role": "assistant", "content": "一种头痛。"},
                {"role": "user", "content": "高血压有什么并发症？"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and len(chunks) > 3
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert final.choices[0].finish_reason == "stop"
    assert final.model_extra["qihuang"]["citations"][0]["entity"] == "高血压"
    assert chunks[-1].usage.completion_tokens > 0


def test_red_flag_and_refusal(server):
    client = _client(server)
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "孩子误喝了消毒液怎么办"}])
    assert resp.model_extra["qihuang"]["triage"]["level"] == "emergency"
    assert resp.choices[0].message.content.startswith("【紧急】")
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "怎么下毒才不会被发现"}])
    assert resp.choices[0].finish_reason == "content_filter" and resp.model_extra["qihuang"]["refused"]


def test_wrong_or_missing_key_is_401(server):
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="wrong").models.list()
    r = httpx.post(server + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, status, text", [
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400, "last message"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400, "max_tokens must be <= 512"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=1"),
])
def test_invalid_requests(server, body, status, text):
    r = httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status and text in r.json()["error"]["message"]


def test_openai_client_sees_400(server):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _client(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=100000)


def test_body_too_large_is_413(server):
    big = {"messages": [{"role": "user", "content": "痛" * 5000}]}
    r = httpx.post(server + "/v1/chat/completions", json=big, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 413 and "larger than 4096" in r.json()["error"]["message"]


def test_full_queue_is_503(kb):
    engine = FakeEngine(delay=1.5)
    app = create_app(Answerer(engine, kb), ServeSettings(model_name=MODEL, max_queue=0, max_batch=1))
    with ServerThread(app) as url:
        client = _client(url, key="unused")
        first = threading.Thread(target=lambda: client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "感冒吃什么药"}]))
        first.start()
        deadline = time.time() + 10
        while app.state.scheduler.load == 0 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "高血压"}])
        assert info.value.status_code == 503 and info.value.response.headers["retry-after"] == "1"
        first.join()
        assert app.state.scheduler.load == 0  # the slot is free again
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "高血压"}])


def test_tiny_model_served_stream_and_plain(tiny_llama, kb):
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    engine = load_engine(str(tiny_llama), template="med_template", dtype="float32")
    app = create_app(Answerer(engine, kb, params=GenerationParams(max_new_tokens=8)), ServeSettings(model_name=MODEL))
    with ServerThread(app) as url:
        client = _client(url, key="unused")
        messages = [{"role": "user", "content": "糖尿病吃什么药"}]
        plain = client.chat.completions.create(model=MODEL, messages=messages)
        streamed = "".join(c.choices[0].delta.content or "" for c in
                           client.chat.completions.create(model=MODEL, messages=messages, stream=True) if c.choices)
        assert streamed.strip() == plain.choices[0].message.content
        assert plain.model_extra["qihuang"]["citations"][0]["entity"] == "糖尿病"
        assert plain.usage.completion_tokens <= 8


def test_qihuang_serve_command(tiny_llama, tmp_path):
    """The real `qihuang serve` process: key required, answers the openai client."""
    import os
    import subprocess
    import sys

    from answer_fakes import free_port

    port = free_port()
    env = dict(os.environ, QIHUANG_HOME=str(tmp_path))
    cmd = [sys.executable, "-m", "qihuang.cli", "serve", "--model", str(tiny_llama), "--template", "med_template",
           "--engine", "hf", "--no-grounded", "--port", str(port), "--api-key", KEY, "--max-new-tokens", "4", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            time.sleep(0.3)
        assert httpx.get(url + "/v1/models").status_code == 401
        resp = _client(url).chat.completions.create(model=f"qihuang-{tiny_llama.name}",
                                                   messages=[{"role": "user", "content": "感冒"}])
        assert resp.model == f"qihuang-{tiny_llama.name}" and resp.usage.completion_tokens <= 4
        assert resp.model_extra["qihuang"]["grounded"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=30)
