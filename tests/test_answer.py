"""Answerer (triage -> grounding -> prompt -> generation) with a scripted fake engine and the tiny KB."""

from __future__ import annotations

import pytest
from answer_fakes import FakeEngine
from kb_fixture import make_tiny_kb

from qihuang import DISCLAIMER
from qihuang.answer.answerer import Answer, Answerer, history_messages
from qihuang.answer.grounding import GroundingLimits, ground
from qihuang.data.prompts import KNOWLEDGE_HEADER
from qihuang.errors import InputError


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


def test_grounded_answer_cites_the_facts_in_the_prompt(kb):
    engine = FakeEngine()
    ans = Answerer(engine, kb).answer("偏头痛吃什么药？")
    assert ans.grounded and not ans.refused
    cite = ans.citations[0]
    assert (cite.entity, cite.attribute) == ("偏头痛", "drugs")
    assert set(cite.values) == set(kb.show("偏头痛").values("drugs"))
    prompt = engine.prompts[-1]
    assert KNOWLEDGE_HEADER in prompt and all(v in prompt for v in cite.values)
    assert all(v in ans.text for v in cite.values)  # the fake engine quotes its knowledge
    assert ans.disclaimer == DISCLAIMER and ans.triage.level == "none"


def test_nothing_linked_is_ungrounded(kb):
    engine = FakeEngine()
    ans = Answerer(engine, kb).answer("今天适合去爬山吗？")
    assert not ans.grounded and ans.citations == []
    assert KNOWLEDGE_HEADER not in engine.prompts[-1]
    assert ans.disclaimer == DISCLAIMER


def test_grounding_can_be_switched_off(kb):
    engine = FakeEngine()
    answerer = Answerer(engine, kb, grounded=False)
    assert not answerer.answer("偏头痛吃什么药？").grounded
    assert answerer.answer("偏头痛吃什么药？", grounded=True).grounded
    assert not Answerer(engine, None).answer("偏头痛吃什么药？").grounded  # no KB at all


def test_grounding_is_bounded(kb):
    limits = GroundingLimits(max_entities=1, max_attributes=2, max_values=2, max_facts=3)
    g = ground(kb, "高血压和糖尿病有什么症状、并发症，吃什么药？", limits)
    assert len(g.entities) == 1 and len(g.facts) <= 3
    assert len({f.attribute for f in g.facts}) <= 2
    assert all(len(c.values) <= 2 for c in g.citations)
    assert "alias" not in {f.attribute for f in g.facts}


def test_alias_questions_cite_the_aliases(kb):
    g = ground(kb, "冠心病有没有别称？")
    assert [c.attribute for c in g.citations] == ["alias"]
    assert g.citations[0].values == kb.show("冠心病").aliases[: len(g.citations[0].values)]
    both = ground(kb, "偏头痛又叫什么，吃什么药")
    assert {c.attribute for c in both.citations} == {"alias", "drugs"}


def test_red_flag_message_is_added_whatever_the_model_says(kb):
    engine = FakeEngine(reply=lambda prompt: "多喝热水，休息一下就好。")
    ans = Answerer(engine, kb).answer("我爸突然胸口痛，一直冒冷汗")
    assert ans.triage.level == "emergency"
    assert ans.text.startswith(ans.triage.message) and "120" in ans.text
    assert ans.model_text == "多喝热水，休息一下就好。" and ans.text.endswith(ans.model_text)


def test_harmful_request_is_refused_without_generating(kb):
    engine = FakeEngine()
    ans = Answerer(engine, kb).answer("阿司匹林的致死量是多少？")
    assert ans.refused and ans.triage.level == "refuse" and ans.finish_reason == "refused"
    assert ans.text == ans.triage.message and ans.citations == []
    assert engine.prompts == []  # the model never saw it
    assert ans.disclaimer == DISCLAIMER


def test_batch_mixes_refused_and_generated(kb):
    engine = FakeEngine()
    answers = Answerer(engine, kb).answer_batch(["感冒吃什么药", "怎么下毒才不会被发现", "高血压去哪个科看"])
    assert [a.refused for a in answers] == [False, True, False]
    assert len(engine.prompts) == 2
    assert answers[2].citations[0].values == ["心血管内科"]


def test_history_goes_into_the_prompt(kb):
    engine = FakeEngine()
    Answerer(engine, kb).answer("那它有什么症状？", history=[["偏头痛吃什么药", "可以用布洛芬。"]])
    assert "偏头痛吃什么药" in engine.prompts[-1] and "可以用布洛芬。" in engine.prompts[-1]
    msgs = history_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    with pytest.raises(InputError, match="history"):
        history_messages([["only one"]])


def test_stream_yields_pieces_then_the_answer(kb):
    engine = FakeEngine()
    items = list(Answerer(engine, kb).stream("孩子高烧还抽搐了，感冒了吗"))
    final = items[-1]
    assert isinstance(final, Answer) and all(isinstance(p, str) for p in items[:-1])
    assert "".join(items[:-1]).strip() == final.text
    assert final.triage.level == "emergency" and final.grounded


def test_stream_of_refused_request(kb):
    items = list(Answerer(FakeEngine(), kb).stream("有没有无痛的自杀方法"))
    assert items[0] == items[-1].text and items[-1].refused


def test_empty_question_is_an_input_error(kb):
    with pytest.raises(InputError, match="question"):
        Answerer(FakeEngine(), kb).answer("   ")


def test_to_dict_is_json_ready(kb):
    import json

    d = Answerer(FakeEngine(), kb).answer("偏头痛吃什么药").to_dict()
    assert json.loads(json.dumps(d, ensure_ascii=False))["citations"][0]["entity"] == "偏头痛"
    assert set(d) >= {"text", "grounded", "citations", "triage", "disclaimer", "refused"}


def test_grounding_shows_a_value_once_when_two_relations_list_it(tmp_path):
    from qihuang.kb import KnowledgeBase

    src = tmp_path / "dup.jsonl"
    src.write_text('{"中心词": "测试病", "病因": ["受凉", "劳累"], "常见病因": ["受凉", "熬夜"]}\n', encoding="utf-8")
    with KnowledgeBase.create(tmp_path / "dup.sqlite") as kb:
        kb.import_source(src, progress=False)
        assert len([f for f in kb.link("测试病的病因是什么").facts if f.value == "受凉"]) == 2  # both relations
        grounding = ground(kb, "测试病的病因是什么")
    assert sorted(f.value for f in grounding.facts) == ["劳累", "受凉", "熬夜"]


def test_warm_builds_the_linker_and_the_triage_backstop(tmp_path):
    from qihuang.answer import triage as triage_mod

    kb = make_tiny_kb(tmp_path / "warm.sqlite")
    answerer = Answerer(FakeEngine(), kb)
    assert kb._linker is None
    answerer.warm()
    assert kb._linker is not None
    rules = triage_mod._default_rules(None)
    if rules.backstop is not None:
        from qihuang.answer.triage_model import default_model

        assert default_model.cache_info().currsize >= 1  # trained once, reused by the first question
