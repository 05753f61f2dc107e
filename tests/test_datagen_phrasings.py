"""Phrasings as data (validated) and answer composition from KB values."""

from __future__ import annotations

import random

import pytest
import yaml

from qihuang.datagen.phrasings import answer_for, clean_value, compose_answer, followup_for, join_values, questions_for
from qihuang.errors import ConfigError
from qihuang.kb.schema import ATTRIBUTES
from qihuang.paths import resource
from qihuang.phrasebook import load_phrasebook

MAIN = ["symptoms", "drugs", "treatment", "department", "indications", "adverse_reactions", "contraindications",
        "dosage", "cause", "complications", "examinations", "precautions", "ingredients", "interactions",
        "body_part", "susceptible_population", "risk_factors", "efficacy", "nature_flavor",
        "differential_diagnosis", "prevention", "transmission", "surgery", "drug_class", "related_diseases", "alias"]


def test_shipped_phrasings_cover_main_attributes_in_both_styles():
    book = load_phrasebook()
    for key in MAIN:
        phr = book.get(key)
        assert not phr.generic, key
        assert len(phr.patient) + len(phr.clinician) >= 5, key
        assert phr.patient and phr.clinician and phr.answer, key
        for q in phr.patient + phr.clinician:
            assert q.format(entity="某病", label="x").endswith(("？", "。")), q
    for key in ATTRIBUTES:  # every canonical attribute can be asked, with phrasings or generic ones
        assert questions_for("某物", key, 2, rng=random.Random(0))
    for etype in book.dialogue["flows"]:
        assert all(a in ATTRIBUTES for a in book.dialogue["flows"][etype])


def test_answers_name_entity_cut_long_lists_and_add_safety_notes():
    values = [f"症状{i}" for i in range(20)]
    text = answer_for("偏头痛", "symptoms", values)
    assert text.startswith("偏头痛") and "症状7等" in text and "症状8" not in text
    drug = answer_for("偏头痛", "drugs", ["布洛芬", "对乙酰氨基酚"], variant=0)
    assert drug == "偏头痛常用的治疗药物有布洛芬和对乙酰氨基酚。具体用药请遵医嘱，不要自行购药或随意增减剂量。"
    notes = load_phrasebook().safety_notes
    assert answer_for("X", "surgery", ["阑尾切除术"]).endswith(notes["treatment"])
    assert answer_for("X", "adverse_reactions", ["恶心"], rng=random.Random(2)).endswith(notes["drug"])
    assert not answer_for("X", "symptoms", ["头痛"]).endswith(notes["drug"] + notes["treatment"])
    assert answer_for("X", "department", ["神经内科", "儿科"], variant=0) == "X一般可以到神经内科或儿科就诊。"


def test_values_are_cleaned_deduplicated_and_sentences_joined_as_clauses():
    assert clean_value(" 心悸等。") == "心悸"
    assert clean_value("Ibuprofen<sup>[药典]</sup>") == "Ibuprofen"
    assert clean_value("中等") == "中等"
    assert clean_value("用于肺炎") == "肺炎"
    text, used = compose_answer("高血压", "symptoms", ["头痛", "头痛等", "心悸", "高血压"], variant=0)
    assert text == "高血压的常见症状包括头痛和心悸。" and used == [0, 2]  # the entity itself is not a value
    text, used = compose_answer("布洛芬片", "dosage", ["口服。一次1片，一日3次", "遵医嘱"], variant=0, safety=False)
    assert text == "布洛芬片的用法用量：口服，一次1片，一日3次；遵医嘱。"
    long = [f"第{i}条注意事项，请仔细阅读说明书" for i in range(6)]
    text, used = compose_answer("某药", "precautions", long, safety=False)
    assert used == [0, 1, 2, 3] and "以上仅列出其中几条" in text
    text, used = compose_answer("某药", "interactions", ["与阿司匹林合用，出血风险增加", "华法林", "肝素"], variant=0)
    assert "阿司匹林" not in text and "华法林、肝素等" in text and used == [1, 2]


def test_special_values_and_join_styles():
    assert answer_for("高血压", "transmission", ["无"]) == "高血压一般不具有传染性，不会在人与人之间传播。"
    text, used = compose_answer("流感", "transmission", ["飞沫传播", "有"], variant=0)
    assert text.startswith("流感具有传染性") and "飞沫传播" in text and used == [1, 0]
    assert join_values(["A", "B", "C"], "and") == "A、B和C"
    assert join_values(["A", "B", "C"], "or") == "A、B或C"
    assert join_values(["A", "B"], "list", cut=True) == "A、B等"
    assert join_values(["多食和多饮", "消瘦"], "and") == "多食和多饮以及消瘦"


def test_questions_mix_styles_and_followups_omit_entity():
    book = load_phrasebook()
    qs = questions_for("糖尿病", "symptoms", 2, rng=random.Random(1))
    phr = book.get("symptoms")
    styles = {("patient" if any(q == p.format(entity="糖尿病") for p in phr.patient) else "clinician") for q in qs}
    assert len(qs) == 2 and styles == {"patient", "clinician"}
    assert "糖尿病" not in followup_for("department", rng=random.Random(0))
    herb = questions_for("人参", "indications", 1, entity_type="herb", rng=random.Random(0))[0]
    assert herb.format() in [p.format(entity="人参") for p in book.get("indications", "herb").patient +
                             book.get("indications", "herb").clinician]


@pytest.mark.parametrize("patch, message", [
    ({"symptoms": {"patient": ["{entity}{nope}？"], "clinician": ["{entity}?"], "answer": ["{values}"]}},
     "unknown placeholder"),
    ({"symptoms": {"patient": ["a{entity}"], "clinician": ["b{entity}"], "answer": ["{values}等症状"]}},
     "do not write 等"),
    ({"symptoms": {"patient": ["a{entity}"], "clinician": ["b{entity}"], "answer": ["{values}"], "safety": "x"}},
     "safety_notes.x"),
    ({"symptoms": {"patient": ["a{entity}"], "clinician": ["b{entity}"], "answer": ["{values}"], "join": "xor"}},
     "join"),
])
def test_bad_phrasings_file_is_a_config_error_naming_the_field(tmp_path, patch, message):
    raw = yaml.safe_load(resource("phrasings.yaml").read_text(encoding="utf-8"))
    raw["attributes"].update(patch)
    path = tmp_path / "phrasings.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_phrasebook(path)
    assert str(path) in str(err.value)


def test_cause_values_lose_wording_the_answer_already_has():
    text = answer_for("支原体肺炎", "cause", ["由肺炎支原体感染引起", "免疫等因素所致", "受凉"], variant=2)
    assert text == "支原体肺炎可能与肺炎支原体感染、免疫等因素和受凉有关。"
