"""Retrieval lookups behind ``KnowledgeBase.link``: defaults order, reverse, symptom -> disease, two-hop,
history, lexical fallback, and how grounding cites them (tiny fixture KB)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kb_fixture import make_tiny_kb
from qihuang.answer.grounding import ground
from qihuang.data.prompts import format_knowledge
from qihuang.errors import ConfigError
from qihuang.kb.schema import _parse_inverse, load_schema
from qihuang.kb.types import Mention


@pytest.fixture()
def kb(tmp_path):
    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    yield kb
    kb.close()


@dataclass(frozen=True)
class _Negatable(Mention):
    negated: bool = False  # what the linker's negation flag will set (until it is merged into Mention)


def _negate(kb, monkeypatch, words: set[str]) -> None:
    """Make the linker flag mentions of ``words`` as negated."""
    find = type(kb.linker).find_entities

    def flagged(self, text):
        return [_Negatable(m.name, m.surface, m.start, m.end, m.type, m.via_alias, negated=m.name in words)
                for m in find(self, text)]

    monkeypatch.setattr(type(kb.linker), "find_entities", flagged)


def test_default_attributes_follow_the_schema_order(kb):
    """No attribute asked: a drug's 适应症 comes first, never its 不良反应 (sorted by name it would)."""
    facts = kb.link("阿莫西林胶囊").facts
    attrs = list(dict.fromkeys(f.attribute for f in facts))
    assert attrs == [a for a in load_schema().defaults_for("drug") if a in attrs]
    assert attrs[0] == "indications" and "adverse_reactions" in attrs
    assert all(f.via == "direct" for f in facts)


def test_reverse_lookup_for_a_value_only_drug(kb):
    res = kb.link("布洛芬能治什么病？")
    assert [m.name for m in res.entities] == ["布洛芬"] and res.attributes == ["indications"]
    assert {f.entity for f in res.facts} == {"偏头痛", "小儿发热"}  # the diseases whose 药物治疗 lists it
    assert all(f.via == "reverse" and f.anchor == "布洛芬" and f.triple()[1:] == ["药物治疗", "布洛芬"]
               for f in res.facts)
    assert not res.abstained and res.candidates == []
    assert len(kb.link("布洛芬能治什么病？", max_values=1).facts) == 1  # bounded


def test_reverse_lookup_of_a_department_and_of_one_symptom(kb):
    assert {f.entity for f in kb.link("呼吸内科").facts} == {"感冒", "支气管哮喘", "肺炎"}
    # one symptom asked for drugs: the drugs whose 适应症 list it
    res = kb.link("头痛吃什么药？")
    drugs = [f for f in res.facts if f.via != "department"]  # after them: where to go for 头痛
    assert {f.entity for f in drugs} == {"布洛芬缓释胶囊", "对乙酰氨基酚片"}
    assert {(f.via, f.relation) for f in drugs} == {("reverse", "适应症")} and res.facts[:len(drugs)] == drugs


def test_grounding_cites_the_direction_of_reverse_facts(kb):
    g = ground(kb, "布洛芬能治什么病？")
    assert {c.entity for c in g.citations} == {"偏头痛", "小儿发热"}
    assert all(c.via == "reverse" and "反查：布洛芬 ← 药物治疗" in c.text() for c in g.citations)
    assert g.citations[0].to_dict()["note"] == "反查：布洛芬 ← 药物治疗"
    block = format_knowledge(g.facts)
    lines = block.splitlines()[1:]
    assert len(lines) == 1 and lines[0].endswith("药物治疗：布洛芬（反查：布洛芬 ← 药物治疗）")
    assert "偏头痛" in lines[0] and "小儿发热" in lines[0]
    # training triples (no via) keep the plain format
    assert format_knowledge([["偏头痛", "药物治疗", "布洛芬"]]).splitlines()[1] == "- 偏头痛 药物治疗：布洛芬"


def test_symptoms_give_ranked_hedged_candidates_with_departments(kb):
    res = kb.link("我发热，咳嗽，还胸痛，挂什么科？")
    top = res.candidates[0]
    assert top["disease"] == "肺炎" and top["confident"] and set(top["evidence"]) == {"发热", "咳嗽", "胸痛"}
    assert [c["score"] for c in res.candidates] == sorted((c["score"] for c in res.candidates), reverse=True)
    assert any(not c["confident"] for c in res.candidates)  # one matched symptom is never confident
    # the candidates' evidence, and the hospital departments they and the symptoms point to (asked: first)
    assert {f.via for f in res.facts} == {"symptom", "department"}
    deps = [f for f in res.facts if f.attribute == "department"]
    assert deps == res.facts[:len(deps)] and deps[0].value == "呼吸内科" and {f.via for f in deps} == {"department"}
    g = ground(kb, "我发热，咳嗽，还胸痛，挂什么科？")
    assert g.candidates[0]["disease"] == "肺炎"
    assert all("候选疾病，可能相关，非诊断" in c.text() for c in g.citations if c.via == "symptom")
    assert all(line.endswith("（候选疾病，可能相关，非诊断）") or "医院科室建议" in line
               for line in format_knowledge(g.facts).splitlines()[1:])


def test_negated_symptoms_are_subtracted_and_never_evidence(kb, monkeypatch):
    _negate(kb, monkeypatch, {"咳嗽"})
    res = kb.link("我发热，胸痛，没有咳嗽，挂什么科？")
    assert all("咳嗽" not in c["evidence"] for c in res.candidates)
    assert not any(f.value == "咳嗽" for f in res.facts)
    pneumonia = next(c for c in res.candidates if c["disease"] == "肺炎")
    assert pneumonia["negated"] == ["咳嗽"] and set(pneumonia["evidence"]) == {"发热", "胸痛"}
    unflagged = kb.lookups.candidates(["发热", "胸痛"], [])[0]
    assert pneumonia["score"] < next(c["score"] for c in unflagged if c["disease"] == "肺炎")


def test_two_hop_disease_drug_contraindications(kb):
    res = kb.link("冠心病吃什么药？这些药有什么禁忌？")
    hop = [f for f in res.facts if f.via == "two_hop"]
    assert ("冠心病", "药物治疗", "阿司匹林") in {tuple(f.triple()) for f in hop}  # first hop, cited
    assert ("阿司匹林肠溶片", "成份", "阿司匹林") in {tuple(f.triple()) for f in hop}  # the product holding it
    contra = [f for f in hop if f.attribute == "contraindications"]
    assert contra and all(f.entity == "阿司匹林肠溶片" and f.anchor == "冠心病" for f in contra)
    assert all(f.anchor == "冠心病" for f in hop)  # every hop is reached from the question's disease
    g = ground(kb, "冠心病吃什么药？这些药有什么禁忌？")
    assert any(c.attribute == "contraindications" and "由 冠心病 转查" in c.text() for c in g.citations)
    # a disease's 不舒服 is its symptoms: no hop to its drugs' adverse reactions
    assert all(f.via == "direct" for f in kb.link("冠心病吃药后会出现什么不舒服？").facts if f.entity == "冠心病")
    assert not any(f.via == "two_hop" for f in kb.link("冠心病有什么症状？").facts)


def test_history_supplies_the_entity_of_a_follow_up(kb):
    res = kb.link("那应该吃什么药？", history=["医生你好，我有偏头痛", "经常发作"])
    assert {f.entity for f in res.facts} == {"偏头痛"}
    assert {(f.via, f.attribute, f.anchor) for f in res.facts} == {("history", "drugs", "偏头痛")}
    assert kb.link("那应该吃什么药？").abstained
    assert ground(kb, "那应该吃什么药？", history=["我有偏头痛"]).citations[0].text().endswith("(上文提到的 偏头痛)")
    # an entity in the question itself wins over the history
    assert {f.entity for f in kb.link("感冒吃什么药？", history=["我有偏头痛"]).facts} == {"感冒"}


@pytest.mark.parametrize("question", ["今天天气怎么样", "推荐一部电影", "帮我写一首诗", "股票怎么买"])
def test_unrelated_questions_retrieve_nothing(kb, question):
    res = kb.link(question)
    assert res.facts == [] and res.abstained and res.entities == []


def test_lexical_fallback_when_linking_finds_no_entity(kb):
    res = kb.link("偏头通有哪些症状？")  # a typo: no name (nor colloquial variant) of the KB is in the question
    assert res.entities == [] and res.facts
    assert {f.entity for f in res.facts} == {"偏头痛"} and {f.via for f in res.facts} == {"lexical"}
    assert kb.lookups.lexical is kb.lookups.lexical  # built once, then cached


def test_lexical_index_is_cached_on_disk(kb, qihuang_home):
    from qihuang.kb.lexical import LexicalIndex

    kb.lookups.lexical.match("偏头通")
    cached = list((qihuang_home / "cache").glob("lexical-*.pkl"))
    assert len(cached) == 1
    again = LexicalIndex.load_or_build(kb)
    assert again.names == kb.lookups.lexical.names and again.match("偏头通") == kb.lookups.lexical.match("偏头通") != []


def test_inverse_section_is_validated():
    schema = load_schema()
    assert schema.inverse["drugs"] == "indications" and "symptoms" in schema.reverse_sources("related_diseases")
    with pytest.raises(ConfigError, match=r"inverse\.drugs.*nosuch"):
        _parse_inverse({"drugs": "nosuch"}, schema.attributes)
    with pytest.raises(ConfigError, match=r"inverse\.nosuch"):
        _parse_inverse({"nosuch": "drugs"}, schema.attributes)
    with pytest.raises(ConfigError, match="mapping"):
        _parse_inverse(["drugs"], schema.attributes)


def test_lexical_settings_file_is_validated(tmp_path):
    from qihuang.kb.lexical import load_lexical_config

    cfg = load_lexical_config()
    assert cfg.typo_min_length >= 3 and cfg.fields
    bad = tmp_path / "lexical.yaml"
    bad.write_text("fields: [symptoms]\nvalues_per_field: 3\nname_repeat: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="lexical.yaml: name_repeat"):
        load_lexical_config(str(bad))
    bad.write_text(cfg.model_dump_json().replace('"symptoms"', '"nosuch"'), encoding="utf-8")
    with pytest.raises(ConfigError, match="fields: unknown attributes"):
        load_lexical_config(str(bad))


def test_symptoms_next_to_an_answered_entity_are_not_a_description(kb):
    res = kb.link("布洛芬缓释胶囊的副作用有恶心、皮疹吗？")
    assert res.candidates == [] and {f.entity for f in res.facts} == {"布洛芬缓释胶囊"}


def test_a_value_only_drug_is_answered_through_the_product_that_holds_it(kb):
    res = kb.link("布洛芬有什么副作用？")
    assert ("布洛芬缓释胶囊", "成份", "布洛芬") in {tuple(f.triple()) for f in res.facts}
    adverse = [f for f in res.facts if f.attribute == "adverse_reactions"]
    assert adverse and all(f.entity == "布洛芬缓释胶囊" and f.via == "two_hop" and f.anchor == "布洛芬"
                           for f in adverse)
    # no attribute asked: the diseases that use it (reverse), then the product's own sections, in order
    overview = kb.link("布洛芬")
    assert overview.facts[0].via == "reverse"
    assert [a for a in dict.fromkeys(f.attribute for f in overview.facts) if a != "ingredients"] == \
        ["drugs", "adverse_reactions", "dosage"]


def test_symptoms_asking_for_drugs_get_the_drugs_indicated_for_them(kb):
    res = kb.link("我头痛，还发热，吃点什么药好？")
    drugs = [f for f in res.facts if f.via == "reverse"]
    # both fixture drugs whose 适应症 list 头痛 and 发热, cited backwards; no candidate disease's drugs
    assert {f.entity for f in drugs} == {"布洛芬缓释胶囊", "对乙酰氨基酚片"}
    assert {f.anchor for f in drugs} == {"头痛、发热"} and {f.value for f in drugs} == {"头痛", "发热"}
    assert not any(f.attribute == "drugs" for f in res.facts)
    g = ground(kb, "我头痛，还发热，吃点什么药好？")
    assert g.facts[0].via == "reverse"  # what was asked comes first
    assert any("反查：头痛、发热 ← 适应症" in c.text() for c in g.citations)


def test_a_symptom_with_an_entry_of_its_own_counts_in_a_description(tmp_path):
    """CMeKG has entries for 胸痛, 腹泻 …: next to a plain symptom they are part of the description."""
    from qihuang.kb import KnowledgeBase

    src = tmp_path / "kb.jsonl"
    src.write_text("\n".join([
        '{"中心词": "心肌梗死", "临床症状及体征": ["胸痛", "大汗", "濒死感"], "就诊科室": ["心血管内科"]}',
        '{"中心词": "肺炎", "常见症状": ["胸痛", "咳嗽"], "就诊科室": ["呼吸内科"]}',
        '{"中心词": "胸痛", "常见症状": ["胸闷"], "就诊科室": ["心胸外科"]}',
        '{"中心词": "高血压", "常见症状": ["头晕"], "药物治疗": ["氨氯地平"], "就诊科室": ["心血管内科"]}',
    ]), encoding="utf-8")
    with KnowledgeBase.create(tmp_path / "own.sqlite") as own:
        own.import_source(src, progress=False)
        res = own.link("胸痛，大汗，还有濒死感，挂什么科？")
        assert res.candidates[0]["disease"] == "心肌梗死" and res.candidates[0]["confident"]
        assert ("心肌梗死", "就诊科室", "心血管内科") in {tuple(f.triple()) for f in res.facts}
        assert not any(f.entity == "胸痛" for f in res.facts if f.via != "department")  # a department may rest on it
        # a subject that is not listed as anyone's symptom keeps the question about itself
        res = own.link("高血压头晕挂什么科？")
        assert res.candidates == [] and {f.entity for f in res.facts} == {"高血压"}


_TINY = None


def _tiny_kb(tmp_path_factory):
    global _TINY
    if _TINY is None:
        _TINY = make_tiny_kb(tmp_path_factory.mktemp("tiny") / "kb.sqlite")
    return _TINY


def test_any_text_gives_a_well_formed_result(tmp_path_factory):
    """Arbitrary text (fixture names mixed with noise, history or not) never fails and is consistent."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from qihuang.kb.types import VIAS

    kb = _tiny_kb(tmp_path_factory)
    words = st.sampled_from(["偏头痛", "布洛芬", "头痛", "发热", "咳嗽", "没有", "吃什么药", "禁忌", "挂什么科",
                             "高血压", "呼吸内科", "，", "？", "那", "Ｘ", "頭痛"])
    text = st.lists(st.one_of(words, st.text(max_size=4)), max_size=8).map("".join)

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text, st.lists(text, max_size=2))
    def check(question, history):
        res = kb.link(question, max_values=3, history=history)
        assert res.abstained == (not res.facts)
        assert all(f.via in VIAS for f in res.facts)
        assert all(f.anchor for f in res.facts if f.via in ("reverse", "two_hop", "symptom", "history"))
        g = ground(kb, question, history=history)
        assert len(g.facts) <= 24 and all(c.values for c in g.citations)

    check()


def test_a_shared_cue_means_what_the_entity_has_and_reports_only_that(kb):
    res = kb.link("阿莫西林胶囊可以治疗哪些疾病")  # a drug has no 治疗: its 适应症 is meant
    assert {f.attribute for f in res.facts} == {"indications"} and res.attributes == ["indications"]
    res = kb.link("布洛芬可以治疗什么病")  # a value-only drug: answered backwards, reported as its 适应症
    assert res.facts and res.attributes == ["indications"]
    res = kb.link("吃了阿莫西林胶囊会不会有什么反应")
    assert {f.attribute for f in res.facts} == {"adverse_reactions"} and res.attributes == ["adverse_reactions"]
    assert kb.link("阿莫西林胶囊什么人禁用").attributes == ["contraindications"]  # not 用于 (indications)


def test_a_cue_yields_only_to_another_cue(kb):
    assert kb.linker.detect_attributes("偏头痛的药物治疗") == ["drugs"]  # 治疗 next to 药物: drugs
    assert kb.linker.detect_attributes("偏头痛怎么治") == ["treatment", "drugs"]  # one cue: both alternatives
    assert {f.attribute for f in kb.link("偏头痛怎么治").facts} == {"drugs"}  # the one the disease has


def test_attributes_no_named_entity_type_has_are_not_reported(kb):
    assert "differential_diagnosis" not in kb.lookups.type_attributes["drug"]
    res = kb.link("阿莫西林胶囊和布洛芬缓释胶囊的副作用有什么区别")  # 区别 of two drugs: no 鉴别诊断
    assert kb.linker.detect_attributes(res.text, res.entities) == ["adverse_reactions", "differential_diagnosis"]
    assert res.attributes == ["adverse_reactions"]
    two_hop = kb.link("冠心病吃什么药？这些药有什么禁忌？")  # a disease has no 禁忌, its drugs do
    assert two_hop.attributes == ["drugs", "contraindications"]
    symptoms = kb.link("头晕，心悸，挂什么科")  # candidates: the types of the named symptoms do not decide
    assert "department" in symptoms.attributes


def test_why_described_symptoms_come_also_asks_which_diseases(kb):
    res = kb.link("我发热，咳嗽，还胸痛，是什么原因？")
    assert res.candidates and {"cause", "related_diseases"} <= set(res.attributes)
    named = kb.link("肺炎是什么原因引起的？")  # a named disease: its own cause, no candidate diseases asked
    assert "related_diseases" not in named.attributes


def test_warm_builds_what_linking_reads_and_changes_no_answer(tmp_path):
    cold = make_tiny_kb(tmp_path / "cold.sqlite")
    warm = make_tiny_kb(tmp_path / "warm.sqlite")
    try:
        warm.warm()
        look = warm.lookups
        assert look._all_rows and look._rows["肺炎"] == look.row("肺炎") and look.row("没有这个名字") is None
        assert warm.departments._listed  # every listed value's department distribution
        for q in ("我发热，咳嗽，还胸痛，挂什么科？", "冠心病吃什么药？这些药有什么禁忌？", "布洛芬能治什么病", "今天天气怎么样"):
            a, b = cold.link(q, max_values=10), warm.link(q, max_values=10)
            assert (a.entities, a.attributes, a.facts, a.candidates) == (b.entities, b.attributes, b.facts, b.candidates)
    finally:
        cold.close()
        warm.close()


def test_remembered_entity_facts_are_bounded_and_never_shared(kb, monkeypatch):
    import qihuang.kb.retrieve as retrieve

    monkeypatch.setattr(retrieve, "FACT_CACHE", 2)
    look = kb.lookups
    eid = look.row("肺炎")[0]
    first = look.facts(eid, "肺炎", ["symptoms"], None)
    first.append("changed by a caller")
    assert look.facts(eid, "肺炎", ["symptoms"], None) == kb._facts_by_id(eid, "肺炎", ["symptoms"], None)
    for attrs in (["drugs"], ["department"], ["cause"]):
        look.facts(eid, "肺炎", attrs, None)
    assert len(look._facts) == 2
