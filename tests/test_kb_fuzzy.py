"""One-homophone typo matching (kb/fuzzy.py) and the lexical fallback's name rule (tiny fixture KB)."""

import pytest

from kb_fixture import make_tiny_kb
from qihuang.kb.fuzzy import TypoIndex, homophones


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    kb = make_tiny_kb(tmp_path_factory.mktemp("fuzzy") / "kb.sqlite")
    yield kb
    kb.close()


def test_homophones_share_a_toneless_reading():
    assert homophones("学", "血") and homophones("交", "胶") and homophones("并", "病")
    assert not homophones("泰", "力") and not homophones("血", "血") and not homophones("a", "b")


def test_typo_index_needs_one_homophone_in_a_long_enough_name():
    index = TypoIndex({"高血压": "高血压", "阿莫西林胶囊": "阿莫西林胶囊", "痛风": "痛风", "诺和力": "诺和力"})
    assert index.find("我有高学压怎么办") == [("高血压", 2, 5)]
    assert index.find("阿莫西林交囊怎么吃") == [("阿莫西林胶囊", 0, 6)]
    assert index.find("痛疯怎么办") == []  # two characters: one wrong one is half the name
    assert index.find("诺和泰一周打几针") == []  # 泰 does not sound like 力: another name
    assert index.find("高血压") == []  # an exact name is the linker's, not a typo


@pytest.mark.parametrize("question, expected", [
    ("偏头通有哪些症状", "偏头痛"),
    ("冠心并有什么症状", "冠心病"),
    ("缺铁性贫学要查什么", "缺铁性贫血"),
    ("氯雷他订片有什么副作用", "氯雷他定片"),
])
def test_homophone_typos_are_found(kb, question, expected):
    """A name of 3 characters written with one homophone is found by the lexical fallback (hedged as a
    lexical match); a longer one is a mention of the linker's second pass (kb/variants.py), with the
    surface as written."""
    res = kb.link(question)
    assert res.facts and {f.entity for f in res.facts} == {expected}
    if len(expected) <= 3:
        assert res.entities == [] and {f.via for f in res.facts} == {"lexical"}
    else:
        assert [(m.name, m.via_alias) for m in res.entities] == [(expected, True)]
        assert res.entities[0].surface == question[:len(expected)]


@pytest.mark.parametrize("question", [
    "二甲双胺片怎么吃",  # 胺 does not sound like 胍
    "冠心肌梗死",  # shares characters with names, writes none of them
    "偏痛头有哪些症状",  # the characters of a name in another order
    "甲双胍注射液怎么用",  # a form word and part of a stem are no name
    "人参鸡汤怎么炖",
])
def test_lexical_fallback_needs_the_name_written(kb, question):
    res = kb.link(question)
    assert not any(f.via == "lexical" for f in res.facts)


def test_a_name_inside_a_longer_word_is_no_mention(tmp_path):
    import json

    from qihuang.kb import KnowledgeBase

    src = tmp_path / "kb.jsonl"
    rows = [{"中心词": "瑞思", "适应症": ["感染"], "不良反应": ["恶心"], "成份": ["阿莫西林"], "药品类型": ["化学药品"]},
            {"中心词": "高血压", "药物治疗": ["瑞思"], "就诊科室": ["心内科"], "临床症状及体征": ["头晕"]},
            {"中心词": "狂犬病", "药物治疗": ["疫苗"], "就诊科室": ["感染科"]}]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    kb = KnowledgeBase.create(tmp_path / "kb.sqlite")
    kb.import_source(src, progress=False)
    try:
        assert [m.name for m in kb.find_entities("吃瑞思会恶心吗")] == ["瑞思"]
        assert [m.name for m in kb.find_entities("瑞思有什么副作用")] == ["瑞思"]
        assert [m.name for m in kb.find_entities("我在吃瑞思缓释片")] == ["瑞思"]
        assert kb.find_entities("阿兹瑞思片主治什么") == []  # after an unknown word: a longer name
        assert kb.find_entities("瑞思坦胶囊的不良反应") == []  # 瑞思坦, an unknown drug
        assert kb.link("瑞思坦胶囊的不良反应").abstained
        assert [m.name for m in kb.find_entities("打了疫苗有什么反应")] == ["疫苗"]
        assert [m.name for m in kb.find_entities("狂犬病疫苗要打几针")] == ["狂犬病", "疫苗"]
        assert kb.find_entities("九价HPV疫苗要打几针") == []  # after Latin letters: a longer name
    finally:
        kb.close()
