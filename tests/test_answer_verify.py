"""The Answerer's verification policies (flag / drop / regenerate), abstention, emergencies, triage history."""

from __future__ import annotations

import pytest
from answer_fakes import FakeEngine
from kb_fixture import make_tiny_kb

import qihuang.answer.answerer as answerer_mod
from qihuang.answer.answerer import Answerer
from qihuang.answer.policy import default_ungrounded
from qihuang.answer.triage import Triage
from qihuang.answer.verify import load_config
from qihuang.errors import ConfigError

IBU_Q = "布洛芬缓释胶囊的适应症是什么？"
BAD = "布洛芬缓释胶囊的适应症包括头痛、皮疹和痛经。它也能治疗肺炎。"
GOOD = "布洛芬缓释胶囊的适应症包括头痛和痛经。"
INSTRUCTION = load_config().messages["regenerate_instruction"]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return make_tiny_kb(tmp_path_factory.mktemp("kb") / "kb.sqlite")


def _engine(first: str = BAD, second: str = GOOD, model_name: str = "fake-model") -> FakeEngine:
    return FakeEngine(reply=lambda p: second if INSTRUCTION in p else first, model_name=model_name)


def test_flag_keeps_the_text_and_reports_the_spans(kb):
    ans = Answerer(_engine(), kb, on_unsupported="flag").answer(IBU_Q)
    v = ans.verification
    assert ans.text == BAD and not v.ok and v.counts["wrong_attribute"] == 1 and v.counts["unsupported"] == 1
    assert {ans.text[c.start:c.end]: c.status for c in v.bad} == {"皮疹": "wrong_attribute", "肺炎": "unsupported"}
    assert ans.draft is None and ans.to_dict()["verification"]["counts"]["supported"] == 2


def test_drop_is_the_default_and_removes_what_the_facts_do_not_support(kb):
    ans = Answerer(_engine(), kb).answer(IBU_Q)
    assert ans.verification.policy == "drop"
    assert ans.text == GOOD and ans.model_text == GOOD and ans.draft == BAD
    assert ans.verification.ok and ans.verification.dropped == ["、皮疹", "它也能治疗肺炎。"]
    assert ans.verification.draft == {"supported": 2, "wrong_attribute": 1, "unsupported": 1, "negated": 0}


def test_drop_of_everything_leaves_a_message(kb):
    ans = Answerer(_engine(first="它能治疗肺炎和中耳炎。"), kb).answer(IBU_Q)
    assert ans.text == load_config().messages["all_dropped"] and ans.verification.ok


def test_regenerate_asks_once_more_then_drops(kb):
    engine = _engine()
    ans = Answerer(engine, kb, on_unsupported="regenerate").answer(IBU_Q)
    assert len(engine.prompts) == 2 and INSTRUCTION in engine.prompts[1]
    assert ans.text == GOOD and ans.verification.attempts == 2 and ans.verification.ok
    stubborn = _engine(second=BAD)
    ans = Answerer(stubborn, kb, on_unsupported="regenerate").answer(IBU_Q)
    assert len(stubborn.prompts) == 2 and ans.text == GOOD and ans.verification.dropped
    fine = _engine(first=GOOD)
    assert Answerer(fine, kb, on_unsupported="regenerate").answer(IBU_Q).text == GOOD and len(fine.prompts) == 1


def test_stream_with_drop_never_shows_the_dropped_sentence(kb):
    items = list(Answerer(_engine(), kb).stream(IBU_Q))
    final = items[-1]
    shown = "".join(x for x in items if isinstance(x, str))
    assert "肺炎" not in shown and "皮疹" not in shown and shown == final.text
    flagged = list(Answerer(_engine(), kb, on_unsupported="flag").stream(IBU_Q))
    assert "".join(x for x in flagged if isinstance(x, str)) == BAD and not flagged[-1].verification.ok


def test_no_facts_abstains_without_calling_the_model(kb):
    engine = _engine()
    ans = Answerer(engine, kb, ungrounded="abstain").answer("今天适合去爬山吗？")
    assert ans.abstained and not ans.refused and engine.prompts == []
    assert "知识库中没有" in ans.text and "就诊" in ans.text and ans.finish_reason == "abstained"
    assert ans.to_dict()["abstained"] is True
    stream = list(Answerer(engine, kb, ungrounded="abstain").stream("今天适合去爬山吗？"))
    assert stream[0] == ans.text and stream[-1].abstained and engine.prompts == []


def test_abstaining_names_only_the_question_and_defers_to_a_red_flag(kb):
    engine = _engine()
    answerer = Answerer(engine, kb, ungrounded="abstain")
    ans = answerer.answer("今天适合去爬山吗？", history=[["偏头痛吃什么药", "布洛芬"]])
    assert ans.abstained and "偏头痛" not in ans.text and "与这个问题相关的条目" in ans.text
    red = answerer.answer("我爸突然倒地，叫不醒")  # names nothing the tiny KB holds
    assert red.triage.level == "emergency" and red.abstained and not red.grounded
    assert red.text == red.triage.message  # the urgent message alone: no "see a doctor if it persists"
    assert engine.prompts == []


def test_no_facts_with_answer_puts_the_notice_in_the_text(kb):
    engine = FakeEngine(reply=lambda p: "多喝水。")
    ans = Answerer(engine, kb, ungrounded="answer").answer("今天适合去爬山吗？")
    notice = load_config().messages["ungrounded_notice"]
    assert ans.text == f"{notice}\n\n多喝水。" and ans.model_text == "多喝水。" and len(engine.prompts) == 1
    assert not ans.abstained
    named = Answerer(FakeEngine(reply=lambda p: "可以试试阿莫西林胶囊。"), kb, ungrounded="answer").answer("今天适合去爬山吗？")
    span = named.verification.bad[0]  # nothing was cited: a KB name is unsupported, offsets index the shown text
    assert named.text[span.start:span.end] == "阿莫西林胶囊" and named.text.startswith(notice)
    assert named.text.endswith("可以试试阿莫西林胶囊。")  # ungrounded text is marked, not cut: the notice says it


def test_ungrounded_default_depends_on_the_model(kb):
    assert default_ungrounded(FakeEngine(model_name="default")) == "abstain"
    assert default_ungrounded(FakeEngine(model_name="/models/SmolLM2-135M-Instruct")) == "abstain"
    assert default_ungrounded(FakeEngine(model_name="Qwen/Qwen2.5-7B-Instruct")) == "answer"
    assert Answerer(FakeEngine(model_name="default"), kb).ungrounded == "abstain"
    with pytest.raises(ConfigError, match="on_unsupported"):
        Answerer(FakeEngine(), kb, on_unsupported="ignore")


def test_grounding_off_neither_abstains_nor_checks(kb):
    engine = FakeEngine(model_name="default", reply=lambda p: "布洛芬。")
    ans = Answerer(engine, kb, grounded=False).answer("偏头痛吃什么药？")
    assert ans.text == "布洛芬。" and not ans.verification.checked and len(engine.prompts) == 1


def test_emergency_lists_no_drugs(kb):
    engine = FakeEngine(reply=lambda p: "可以先含服硝酸甘油。冠心病发作时要保持安静。")
    ans = Answerer(engine, kb, on_unsupported="flag").answer("我爸突然胸口痛，一直冒冷汗，他有冠心病")
    assert ans.triage.level == "emergency" and ans.text.startswith(ans.triage.message)
    assert "阿司匹林" not in engine.prompts[0] and "硝酸甘油" not in engine.prompts[0]
    assert not any(c.attribute in ("drugs", "dosage") for c in ans.citations)
    assert "硝酸甘油" not in ans.text and "保持安静" in ans.text
    assert ans.verification.dropped == ["可以先含服硝酸甘油。"]


def test_triage_sees_earlier_user_turns(kb, monkeypatch):
    seen = {}

    def with_history(question, history=None):
        seen["history"] = history
        return Triage()

    monkeypatch.setattr(answerer_mod, "triage", with_history)
    Answerer(FakeEngine(), kb).answer("那现在怎么办", history=[["刚才胸口剧痛", "请就医"]])
    assert seen["history"] == ["刚才胸口剧痛"]


def test_an_asked_attribute_the_kb_lacks_is_said_in_front_of_the_answer(kb):
    """感冒 has no 并发症 in the tiny KB: the answer says so in one sentence, its other facts stand in, and
    the model text after it is what is verified."""
    engine = FakeEngine(reply=lambda p: "感冒常见症状有鼻塞和咳嗽。")
    ans = Answerer(engine, kb).answer("感冒有什么并发症？")
    assert ans.text.startswith("知识库未收录：感冒的并发症") and ans.text.endswith("感冒常见症状有鼻塞和咳嗽。")
    assert ans.grounded and ans.model_text == "感冒常见症状有鼻塞和咳嗽。"
    held = Answerer(FakeEngine(reply=lambda p: "常见症状有鼻塞。"), kb).answer("感冒有什么症状？")
    assert "知识库未收录" not in held.text
