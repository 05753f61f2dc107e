"""Linking: the lexicon file, colloquial names, drug forms, the noise rule and negation (tiny KB)."""

from __future__ import annotations

import re

import pytest
import yaml

from kb_fixture import make_tiny_kb
from qihuang.errors import ConfigError
from qihuang.kb.lexicon import load_lexicon, parse_lexicon
from qihuang.kb.link import Linker
from qihuang.kb.noise import compute_noise, generic_names, protected_names
from qihuang.kb.normalize import normalize
from qihuang.paths import resource

LEXICON = yaml.safe_load(resource("lexicon.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def kb(tiny_db):
    kb = make_tiny_kb(tiny_db)
    kb._linker = Linker.build(kb, intent=False)  # these tests are about entities, not the learned detector
    yield kb
    kb.close()


@pytest.mark.parametrize("surface,target", sorted(LEXICON["colloquial"].items()))
def test_every_colloquial_entry_is_a_distinct_name(surface, target):
    lex = load_lexicon()
    key = normalize(surface)
    assert lex.colloquial[key] == target and key != normalize(target) and len(key) >= 2
    assert key not in lex.negation.cues  # a surface is a name, not a negation word


@pytest.mark.parametrize("section", ["drug_forms", "negation", "noise", "intent"])
def test_every_lexicon_section_parses(section):
    assert section in LEXICON
    assert getattr(load_lexicon(), section) is not None


@pytest.mark.parametrize("raw,where", [
    ({"negation": {"cues": ["没有"]}, "colloquial": {"头疼": ""}}, "colloquial"),
    ({"negation": {"cues": ["没有"]}, "colloquial": {"疼": "头痛"}}, "colloquial"),
    ({"negation": {"cues": [""]}}, "negation.cues"),
    ({"negation": {"cues": ["没"]}, "noise": {"min_support": 0}}, "noise.min_support"),
    ({"negation": {"cues": ["没"]}, "noise": {"rare_kept": "(炎"}}, "noise.rare_kept"),
    ({"negation": {"cues": ["没"]}, "intent": {"none": ["介绍一下"]}}, "intent.none"),
    ({"negation": {"cues": ["没"]}, "colloqial": {}}, "colloqial"),
    ({"colloquial": {}}, "negation"),
])
def test_lexicon_errors_name_file_and_field(raw, where):
    with pytest.raises(ConfigError, match=rf"lexicon\.yaml: {where}"):
        parse_lexicon(raw, "lexicon.yaml")


def test_colloquial_names_link_to_the_kb_name(kb):
    assert [m.name for m in kb.find_entities("偏头疼有哪些症状？")] == ["偏头痛"]  # not 头痛 inside it
    found = kb.find_entities("发烧、头疼，还有点心梗的感觉")
    assert [(m.name, m.surface, m.via_alias) for m in found] == [
        ("发热", "发烧", True), ("头痛", "头疼", True), ("心肌梗死", "心梗", True)]
    assert kb.find_entities("乙肝") == []  # its target is not in the tiny KB: the entry is skipped
    both = kb.find_entities("感冒发烧吃什么药")  # a subject keeps its own name; two mentions
    assert [m.name for m in both] == ["感冒", "发热"]


def test_drug_names_with_and_without_form_and_salt_words(kb):
    # the KB has 阿莫西林 only as a value (肺炎's drug): linked, with the product among its forms
    bare = kb.find_entities("阿莫西林有什么副作用")
    assert [(m.name, m.forms) for m in bare] == [("阿莫西林", ("阿莫西林胶囊",))]
    # a form or salt word in the text means the product, and the mention covers the whole written name
    product = kb.find_entities("盐酸二甲双胍缓释片怎么吃")
    assert [(m.name, m.surface, m.start, m.end) for m in product] == [("二甲双胍片", "盐酸二甲双胍缓释片", 0, 9)]
    assert kb.find_entities("布洛芬片")[0].name == "布洛芬缓释胶囊"
    assert kb.find_entities("阿莫西林胶囊")[0].name == "阿莫西林胶囊"  # an exact name stays exact
    assert kb.link("盐酸二甲双胍缓释片怎么吃").facts[0].attribute == "dosage"


def test_drug_stems():
    forms = load_lexicon().drug_forms
    assert forms.stem("盐酸二甲双胍缓释片") == "二甲双胍"
    assert forms.stem("注射用头孢曲松钠") == "头孢曲松"
    assert forms.stem("双氯芬酸钠缓释片") == "双氯芬酸"
    assert forms.stem("感冒颗粒") == "感冒颗粒"  # the stem would be shorter than min_stem


@pytest.mark.parametrize("text,negated", [
    ("没有发烧", {"发热"}),
    ("不咳嗽，头痛", {"咳嗽"}),
    ("无胸痛", {"胸痛"}),
    ("否认高血压、糖尿病病史", {"高血压", "糖尿病"}),
    ("没有发烧、咳嗽和头痛", {"发热", "咳嗽", "头痛"}),
    ("没有力气，头痛", set()),  # 没有力气 is itself a symptom (乏力); the next clause is not negated
    ("我没有发烧但是咳嗽", {"发热"}),
    ("这个药不会引起恶心吧", {"恶心"}),
    ("有没有发烧", set()),
    ("是不是高血压", set()),
    ("头痛不严重", set()),
    ("发烧不舒服，咳嗽", set()),
    ("没有注意到最近这几个星期以来一直头痛", set()),  # too far from the cue (max_gap)
    ("吃了药以后不头疼了", {"头痛"}),
    ("无明显诱因出现头痛", set()),  # a clinical formula, not a negated symptom
    ("不仅头疼还发烧", set()),
    ("无发热伴有胸痛", {"发热"}),
    ("平时怎么做才能不得感冒？", set()),  # a prevention question: nothing is said to be absent
])
def test_negation_scope(kb, text, negated):
    found = kb.find_entities(text)
    assert found and {m.name for m in found if m.negated} == negated
    assert all("negated" in m.to_dict() for m in found)


def test_noise_rule_generic_words_and_real_names():
    rule = load_lexicon().noise
    support = {"感觉": 11, "咳嗽": 2648, "理解": 2, "布洛芬": 80}
    assert generic_names(set(support), support, 967_000, rule) == {"感觉", "理解"}


def test_noise_names_on_the_tiny_kb(kb):
    noise = kb.noise_names()
    assert {"症状", "治疗"} <= noise  # link stopwords
    assert not noise & {"头痛", "发热", "布洛芬", "咳嗽", "高血压", "糖尿病", "胸闷"}  # a small KB: support says nothing
    # the rare rule applies from min_kb_triples on: with it lowered, rare value-only names are noise ...
    rule = load_lexicon().noise.model_copy(update={"min_kb_triples": 0})
    strict = compute_noise(kb.conn, kb.schema.link_stopwords, kb.rare_values(rule.min_support), rule)
    assert {"反复发作性头痛", "畏光"} <= strict
    assert "高血压" not in strict and "胸闷" not in strict  # ... never a subject or a colloquial target (胸口闷)
    kept = re.compile(rule.rare_kept)
    assert {n for n in kb.rare_values(3) - protected_names(kb.conn) if not kept.search(n)} <= strict
    assert {"中耳炎", "胃溃疡"} <= kb.rare_values(3) and not strict & {"中耳炎", "胃溃疡"}  # read as medical names
    loose = compute_noise(kb.conn, kb.schema.link_stopwords, kb.rare_values(rule.min_support),
                          rule.model_copy(update={"rare_kept": ""}))
    assert {"中耳炎", "胃溃疡"} <= loose  # without the rule they are noise like any rare name


def test_the_linker_excludes_noise_names(tiny_db):
    kb = make_tiny_kb(tiny_db)
    try:
        kb._noise = kb.noise_names() | {"胸闷"}
        kb._linker = Linker.build(kb, intent=False)
        assert [m.name for m in kb.find_entities("胸闷、心悸")] == ["心悸"]
    finally:
        kb.close()


def test_linking_data_is_cached_per_kb_content(tmp_path, qihuang_home, monkeypatch):
    import qihuang.kb.link as link_mod
    from qihuang.kb import KnowledgeBase

    db = tmp_path / "kb.sqlite"
    make_tiny_kb(db).close()
    with KnowledgeBase.open(db) as first:
        Linker.build(first, intent=False)
    assert {p.name.split("-")[0] for p in (qihuang_home / "cache").glob("*.pkl")} == {"noise", "entities"}
    monkeypatch.setattr(link_mod, "_entity_automaton", lambda *a: pytest.fail("rebuilt"))
    with KnowledgeBase.open(db) as again:  # same content: loaded, not rebuilt
        assert Linker.build(again, intent=False).find_entities("头疼")[0].name == "头痛"
    monkeypatch.undo()
    with KnowledgeBase.open(db) as changed:  # new content: a new key
        changed.conn.execute("INSERT INTO entities (name, type, is_subject) VALUES ('新病', 'disease', 1)")
        assert Linker.build(changed, intent=False).find_entities("新病")[0].name == "新病"


def test_dev_questions_file_is_well_formed():
    import json
    from pathlib import Path

    from qihuang.kb.schema import load_schema

    path = Path(__file__).parent / "fixtures" / "retrieval_dev_link.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = set(load_schema().attributes)
    assert len(rows) >= 150 and sum(r["split"] == "held" for r in rows) >= 30
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert r["split"] in {"tune", "held"} and r["question"].strip()
        assert set(r["attributes"]) <= keys and set(r["negated"]) <= set(r["entities"])
        assert r["kind"] in {"single", "multi", "negated", "not_in_kb"}


def test_a_product_written_without_its_letter():
    """钙尔奇 for 钙尔奇D: a product's name without the letter that ends it is a way to write it when no other
    product is written so (维生素B and 维生素C leave 维生素 to itself); diseases keep their letters."""
    from qihuang.kb.link import _name_variants

    nodes = {"钙尔奇D": ("drug", 1), "维生素B": ("drug", 1), "维生素C": ("drug", 1), "毒毛苷K": ("drug", 1),
             "甲型肝炎A": ("disease", 1), "钙片D": ("drug", 1), "善存片": ("drug", 0)}
    got = {(surface, name) for surface, name, _t in _name_variants(nodes)}
    assert ("钙尔奇", "钙尔奇D") in got and ("毒毛苷", "毒毛苷K") in got
    assert not {s for s, _n in got} & {"维生素", "甲型肝炎", "钙片"}  # two products; a disease; two Han characters


def test_a_one_character_disease_links_only_as_a_word_of_its_own():
    """痣 in 一颗痣 is the disease; inside a longer word jieba knows (疖子, 痔疮) it is not a mention alone."""
    from qihuang.kb.link import _single_in_word

    assert _single_in_word("取一颗痣会", [(0, 3)]) == set()
    assert _single_in_word("长了疖子", [(1, 2)]) == {1}
    assert _single_in_word("得了痔疮", [(7, 2)]) == {7}
