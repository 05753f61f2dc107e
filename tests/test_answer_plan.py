"""One answer plan per request: the question is linked once (each earlier turn at most once) and the
prompt tokenized once on every front door — API (plain and streamed), web UI, chat, batch inference and
evaluation; context fitting by token budget; streaming verification that is linear in the answer."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from answer_fakes import FakeEngine
from fastapi.testclient import TestClient
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.answer.plan import ContextTooLong
from qihuang.kb.link import Linker
from qihuang.kb.store import KnowledgeBase

FIRST, FOLLOW = "偏头痛吃什么药？", "那应该注意什么？"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


@pytest.fixture
def counts(monkeypatch):
    """``links``: texts given to ``KnowledgeBase.link``; ``found``: texts given to ``Linker.find_entities``."""
    seen = {"links": Counter(), "found": Counter()}
    link, find = KnowledgeBase.link, Linker.find_entities

    def counting_link(self, text, *args, **kwargs):
        seen["links"][text] += 1
        return link(self, text, *args, **kwargs)

    def counting_find(self, text):
        seen["found"][text] += 1
        return find(self, text)

    monkeypatch.setattr(KnowledgeBase, "link", counting_link)
    monkeypatch.setattr(Linker, "find_entities", counting_find)
    return seen


def _answerer(kb, **kw):
    answerer = Answerer(FakeEngine(**kw), kb)
    answerer.warm()
    answerer.engine.tokenizer.calls = 0
    return answerer


def _reset(counts, answerer):
    counts["links"].clear()
    counts["found"].clear()
    answerer.engine.tokenizer.calls = 0


def _once(counts, question: str, earlier: list[str], answerer) -> None:
    assert counts["links"] == Counter({question: 1})  # one retrieval, of the question
    assert counts["found"][question] == 1
    assert all(counts["found"][t] <= 1 for t in earlier)
    assert answerer.engine.tokenizer.calls == 1  # the prompt, tokenized once


def test_api_plain_and_streamed_link_and_tokenize_once(kb, counts):
    from qihuang.serve.app import ServeSettings, create_app

    answerer = _answerer(kb)
    client = TestClient(create_app(answerer, ServeSettings(model_name="m")))
    messages = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": "可以用布洛芬。"},
                {"role": "user", "content": FOLLOW}]
    for stream in (False, True):
        _reset(counts, answerer)
        r = client.post("/v1/chat/completions", json={"messages": messages, "stream": stream})
        assert r.status_code == 200
        _once(counts, FOLLOW, [FIRST], answerer)
    assert "偏头痛" in answerer.engine.prompts[-1]  # the follow-up was grounded in the earlier turn


def test_web_ui_and_chat_link_and_tokenize_once(kb, counts):
    from qihuang.answer.chat import run_chat
    from qihuang.serve.webui import respond

    answerer = _answerer(kb)
    _reset(counts, answerer)
    list(respond(answerer, FOLLOW, [], [[FIRST, "可以用布洛芬。"]], True))
    _once(counts, FOLLOW, [FIRST], answerer)

    _reset(counts, answerer)
    run_chat(answerer, io.StringIO(f"{FIRST}\n{FOLLOW}\n"), io.StringIO(), interactive=False)
    assert counts["links"] == Counter({FIRST: 1, FOLLOW: 1})  # one retrieval per turn
    assert counts["found"][FOLLOW] == 1 and counts["found"][FIRST] <= 2  # its turn, then once as history
    assert answerer.engine.tokenizer.calls == 2


def test_infer_and_eval_link_and_tokenize_once_per_question(kb, counts, tmp_path):
    from qihuang.answer.infer import run_infer
    from qihuang.eval import run

    answerer = _answerer(kb)
    questions = [FIRST, "高血压应该去哪个科？", "糖尿病有什么症状？"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"instruction": q}, ensure_ascii=False) + "\n" for q in questions),
                   encoding="utf-8")
    _reset(counts, answerer)
    run_infer(src, tmp_path / "out.jsonl", answerer, batch_size=2, progress=False)
    assert counts["links"] == Counter(dict.fromkeys(questions, 1))
    assert all(counts["found"][q] == 1 for q in questions) and answerer.engine.tokenizer.calls == 3

    data = tmp_path / "openqa.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "question": q, "answer": "多休息。"}, ensure_ascii=False) + "\n"
                            for i, q in enumerate(questions)), encoding="utf-8")
    _reset(counts, answerer)
    run("openqa", data, answerer=answerer, out_dir=tmp_path / "eval", progress=False)
    assert counts["links"] == Counter(dict.fromkeys(questions, 1))
    assert all(counts["found"][q] == 1 for q in questions) and answerer.engine.tokenizer.calls == 3


class _CountingTokenizer:
    """A tokenizer that records the texts it is called on (everything else is the real one's)."""

    def __init__(self, tokenizer):
        self._tokenizer, self.texts = tokenizer, []

    def __call__(self, text, *args, **kwargs):
        self.texts.append(text)
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_generation_reuses_the_plans_token_ids(kb, tiny_llama):
    """A real engine: encoding the plan's prompt is its only tokenization; generation (batched and
    streamed) decodes from the plan's ids, which usage counts."""
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    engine = load_engine(str(tiny_llama), template="med_template", dtype="float32")
    engine.tokenizer = counting = _CountingTokenizer(engine.tokenizer)
    answerer = Answerer(engine, kb, params=GenerationParams(max_new_tokens=4))
    plan = answerer.plan(FIRST)
    answer = answerer.answer_plans([plan])[0]
    streamed = list(answerer.stream_plan(answerer.plan(FIRST)))[-1]
    assert counting.texts.count(plan.prompt.text) == 2  # once per plan (the batch's, the stream's), never again
    assert answer.prompt_tokens == streamed.prompt_tokens == plan.prompt.tokens
    assert list(plan.prompt.ids) == counting(plan.prompt.text)["input_ids"]


# ---- context fitting ---------------------------------------------------------------------------
def test_old_turns_are_dropped_to_fit_and_reported(kb, counts):
    answerer = _answerer(kb, context_length=400)
    history = [[f"第{i}个旧问题" + "头晕" * 40, "旧的回答" + "多休息" * 20] for i in range(6)]
    _reset(counts, answerer)
    plan = answerer.plan(FIRST, history, max_new_tokens=64)
    assert 0 < plan.dropped_turns < 12 and plan.dropped_turns % 2 == 0  # whole turns, oldest first
    assert plan.prompt.tokens <= 400 - 64 and FIRST in plan.prompt.text
    assert history[-1][0] in plan.prompt.text and history[0][0] not in plan.prompt.text
    assert counts["links"] == Counter({FIRST: 1})  # fitting re-renders, it does not re-plan
    assert answerer.engine.tokenizer.calls <= 1 + 4  # one try, then a binary search over 6 turns
    answer = answerer.answer_plans([plan])[0]
    assert answer.dropped_turns == plan.dropped_turns and answer.to_dict()["dropped_turns"] == plan.dropped_turns
    with pytest.raises(ContextTooLong, match="max_tokens=64"):
        Answerer(FakeEngine(context_length=80), kb).plan(FIRST + "头痛" * 60, history, max_new_tokens=64)


def test_chat_reports_dropped_turns_and_goes_on_after_a_question_too_long(kb):
    from qihuang.answer.chat import run_chat

    answerer = Answerer(FakeEngine(context_length=700), kb)
    lines = "".join(f"{FIRST}{'头晕' * 60}\n" for _ in range(4)) + "头痛" * 400 + "\n" + FIRST + "\n"
    out = io.StringIO()
    run_chat(answerer, io.StringIO(lines), out, interactive=False)
    text = out.getvalue()
    assert "未放入模型的上下文" in text and "无法回答" in text and "context_length" not in text
    assert text.count("岐黄> ") == 6 and "max_tokens=" in text  # the long question is refused with the limits


# ---- streaming verification ----------------------------------------------------------------------
BAD_LIST = ("偏头痛常用的药物如下：\n1. 布洛芬。\n2. 高血压。\n3. 对乙酰氨基酚。\n"
            "此外要注意休息。偏头痛还会引起肺炎。平时多喝水。")


def test_streamed_drop_checks_each_sentence_once_and_shows_the_final_text(kb, monkeypatch):
    from qihuang.answer import answerer as answerer_mod

    checked: list[str] = []
    original = answerer_mod.verify

    def recording(kb_, text, *args, **kwargs):
        checked.append(text)
        return original(kb_, text, *args, **kwargs)

    monkeypatch.setattr(answerer_mod, "verify", recording)
    answerer = Answerer(FakeEngine(reply=lambda p: BAD_LIST), kb)
    items = list(answerer.stream(FIRST))
    answer, shown = items[-1], "".join(i for i in items[:-1] if isinstance(i, str))
    assert shown == answer.text and answer.verification.dropped  # what was shown is what was kept
    assert "肺炎" not in shown
    streamed = checked[:-2]  # the final policing checks the whole draft, then its result
    assert sum(map(len, streamed)) <= 2 * len(BAD_LIST)  # each sentence once (+ a list's lead-in)
    assert max(map(len, streamed)) < len(BAD_LIST) // 2
    plain = Answerer(FakeEngine(reply=lambda p: BAD_LIST), kb).answer(FIRST)
    assert plain.text == answer.text
