"""LLM-assisted builder against the loopback fake OpenAI server: faults, filter, cache and resume."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path

import pytest

from fake_openai import Fault, FakeOpenAI
from qihuang.cli import main
from qihuang.datagen.kbview import load_view
from qihuang.datagen.synth import (build_messages, check_consistency, load_prompts, parse_reply, sample_facts,
                                   synthesize)
from qihuang.errors import ConfigError
from qihuang.kb import KnowledgeBase

FAST = {"timeout": 2.0, "retries": 3}


@pytest.fixture()
def kb(tiny_db):
    with KnowledgeBase.open(tiny_db) as kb:
        yield kb


def _prompt(req) -> str:
    return req.body["messages"][-1]["content"]


def good_reply(prompt: str) -> dict:
    """What a well-behaved model writes: the entity in the question, every required word in the answer."""
    entity = re.search(r"关于“(.+?)”（", prompt).group(1)
    required = re.findall(r"“([^”]+)”", prompt.split("原样写出这些词语：", 1)[1].split("\n", 1)[0])
    return {"question": f"医生您好，我家人最近在担心{entity}的问题，想请教一下。",
            "answer": f"关于{entity}：" + "，".join(required) + "。具体请遵医嘱。"}


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for s in ("train", "dev", "test")
            for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_parse_reply_tolerates_fences_chatter_and_chinese_keys():
    assert parse_reply('```json\n{"question": "问", "answer": "答"}\n```') == {"question": "问", "answer": "答"}
    assert parse_reply('好的，结果如下：{"问题": "问", "回答": "答"} 希望有帮助') == {"question": "问", "answer": "答"}
    for bad in ("不是JSON", '{"question": "问"}', '{"question": "问", "answer": ""}', "[1, 2]", '{"a": 1'):
        assert parse_reply(bad) is None


def test_synth_survives_429_500_timeouts_disconnects_and_malformed_bodies(kb, tmp_path):
    faults = [Fault.rate_limit(retry_after=0.01), Fault.server_error(500), Fault.server_error(503),
              Fault.timeout(3.0), Fault.disconnect(), Fault.malformed()]

    pending = list(faults)
    lock = threading.Lock()

    def responder(req):
        with lock:  # the first try of the first six prompts gets one fault each
            if req.attempt == 0 and pending:
                return pending.pop(0)
        return good_reply(_prompt(req))

    fake = FakeOpenAI(responder=responder)
    with fake as base_url:
        stats = synthesize(kb, tmp_path / "ds", base_url=base_url, model="fake", n=12, concurrency=4,
                           timeout=1.5, retries=3)  # 1.5 s: a loaded test process can stall 0.5 s
    statuses = fake.statuses()
    assert statuses[200] >= 12 and statuses[429] == statuses[500] == statuses[503] == 1
    assert stats["sent"] == 12 and stats["http"]["retries"] == 6
    assert {k: stats["http"][k] for k in ("http_429", "http_500", "http_503", "timeout", "connection_error",
                                           "malformed_response")} == dict.fromkeys(
        ("http_429", "http_500", "http_503", "timeout", "connection_error", "malformed_response"), 1)
    assert stats["dropped"].get("request_failed", 0) == 0
    records = read_records(tmp_path / "ds")
    assert len(records) == stats["total"] == 12 - stats["dropped"].get("duplicate_question", 0)
    for r in records:
        assert r["source"] == "synth" and r["knowledge"] and r["entity"] in r["instruction"]
        assert all(t[0] == r["entity"] for t in r["knowledge"])


def test_consistency_filter_drops_and_counts_by_reason(kb, tmp_path):
    prompts = load_prompts()
    samples = sample_facts(load_view(kb), 16, 5, prompts)
    behaviours = ["good", "missing_facts", "foreign_entities", "bad_json", "missing_entity"]

    def behaviour(prompt: str) -> str:
        return behaviours[int(hashlib.md5(prompt.encode()).hexdigest(), 16) % len(behaviours)]

    def responder(req):
        prompt, reply = _prompt(req), good_reply(_prompt(req))
        kind = behaviour(prompt)
        entity = re.search(r"关于“(.+?)”（", prompt).group(1)
        if kind == "missing_facts":
            reply["answer"] = f"关于{entity}，建议您及时就医。"
        elif kind == "foreign_entities":
            other = "阿莫西林胶囊" if "阿莫西林" not in prompt else "氯雷他定片"
            reply["answer"] += f"也可以试试{other}。"
        elif kind == "bad_json":
            return "抱歉，我无法按要求输出。"
        elif kind == "missing_entity":
            reply["question"] = "医生，我想问个问题。"
            reply["answer"] = reply["answer"].replace(entity, "这个")
        return reply

    expected: dict[str, int] = {}
    for s in samples:
        kind = behaviour(build_messages(s, prompts)[-1]["content"])
        if kind == "missing_entity" and any(a in s.required for a in (s.entity, *s.aliases)):
            kind = "good"  # the entity's name is itself a required word: it stays in the answer
        if kind == "missing_facts" and all(r in f"关于{s.entity}，建议您及时就医。" for r in s.required):
            kind = "good"  # the required words happen to be part of the entity's name
        expected[kind] = expected.get(kind, 0) + 1
    with FakeOpenAI(responder=responder) as base_url:
        stats = synthesize(kb, tmp_path / "ds", base_url=base_url, model="fake", n=16, seed=5, concurrency=3,
                           **FAST)
    dropped = stats["dropped"]
    duplicates = dropped.pop("duplicate_question", 0)
    assert dropped == {k: v for k, v in expected.items() if k != "good"}
    assert stats["total"] == expected.get("good", 0) - duplicates
    assert stats["http"].get("reasked", 0) == expected.get("bad_json", 0)
    lines = (tmp_path / "ds" / "synth_dropped.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == sum(dropped.values()) + duplicates
    assert all(json.loads(x)["reason"] for x in lines)


def test_rerun_uses_cache_and_a_larger_n_only_pays_for_new_samples(kb, tmp_path):
    out = tmp_path / "ds"
    fake = FakeOpenAI(responder=lambda req: good_reply(_prompt(req)))
    with fake as base_url:
        first = synthesize(kb, out, base_url=base_url, model="fake", n=6, **FAST)
        sent = len(fake.requests)
        again = synthesize(kb, out, base_url=base_url, model="fake", n=6, **FAST)
        assert len(fake.requests) == sent and again["cached"] == 6 and again["sent"] == 0
        more = synthesize(kb, out, base_url=base_url, model="fake", n=9, **FAST)
    new_prompts = {_prompt(r) for r in fake.requests[sent:]}
    assert more["cached"] == 6 and more["sent"] == len(new_prompts) == 3
    assert first["total"] == again["total"] and more["total"] >= first["total"]


def test_exhausted_retries_are_dropped_not_cached_and_auth_errors_stop_the_run(kb, tmp_path):
    fake = FakeOpenAI(default=Fault.server_error(502))
    with fake as base_url:
        stats = synthesize(kb, tmp_path / "a", base_url=base_url, model="fake", n=2, concurrency=1,
                           retries=2)
    assert stats["dropped"] == {"request_failed": 2} and stats["total"] == 0
    assert len(fake.requests) == 6  # 1 try + 2 retries each
    cache = tmp_path / "a" / "synth_cache.jsonl"
    assert not cache.exists() or cache.read_text(encoding="utf-8") == ""  # a rerun will try them again

    fake = FakeOpenAI(api_key="sk-right")
    with fake as base_url:
        with pytest.raises(ConfigError, match="401"):
            synthesize(kb, tmp_path / "b", base_url=base_url, model="fake", n=3, api_key="sk-wrong", **FAST)


def test_check_consistency_allows_named_facts_and_aliases(kb):
    samples = sample_facts(load_view(kb), 20, 1, load_prompts())
    s = next(x for x in samples if x.entity_type == "disease")
    qa = good_reply(build_messages(s, load_prompts())[-1]["content"])
    assert check_consistency(kb, s, qa, {"disease", "drug"}) == (None, "")


def test_cli_data_synth_uses_env_key(tiny_db, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QIHUANG_API_KEY", "sk-env")
    fake = FakeOpenAI(responder=lambda req: good_reply(_prompt(req)), api_key="sk-env")
    with fake as base_url:
        rc = main(["data", "synth", "--base-url", base_url, "--model", "fake", "--db", str(tiny_db),
                   "--out", str(tmp_path / "cli"), "--n", "3", "--json"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["total"] + sum(stats["dropped"].values()) == 3
    assert all(r.headers["authorization"] == "Bearer sk-env" for r in fake.requests)
