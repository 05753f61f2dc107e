"""`qihuang serve` under real clients (issue 15): cancellation, no 5xx for client input, honest usage,
context limits, auth/OpenAPI/error shape, unknown models and fields, batching and Retry-After."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from answer_fakes import FakeEngine, ServerThread
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.engines.base import GenerationParams
from qihuang.engines.load import load_engine
from qihuang.serve.app import ServeSettings, create_app

KEY = "k-15"
MODEL = "qihuang-t"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "感冒吃什么药"}]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


@pytest.fixture(scope="module")
def tiny_engine(tiny_llama):
    return load_engine(str(tiny_llama), template="med_template", dtype="float32", batch_size=8)


@pytest.fixture(scope="module")
def served(tiny_engine, kb):
    """The tiny random model behind the API, with a key and small limits."""
    app = create_app(Answerer(tiny_engine, kb, params=GenerationParams(max_new_tokens=4)),
                     ServeSettings(model_name=MODEL, api_key=KEY, max_tokens_limit=16, max_body_bytes=200_000))
    with ServerThread(app) as url:
        yield url, app


def _client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _post(url, body, headers=AUTH, timeout=30):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + "/v1/chat/completions", content=raw,
                      headers={**headers, "Content-Type": "application/json"}, timeout=timeout)


def _is_error_shape(r) -> bool:
    err = r.json().get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err and "code" in err


# ---- 1. cancellation ------------------------------------------------------------------------
@pytest.fixture
def slow_engine(tiny_llama):
    """The tiny model at ~10 ms per decoding step, never ending early (no end-of-sequence). On the torch
    path (``backend="hf"``): the slowdown is a forward hook on the torch model."""
    engine = load_engine(str(tiny_llama), template="med_template", dtype="float32", batch_size=8, backend="hf")
    engine.model.generation_config.eos_token_id = None
    handle = engine.model.register_forward_pre_hook(lambda *a: time.sleep(0.01))
    yield engine
    handle.remove()


def _wait_idle(url, seconds=5.0) -> dict:
    deadline = time.time() + seconds
    while True:
        health = httpx.get(url + "/health").json()["queue"]
        if health["load"] == 0 or time.time() > deadline:
            return health
        time.sleep(0.05)


def test_dropped_streams_stop_and_free_their_slots(slow_engine):
    app = create_app(Answerer(slow_engine, None, params=GenerationParams(max_new_tokens=800)),
                     ServeSettings(model_name=MODEL, max_queue=4, max_tokens_limit=800))
    with ServerThread(app) as url:
        all_open, drop, firsts = threading.Barrier(9), threading.Event(), []

        def drop_after_first_event(i: int) -> None:  # each would generate for ~8 s if left running
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"问题{i}"}], "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
                lines = r.iter_lines()  # kept alive: dropping the iterator closes the connection
                firsts.append((r.status_code, next(lines)))
                all_open.wait(10)
                drop.wait(10)

        threads = [threading.Thread(target=drop_after_first_event, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        all_open.wait(10)
        busy = httpx.get(url + "/health").json()["queue"]
        drop.set()
        for t in threads:
            t.join()
        assert len(firsts) == 8 and all(code == 200 and line.startswith("data: ") for code, line in firsts)
        assert busy["running"] == 8 and busy["load"] == 8  # all eight were in progress
        start = time.time()
        resp = _client(url).with_options(timeout=10).chat.completions.create(model=MODEL, messages=HI, max_tokens=4)
        assert resp.choices[0].finish_reason == "length" and time.time() - start < 5
        assert _wait_idle(url)["load"] == 0


def test_abandoned_plain_request_is_cancelled(slow_engine):
    app = create_app(Answerer(slow_engine, None, params=GenerationParams(max_new_tokens=800)),
                     ServeSettings(model_name=MODEL, max_queue=0, max_tokens_limit=800))
    with ServerThread(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            _post(url, {"model": MODEL, "messages": HI, "max_tokens": 800}, headers={}, timeout=0.5)
        time.sleep(0.3)
        health = _wait_idle(url, 3)
        assert health["load"] == 0 and health["running"] == 0  # the slot is free within a few steps
        start = time.time()
        r = _post(url, {"model": MODEL, "messages": HI, "max_tokens": 4}, headers={})
        assert r.status_code == 200 and time.time() - start < 5


def test_health_reports_running_and_queued_work(kb):
    answerer = Answerer(FakeEngine(delay=0.6), kb)
    answerer.warm()  # as `qihuang serve` does at start-up: planning at admission does not wait for the linker
    app = create_app(answerer, ServeSettings(model_name=MODEL, max_batch=1, max_queue=3))
    with ServerThread(app) as url:
        threads = [threading.Thread(target=_post, args=(url, {"messages": HI}, {})) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        queue = httpx.get(url + "/health").json()["queue"]
        for t in threads:
            t.join()
    assert queue["running"] == 1 and queue["queued"] == 2 and queue["load"] == 3 and queue["capacity"] == 4


# ---- 2. no 5xx for client input ---------------------------------------------------------------
@pytest.mark.parametrize("extra, status", [
    ({"temperature": 1e-300}, 200),  # below 0.01: greedy
    ({"repetition_penalty": 1e-300}, 422),
    ({"seed": 2**70}, 422),
    ({"seed": -1}, 422),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, 400),
    ({"messages": [{"role": "user", "content": "\ud800"}], "stream": True}, 400),
])
def test_issue_inputs_get_4xx_or_an_answer(served, extra, status):
    r = _post(served[0], {"model": MODEL, "messages": HI, **extra})
    assert r.status_code == status, r.text
    if status != 200:
        assert _is_error_shape(r)


def test_invalid_bytes_and_json_are_400(served):
    for raw in (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', b"{not json", b"[" * 100_00 + b"]" * 100_00,
                b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"):
        r = _post(served[0], raw)
        assert r.status_code == 400 and _is_error_shape(r), r.text


def test_no_5xx_for_any_request(served):
    """Property: whatever the body, the answer is 200 or a 4xx in OpenAI's error shape."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    url = served[0]
    text = st.one_of(st.text(max_size=12), st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                                                   min_size=1, max_size=2))
    number = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), text,
                       st.sampled_from([0, 1, 1e-300, 1e-8, 2**63, 2**64, 100_000, 0.5]))
    part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": text})
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
                                     "content": st.one_of(text, st.none(), st.lists(part, max_size=2), number)})
    fields = {k: number for k in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "max_tokens",
                                  "max_completion_tokens", "n", "frequency_penalty")}
    body = st.fixed_dictionaries(
        {"messages": st.one_of(st.just(HI), st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": text}),
                                                      min_size=1, max_size=2),
                               st.lists(message, max_size=4), number)},
        optional={**fields, "model": st.sampled_from([MODEL, "gpt-4o", "/models/x", None, 3]),
                  "stop": st.one_of(text, st.lists(text, max_size=5), number), "stream": st.booleans(),
                  "logprobs": number, "tools": st.one_of(st.none(), st.just([{"type": "function"}])),
                  "response_format": st.sampled_from([None, {"type": "text"}, {"type": "json_object"}]),
                  "grounded": number, "stream_options": st.one_of(number, st.just({"include_usage": True}))})

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body)
    @example({"messages": HI, "temperature": 1e-300})  # the issue's 500s, always tried first
    @example({"messages": HI, "repetition_penalty": 1e-300, "temperature": 0.7})
    @example({"messages": HI, "seed": 2**70, "temperature": 0.7})
    @example({"messages": [{"role": "user", "content": "\ud800"}], "stream": True})
    def check(payload):
        r = _post(url, json.dumps(payload, ensure_ascii=True).encode())
        assert r.status_code < 500, r.text
        if r.status_code >= 400:
            assert _is_error_shape(r), r.text
        elif payload.get("stream") is True:
            assert r.text.rstrip().endswith("data: [DONE]")

    check()


# ---- 3. honest usage ----------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_usage_and_length_come_from_tokens(served, tiny_engine, stream):
    url, _ = served
    client = _client(url)
    messages = [{"role": "user", "content": "What are the symptoms of migraine?"}]
    prompt = Answerer(tiny_engine, None).plan(messages[0]["content"], grounded=False).prompt.text
    import torch

    enc = tiny_engine.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        new = tiny_engine.model.generate(**enc, max_new_tokens=16, do_sample=False,
                                         pad_token_id=tiny_engine.tokenizer.pad_token_id)[0, enc["input_ids"].shape[1]:]
    if stream:
        chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stream=True,
                                                     extra_body={"grounded": False},
                                                     stream_options={"include_usage": True}))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
        usage = chunks[-1].usage
    else:
        resp = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16,
                                              extra_body={"grounded": False})
        finish, usage = resp.choices[0].finish_reason, resp.usage
    assert len(new) == 16 and tiny_engine.tokenizer.eos_token_id not in new.tolist()  # the limit cut it
    assert finish == "length" and usage.completion_tokens == 16
    assert usage.prompt_tokens == len(tiny_engine.tokenizer(prompt)["input_ids"])


# ---- 4. context ----------------------------------------------------------------------------
def test_long_history_drops_old_turns_keeping_system_and_question(tiny_engine, kb):
    seen: list[str] = []
    original = tiny_engine.generate

    def recording(prompts, params=None, cancels=None):
        seen.extend(p.text for p in prompts)
        return original(prompts, params, cancels)

    tiny_engine.generate = recording
    try:
        app = create_app(Answerer(tiny_engine, kb), ServeSettings(model_name=MODEL, max_tokens_limit=16))
        old = [{"role": r, "content": ("旧的问题" if r == "user" else "旧的回答") + "头痛" * 200}
               for _ in range(6) for r in ("user", "assistant")]
        messages = [{"role": "system", "content": "SYSTEM-RULE 简短回答。"}, *old,
                    {"role": "user", "content": "高血压有什么并发症？"}]
        with ServerThread(app) as url:
            resp = _client(url, "x").chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    finally:
        del tiny_engine.generate
    info = resp.model_extra["qihuang"]
    assert 0 < info["dropped_turns"] < len(old) and info["citations"][0]["entity"] == "高血压"
    assert resp.usage.prompt_tokens <= tiny_engine.context_length - 8
    prompt = seen[-1]
    assert "SYSTEM-RULE" in prompt and "高血压有什么并发症" in prompt and "冠心病" in prompt  # knowledge kept
    assert resp.usage.prompt_tokens == tiny_engine.count_tokens(prompt)


def test_prompt_over_the_context_is_400_with_the_limits(served):
    r = _post(served[0], {"model": MODEL, "messages": [{"role": "user", "content": "头痛" * 6000}], "max_tokens": 8})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded"
    assert "2048" in err["message"] and "max_tokens=8" in err["message"]


# ---- 5. auth, OpenAPI, error shape, models and fields ----------------------------------------------
def test_key_is_checked_before_the_body(served):
    url = served[0]
    assert _post(url, b"{not json", headers={}).status_code == 401
    assert _post(url, b"x" * 250_000, headers={}).status_code == 401  # over the body limit, still 401 first
    r = _post(url, {"messages": []}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _post(url, b"x" * 250_000).status_code == 413


def test_openapi_is_behind_the_key_and_describes_the_api(served):
    url = served[0]
    assert httpx.get(url + "/openapi.json").status_code == 401
    assert httpx.get(url + "/docs").status_code == 401
    assert "swagger" in httpx.get(url + "/docs", headers=AUTH).text.lower()
    doc = httpx.get(url + "/openapi.json", headers=AUTH).json()
    schemes = doc["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    op = doc["paths"]["/v1/chat/completions"]["post"]
    assert op["security"] and {"200", "400", "401", "404", "413", "422", "503"} <= set(op["responses"])
    ok = op["responses"]["200"]["content"]
    assert ok["application/json"]["schema"]["$ref"].endswith("/ChatCompletion")
    assert ok["text/event-stream"]["schema"]["$ref"].endswith("/ChatCompletionChunk")
    assert op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "messages" in doc["components"]["schemas"][ref]["properties"]
    for name in ("ChatCompletion", "ChatCompletionChunk", "ErrorResponse", "ChatMessage"):
        assert name in doc["components"]["schemas"]


def test_every_error_has_the_openai_shape(served):
    url = served[0]
    for r in (httpx.get(url + "/nope"), httpx.get(url + "/v1/chat/completions", headers=AUTH),
              _post(url, {"messages": []}), _post(url, {"messages": HI, "temperature": 9})):
        assert r.status_code in (404, 405, 422) and _is_error_shape(r), r.text


def test_unknown_model_is_404(served):
    for name in ("gpt-4o", "/models/elsewhere"):
        with pytest.raises(openai.NotFoundError) as info:
            _client(served[0]).chat.completions.create(model=name, messages=HI)
        assert info.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("extra, field", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"n": 2}, "n"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
])
def test_unsupported_fields_are_400_naming_the_field(served, extra, field):
    r = _post(served[0], {"model": MODEL, "messages": HI, **extra})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == field and field in err["message"]
    assert _post(served[0], {"model": MODEL, "messages": HI, "response_format": {"type": "text"},
                             "logprobs": False, "n": 1}).status_code == 200


# ---- 6. concurrency ----------------------------------------------------------------------------
class _BatchRecorder(FakeEngine):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[int] = []

    def generate(self, prompts, params=None, cancels=None):
        self.batches.append(len(prompts))
        return super().generate(prompts, params, cancels)


def test_concurrent_requests_are_batched(kb):
    engine = _BatchRecorder(delay=0.4)
    app = create_app(Answerer(engine, kb), ServeSettings(model_name=MODEL, max_batch=8, max_queue=8))
    with ServerThread(app) as url:
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(
            _post(url, {"messages": [{"role": "user", "content": f"高血压{i}"}]}, {}).status_code)) for i in range(12)]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - start
    assert results == [200] * 12 and sum(engine.batches) == 12
    assert max(engine.batches) >= 4 and len(engine.batches) <= 4 and elapsed < 12 * 0.4


def test_retry_after_follows_the_queue():
    from qihuang.serve.batcher import Busy, Job, Scheduler

    class Idle:
        def answer_plans(self, plans, params, cancels):
            return list(plans)

    waits = []
    for max_queue in (0, 4):
        sched = Scheduler(Idle(), max_batch=2, max_queue=max_queue)
        sched.batch_seconds = 3.0
        for i in range(sched.capacity):
            sched.admit(Job(f"q{i}", GenerationParams()))
        with pytest.raises(Busy) as busy:
            sched.admit(Job("late", GenerationParams()))
        waits.append(busy.value.retry_after)
        sched.close()
    assert waits == [3, 9]  # one batch ahead (2 admitted) vs three (6 admitted), 2 per batch, 3 s each


def test_admitted_requests_are_served_in_arrival_order():
    import asyncio

    from qihuang.serve.batcher import Job, Scheduler

    order: list[str] = []
    gate = threading.Event()

    class Recorder:
        def answer_plans(self, plans, params, cancels):
            gate.wait(5)
            order.extend(plans)
            return list(plans)

    async def main():
        sched = Scheduler(Recorder(), max_batch=2, max_queue=8, max_wait=0)
        greedy, sampled = GenerationParams(), GenerationParams(temperature=0.7)
        futures = []
        for i in range(6):
            job = sched.admit(Job(f"q{i}", greedy if i % 3 else sampled))  # a plan stands in as its name
            futures.append(sched.submit(job))
            await asyncio.sleep(0.01)
        gate.set()
        answers = await asyncio.gather(*futures)
        sched.close()
        return answers

    assert asyncio.run(main()) == [f"q{i}" for i in range(6)]
    assert order.index("q0") < order.index("q1") < order.index("q3")  # the oldest request always goes first


# ---- 8. conversation-aware grounding ---------------------------------------------------------
def test_follow_up_is_grounded_in_the_earlier_turns(kb):
    """"那应该吃什么药？" names no entity: the earlier user turn's entity (偏头痛) grounds it, and the
    citations say where it came from."""
    engine = FakeEngine()
    app = create_app(Answerer(engine, kb, params=GenerationParams(max_new_tokens=8)),
                     ServeSettings(model_name=MODEL))
    turns = [{"role": "user", "content": "偏头痛有什么症状？"}, {"role": "assistant", "content": "常见反复发作性头痛。"},
             {"role": "user", "content": "那应该吃什么药？"}]
    with ServerThread(app) as url:
        body = _client(url).chat.completions.create(model=MODEL, messages=turns).model_extra["qihuang"]
        alone = _client(url).chat.completions.create(model=MODEL, messages=turns[-1:]).model_extra["qihuang"]
    assert body["grounded"] and {c["entity"] for c in body["citations"]} == {"偏头痛"}
    assert all(c["attribute"] == "drugs" and c["via"] == "history" and "上文" in c["note"] for c in body["citations"])
    assert "布洛芬" in engine.prompts[0]  # the drugs reached the prompt's knowledge block
    assert not alone["grounded"] and alone["citations"] == []  # without the earlier turn nothing is grounded
