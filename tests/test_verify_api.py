"""`verification` on the HTTP API: plain completions and the final chunk of a stream."""

from __future__ import annotations

import openai
import pytest
from answer_fakes import FakeEngine, ServerThread
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.serve.app import create_app

BAD = "布洛芬缓释胶囊的适应症包括头痛、皮疹和痛经。它也能治疗肺炎。"
QUESTION = [{"role": "user", "content": "布洛芬缓释胶囊的适应症是什么？"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    kb = make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")
    flag = create_app(Answerer(FakeEngine(reply=lambda p: BAD), kb, on_unsupported="flag"))
    drop = create_app(Answerer(FakeEngine(reply=lambda p: BAD), kb))
    with ServerThread(flag) as flag_url, ServerThread(drop) as drop_url:
        yield flag_url, drop_url


def _client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=30)


def test_completion_carries_the_verification(servers):
    flag_url, drop_url = servers
    resp = _client(flag_url).chat.completions.create(model="qihuang", messages=QUESTION)
    v = resp.model_extra["qihuang"]["verification"]
    text = resp.choices[0].message.content
    assert text == BAD and not v["ok"] and v["counts"]["wrong_attribute"] == 1 and v["counts"]["unsupported"] == 1
    assert {text[s["start"]:s["end"]] for s in v["spans"] if s["status"] != "supported"} == {"皮疹", "肺炎"}
    resp = _client(drop_url).chat.completions.create(model="qihuang", messages=QUESTION)
    v = resp.model_extra["qihuang"]["verification"]
    assert v["ok"] and v["dropped"] and "肺炎" not in resp.choices[0].message.content
    assert resp.model_extra["qihuang"]["abstained"] is False


def test_stream_final_chunk_carries_the_verification(servers):
    _, drop_url = servers
    chunks = list(_client(drop_url).chat.completions.create(model="qihuang", messages=QUESTION, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    v = final.model_extra["qihuang"]["verification"]
    assert v["ok"] and v["policy"] == "drop" and "肺炎" not in text and "皮疹" not in text
