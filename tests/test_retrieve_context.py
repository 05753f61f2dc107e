"""Symptoms named next to the entity a question is about, and symptom questions that ask for drugs."""

import pytest

from kb_fixture import kb_of_rows, make_tiny_kb


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    kb = make_tiny_kb(tmp_path_factory.mktemp("ctx") / "kb.sqlite")
    yield kb
    kb.close()


def test_a_disease_rarely_listed_as_a_symptom_is_what_the_question_is_about(tmp_path, monkeypatch):
    from qihuang.kb import retrieve

    monkeypatch.setattr(retrieve, "SYMPTOM_LISTING_SHARE", 0.5)  # of 4 diseases: listed by 2 at least
    rows = [{"中心词": "感冒", "常见症状": ["打喷嚏", "流涕"]}, {"中心词": "鼻窦炎", "常见症状": ["鼻塞"]},
            {"中心词": "过敏性鼻炎", "常见症状": ["打喷嚏", "鼻痒"], "药物治疗": ["氯雷他定"], "就诊科室": ["耳鼻喉科"]},
            {"中心词": "支气管哮喘", "常见症状": ["过敏性鼻炎", "打喷嚏", "喘息"], "药物治疗": ["沙丁胺醇"], "就诊科室": ["呼吸内科"]},
            {"中心词": "氯雷他定片", "适应症": ["打喷嚏", "鼻痒"], "不良反应": ["嗜睡"], "成份": ["氯雷他定"]}]
    kb = kb_of_rows(tmp_path / "kb.sqlite", rows)
    try:
        res = kb.link("过敏性鼻炎老打喷嚏吃什么药")  # listed as a symptom by one disease: not a described symptom
        assert {(f.entity, f.via) for f in res.facts} == {("过敏性鼻炎", "direct")} and not res.candidates
        assert {f.value for f in res.facts} == {"氯雷他定"}
    finally:
        kb.close()


def test_symptom_drugs_come_without_the_candidates_departments(kb):
    res = kb.link("头痛，发热，吃点什么药")
    assert res.facts and res.candidates  # candidates are still reported, hedged
    drugs = [f for f in res.facts if f.attribute != "department"]  # after them: hospital departments
    assert {f.attribute for f in drugs} == {"indications"} and {f.via for f in drugs} == {"reverse"}
    assert res.facts[:len(drugs)] == drugs and {f.via for f in res.facts[len(drugs):]} <= {"department"}
    where = kb.link("头痛，发热，挂什么科")
    assert "department" in {f.attribute for f in where.facts}


def test_a_value_symptom_made_of_two_symptoms_links_as_both(tmp_path):
    rows = [{"中心词": "贫血", "常见症状": ["头晕", "乏力", "面色苍白"], "就诊科室": ["血液科"]},
            {"中心词": "低血压", "常见症状": ["头晕乏力", "晕厥"], "就诊科室": ["心内科"]},
            {"中心词": "甲减", "常见症状": ["乏力", "怕冷"], "就诊科室": ["内分泌科"]}]
    kb = kb_of_rows(tmp_path / "kb.sqlite", rows)
    try:
        assert [m.name for m in kb.find_entities("最近头晕乏力，挂什么科")] == ["头晕", "乏力"]
        assert [m.name for m in kb.find_entities("晕厥")] == ["晕厥"]  # a single symptom stays
        res = kb.link("最近头晕乏力，挂什么科")
        assert res.candidates[0]["disease"] == "贫血" and res.candidates[0]["confident"]
    finally:
        kb.close()


def test_a_value_joining_two_names_with_a_conjunction_links_as_both(tmp_path):
    """腹痛和腹泻 (an extraction fragment) is 腹痛 and 腹泻 however seldom each is listed; 伴头痛 is 头痛; a
    joined value whose second part is no name (腹痛和劳累后心悸) stays one value."""
    rows = [{"中心词": "肠炎", "常见症状": ["腹痛和腹泻", "发热"], "就诊科室": ["消化内科"]},
            {"中心词": "偏头痛", "常见症状": ["伴头痛", "畏光"], "就诊科室": ["神经内科"]},
            {"中心词": "胃炎", "常见症状": ["腹痛", "腹泻", "腹痛和劳累后心悸"], "就诊科室": ["消化内科"]},
            {"中心词": "紧张", "常见症状": ["头痛"]}]
    kb = kb_of_rows(tmp_path / "kb.sqlite", rows)
    try:
        assert [m.name for m in kb.find_entities("最近腹痛和腹泻，怎么回事")] == ["腹痛", "腹泻"]
        assert [m.name for m in kb.find_entities("恶心伴头痛")] == ["头痛"]
        assert [m.name for m in kb.find_entities("腹痛和劳累后心悸")] == ["腹痛和劳累后心悸"]
    finally:
        kb.close()


def test_a_body_part_and_what_it_has_stays_one_value(tmp_path):
    """宫颈糜烂 is not 宫颈 and 糜烂: a half no disease lists as a symptom (a body part) does not split it."""
    rows = [{"中心词": "宫颈炎", "常见症状": ["宫颈糜烂", "白带增多"], "就诊科室": ["妇科"]},
            {"中心词": "口腔溃疡", "常见症状": ["糜烂", "疼痛"], "就诊科室": ["口腔科"]},
            {"中心词": "宫颈", "别称": ["子宫颈"]}]  # a linkable name no disease lists as a symptom
    kb = kb_of_rows(tmp_path / "kb.sqlite", rows)
    try:
        assert kb.lookups.row("宫颈") and kb.lookups.row("糜烂")  # both halves are linkable names
        assert [m.name for m in kb.find_entities("宫颈糜烂怎么治疗")] == ["宫颈糜烂"]
    finally:
        kb.close()


def test_a_diagnosis_ruled_out_is_negated(kb):
    found = {m.name: m.negated for m in kb.find_entities("已经排除偏头痛了，感冒吃什么药")}
    assert found == {"偏头痛": True, "感冒": False}
    res = kb.link("已经排除偏头痛了，感冒吃什么药")
    assert {f.entity for f in res.facts} == {"感冒"}
    assert not any(m.negated for m in kb.find_entities("怎么排除偏头痛"))  # asking how to rule it out


@pytest.mark.parametrize("question, attribute", [
    ("这个软膏怎么涂", "dosage"), ("药膏一天涂几次", "dosage"), ("什么人不能喝这个药", "contraindications"),
])
def test_topical_and_drinking_wordings_ask_their_attribute(kb, question, attribute):
    assert kb.linker.detect_attributes(question) == [attribute]
