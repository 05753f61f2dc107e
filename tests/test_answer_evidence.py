"""Verification's evidence (answer/evidence.py): the cited entities' KB facts indexed once per process and
entity (and again once the KB changed), and what one plan's checks remember of the texts they read."""

from __future__ import annotations

import json

import pytest
from kb_fixture import make_tiny_kb

from qihuang.answer import evidence as ev
from qihuang.answer.verify import Boundaries, load_config, verify
from qihuang.segment import word_boundaries

IBU = "布洛芬缓释胶囊"
TEXT = "布洛芬缓释胶囊的适应症包括头痛和痛经。它的不良反应有恶心、皮疹等。另外，它还能治疗肺炎。"


@pytest.fixture
def kb(tmp_path):
    return make_tiny_kb(tmp_path / "kb.sqlite")


def _facts(kb):
    return kb.facts(IBU, ["indications"])


def _plain(context) -> dict:
    return {form: {e: set(attrs) for e, attrs in context[form].items()} for form in context}


def test_the_per_entity_context_is_the_looked_up_context(kb):
    facts = _facts(kb)
    assert facts  # the fixture's drug has indications
    looked_up = ev.evidence_of(kb, facts, context=ev.context_facts(kb, facts))
    cached = ev.evidence_of(kb, facts)
    assert _plain(cached.context) == _plain(looked_up.context) and cached.context  # holds its other facts too
    assert set(cached.values) == set(looked_up.values) and cached.index == looked_up.index
    assert [len(v) for v in cached.values] == sorted((len(v) for v in cached.values), reverse=True)
    for evidence in (cached, looked_up):
        assert verify(kb, TEXT, facts, ["indications"], evidence=evidence).to_dict() == \
            verify(kb, TEXT, facts, ["indications"], context=ev.context_facts(kb, facts)).to_dict()


def test_an_entity_index_is_built_once_and_again_after_the_kb_changed(kb, tmp_path, monkeypatch):
    indexes, calls = ev.EntityIndexes(), []
    real = type(kb).facts

    def counted(self, entity, *args, **kwargs):
        calls.append(entity)
        return real(self, entity, *args, **kwargs)

    monkeypatch.setattr(type(kb), "facts", counted)
    config = load_config()
    first = indexes.get(kb, IBU, config)
    assert indexes.get(kb, IBU, config) is first and calls == [IBU]  # the second request reads it
    assert "胃痛" not in first
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"中心词": IBU, "不良反应": ["胃痛"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    kb.import_source(more, progress=False)
    again = indexes.get(kb, IBU, config)
    assert calls == [IBU, IBU] and "胃痛" in again  # the KB changed: rebuilt, not served stale


def test_only_the_most_recent_entities_are_kept(kb):
    indexes, config = ev.EntityIndexes(kept=1), load_config()
    first = indexes.get(kb, IBU, config)
    indexes.get(kb, "偏头痛", config)
    assert indexes.get(kb, IBU, config) is not first and indexes.get(kb, IBU, config) == first


@pytest.mark.parametrize("text", [TEXT, "", "无标点的一句话", "第一行\n1. 头痛\r\n2. 痛经；恶心!皮疹?How about ibuprofen 200mg。",
                                  "。。\n\n", "末尾没有句号，但有逗号，"])
def test_word_boundaries_sentence_by_sentence_are_the_whole_texts(text):
    memo: dict = {}
    for _ in range(2):  # the second time from the memo
        found = Boundaries(text, memo)
        assert {p for p in range(-2, len(text) + 3) if p in found} == word_boundaries(text)
    assert 1.5 not in found and "1" not in found


def test_a_plans_checks_read_each_cue_stretch_once(kb, monkeypatch):
    facts = _facts(kb)
    evidence = ev.evidence_of(kb, facts)
    linker = kb.linker
    real, calls = linker.detect_attribute_groups, []

    def counted(text, *args, **kwargs):
        calls.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(linker, "detect_attribute_groups", counted)
    fresh = verify(kb, TEXT, facts, ["indications"], evidence=ev.evidence_of(kb, facts)).to_dict()
    assert len(calls) == len(set(calls))  # one check asks each masked stretch once
    calls.clear()
    first = verify(kb, TEXT, facts, ["indications"], evidence=evidence).to_dict()
    n = len(calls)
    assert n > 0 and first == fresh
    second = verify(kb, TEXT, facts, ["indications"], evidence=evidence).to_dict()
    assert second == first and len(calls) == n  # the same text again: nothing asked again
