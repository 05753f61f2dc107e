"""verify(): claims of an answer checked against the facts of its prompt (adversarial fixtures written for
these tests: wrong-attribute lists, swapped entities, negated mentions, values inside longer words, noise)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kb_fixture import make_tiny_kb

from qihuang.answer.policy import drop_claims
from qihuang.answer.verify import load_config, split_units, verify
from qihuang.answer.verify_config import parse_config
from qihuang.errors import ConfigError
from qihuang.paths import resource

EXTRA = Path(__file__).parent / "fixtures" / "verify_extra_kb.jsonl"
IBU = "布洛芬缓释胶囊"  # indications 头痛 关节痛 牙痛 痛经 发热; adverse reactions 胃肠道不适 恶心 皮疹
AMOX = "阿莫西林胶囊"  # indications 肺炎 中耳炎 扁桃体炎; adverse reactions 皮疹 腹泻


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    kb = make_tiny_kb(tmp_path_factory.mktemp("verify") / "kb.sqlite")
    kb.import_source(EXTRA, progress=False)
    return kb


def _facts(kb, *entities, attributes=("indications", "adverse_reactions")):
    return [f for e in entities for f in kb.facts(e, list(attributes))]


def _status(v) -> dict[str, str]:
    return {c.text: c.status for c in v.claims}


def test_adverse_reaction_listed_as_indication_is_wrong_attribute(kb):
    text = f"{IBU}的适应症包括头痛、皮疹和痛经，副作用有恶心。"
    v = verify(kb, text, _facts(kb, IBU), ["indications"])
    assert _status(v) == {"头痛": "supported", "皮疹": "wrong_attribute", "痛经": "supported", "恶心": "supported"}
    rash = next(c for c in v.claims if c.text == "皮疹")
    assert text[rash.start:rash.end] == "皮疹" and rash.presented[0] == "indications"
    assert rash.cited == ["adverse_reactions"] and rash.entity == IBU
    assert v.counts["wrong_attribute"] == 1 and not v.ok
    assert text[rash.unit[0]:rash.unit[1]] == text  # one sentence


@pytest.mark.parametrize("text, expected", [
    ("可用于治疗头痛、关节痛，可能引起恶心。", {"头痛": "supported", "关节痛": "supported", "恶心": "supported"}),
    ("恶心、皮疹等不良反应较少见。", {"恶心": "supported", "皮疹": "supported"}),  # the cue follows the values
    ("头痛、恶心都是它的适应症。", {"头痛": "supported", "恶心": "wrong_attribute"}),
    ("适应症：\n1. 牙痛\n2. 恶心\n3. 发热", {"牙痛": "supported", "恶心": "wrong_attribute", "发热": "supported"}),
    ("不良反应：\n- 头痛\n- 皮疹", {"头痛": "wrong_attribute", "皮疹": "supported"}),
    ("主要用于缓解痛经。副作用是关节痛。", {"痛经": "supported", "关节痛": "wrong_attribute"}),
])
def test_the_sentence_cue_decides_the_presented_attribute(kb, text, expected):
    assert _status(verify(kb, text, _facts(kb, IBU), ["indications"])) == expected


def test_without_a_cue_the_question_attribute_is_the_fallback(kb):
    facts = _facts(kb, IBU)
    assert _status(verify(kb, "头痛，恶心。", facts, ["indications"])) == {"头痛": "supported",
                                                                          "恶心": "wrong_attribute"}
    assert _status(verify(kb, "头痛，恶心。", facts, ["adverse_reactions"])) == {"头痛": "wrong_attribute",
                                                                                "恶心": "supported"}
    assert verify(kb, "头痛，恶心。", facts, []).ok  # no cue, no asked attribute: any cited attribute


def test_swapped_entities_are_unsupported(kb):
    facts = _facts(kb, IBU, AMOX, attributes=("indications",))
    right = verify(kb, f"{IBU}用于头痛，{AMOX}用于肺炎。", facts, ["indications"])
    assert right.ok and right.counts["supported"] == 2
    swapped = verify(kb, f"{IBU}用于肺炎，{AMOX}用于头痛。", facts, ["indications"])
    assert _status(swapped) == {"肺炎": "unsupported", "头痛": "unsupported"}
    assert [c.entity for c in swapped.claims] == [IBU, AMOX]


def test_a_drug_of_another_disease_is_unsupported(kb):
    facts = kb.facts("偏头痛", ["drugs"])
    v = verify(kb, f"偏头痛可以吃布洛芬，也可以吃{AMOX}。", facts, ["drugs"], exclude={"偏头痛"})
    assert _status(v) == {"布洛芬": "supported", AMOX: "unsupported"}
    assert "偏头痛" not in _status(v)  # the question's own entity is not a claim
    # 二甲双胍 is only a value of two triples in the tiny KB: noise at min_support 3, a claim at 1
    v = verify(kb, "偏头痛可以吃二甲双胍。", facts, ["drugs"], exclude={"偏头痛"}, min_support=1)
    assert _status(v) == {"二甲双胍": "unsupported"}


def test_negated_mentions_are_recorded_not_counted(kb):
    v = verify(kb, f"{IBU}一般不会引起头痛，也没有发热的副作用。", _facts(kb, IBU), ["adverse_reactions"])
    assert _status(v) == {"头痛": "negated", "发热": "negated"}
    assert v.ok and v.counts["negated"] == 2
    listed = verify(kb, "一般不会引起头痛、关节痛或发热。", _facts(kb, IBU), ["adverse_reactions"])
    assert _status(listed) == {"头痛": "negated", "关节痛": "negated", "发热": "negated"}
    # 不良反应 starts with 不 but negates nothing
    assert _status(verify(kb, "不良反应有恶心。", _facts(kb, IBU), [])) == {"恶心": "supported"}


def test_values_inside_longer_words_and_noise_are_not_claims(kb):
    facts = kb.facts("偏头痛", ["drugs"])
    assert verify(kb, "具体检查请遵医嘱。", facts, ["drugs"]).claims == []  # 体检 inside 具体/检查
    assert _status(verify(kb, "做个体检吧。", facts, ["drugs"])) == {"体检": "unsupported"}
    # 联合 is a KB name only as one rare value: noise at min_support 3, a claim when every name counts
    assert verify(kb, "联合饮食调整。", facts, ["drugs"]).claims == []
    assert _status(verify(kb, "联合饮食调整。", facts, ["drugs"], min_support=1)) == {"联合": "unsupported"}
    # generic words (verify.yaml not_claims) and CMeKG names with a filler glued on are never claims
    assert verify(kb, "如出现不适请就医，中医认为应结合体质。", facts, ["drugs"], min_support=1).claims == []


def test_units_and_drop(kb):
    text = f"{IBU}的适应症包括头痛、皮疹和痛经。也能治疗肺炎。\n注意：\n1. 饭后服用\n"
    assert [text[u.start:u.end].strip() for u in split_units(text)] == [
        f"{IBU}的适应症包括头痛、皮疹和痛经。", "也能治疗肺炎。", "注意：", "1. 饭后服用"]
    v = verify(kb, text, _facts(kb, IBU), ["indications"])
    new, cut = drop_claims(text, v.bad, v.claims)
    assert new == f"{IBU}的适应症包括头痛和痛经。\n注意：\n1. 饭后服用"
    assert cut == ["、皮疹", "也能治疗肺炎。"]
    assert verify(kb, new, _facts(kb, IBU), ["indications"]).ok
    items = "适应症：\n1. 恶心\n2. 皮疹\n另外多喝水。"
    v = verify(kb, items, _facts(kb, IBU), ["indications"])
    assert drop_claims(items, v.bad, v.claims)[0] == "另外多喝水。"  # the lead-in goes with its items


def test_offsets_follow_the_original_text(kb):
    text = "它的適應症包括頭痛。"  # traditional characters: normalized for matching, offsets stay
    v = verify(kb, text, _facts(kb, IBU), [])
    assert [(text[c.start:c.end], c.status) for c in v.claims] == [("頭痛", "supported")]
    assert v.shifted(5).claims[0].start == v.claims[0].start + 5


def test_shipped_config_parses():
    config = load_config()
    assert "indications" in config.also_presents["treatment"]
    assert "indications" not in config.also_presents.get("adverse_reactions", ())
    assert all(config.messages.values()) and config.not_claims


def test_negation_comes_from_the_one_lexicon_and_an_old_negation_field_is_refused():
    from qihuang.kb.lexicon import load_lexicon

    assert load_lexicon().negation.negates("不会引起", answer=True)
    raw = yaml.safe_load(resource("verify.yaml").read_text(encoding="utf-8"))
    with pytest.raises(ConfigError, match="'negation' is no longer read"):
        parse_config({**raw, "negation": {"words": ["不"], "verbs": ["有"]}}, "verify.yaml")
    with pytest.raises(ConfigError, match="unknown field 'negations'"):
        parse_config({**raw, "negations": []}, "verify.yaml")


@pytest.mark.parametrize("field, value", [
    ("also_presents", {"treatment": ["nope"]}), ("also_presents", {"nope": ["drugs"]}), ("list_markers", ["("]),
    ("messages", {}), ("emergency_withheld", ["nope"]), ("not_claims", []),
    ("cue_after_connectors", ""), ("value_fillers", None),
])
def test_bad_config_fields_are_named(field, value):
    raw = yaml.safe_load(resource("verify.yaml").read_text(encoding="utf-8"))
    with pytest.raises(ConfigError, match=field.split(".")[0]):
        parse_config({**raw, field: value}, "verify.yaml")

def test_a_cmekg_name_with_a_filler_stands_for_the_value_inside(kb):
    assert any(m.name == "压痛等" for m in kb.find_entities("胆囊炎可有压痛等表现。"))
    v = verify(kb, "胆囊炎可有右上腹痛、压痛等表现。", kb.facts("胆囊炎", ["symptoms"]), ["symptoms"], min_support=1)
    assert _status(v) == {"右上腹痛": "supported", "压痛": "supported"}


def test_names_inside_the_question_entity_and_inside_cited_values(kb):
    facts = _facts(kb, IBU)
    # 布洛芬 is inside 布洛芬缓释胶囊 (a model repeating the drug's name): no claim
    assert verify(kb, "布洛芬缓。布洛芬缓释胶囊用于头痛。", facts, ["indications"]).counts["unsupported"] == 0
    # 阿司匹林肠溶片 copied out of a longer cited precaution is in the facts; named elsewhere it is not
    precautions = kb.facts("慢性胃溃疡", ["precautions"])
    v = verify(kb, "慢性胃溃疡要注意：避免同时服用阿司匹林肠溶片。", precautions, ["precautions"])
    assert v.ok and [c.status for c in v.claims if c.text == "阿司匹林肠溶片"] == ["supported"]
    other = verify(kb, "慢性胃溃疡要注意：避免同时服用阿莫西林胶囊。", precautions, ["precautions"])
    assert [c.status for c in other.claims] == ["unsupported"]
