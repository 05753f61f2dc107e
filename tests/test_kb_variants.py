"""The linker's second pass (kb/variants.py), question forms and asking clauses (kb/link.py), and the
missing-attribute fallback (kb/retrieve.py), on a small KB written for these tests."""

from __future__ import annotations

import pytest

from kb_fixture import kb_of_rows
from qihuang.answer.grounding import ground
from qihuang.errors import ConfigError

ROWS = [
    {"中心词": "支气管扩张症", "常见症状": ["咳痰", "咯血", "痰中带血"], "药物治疗": ["氨溴索"], "就诊科室": ["呼吸内科"],
     "病因": ["反复感染"]},
    {"中心词": "胃肠功能紊乱", "常见症状": ["腹胀", "腹痛", "恶心"], "就诊科室": ["消化内科"], "病因": ["精神压力"]},
    {"中心词": "尿路感染", "常见症状": ["尿痛", "尿频", "尿急"], "就诊科室": ["泌尿外科"], "药物治疗": ["左氧氟沙星"]},
    {"中心词": "白发病", "常见症状": ["毛发变白"], "就诊科室": ["皮肤科"], "病因": ["遗传"]},
    {"中心词": "腰肌劳损", "常见症状": ["腰痛", "腿痛", "小腿", "皮肤"], "就诊科室": ["骨科"]},
    {"中心词": "龋病", "常见症状": ["牙痛"], "就诊科室": ["口腔科"], "治疗": ["补牙"]},
    {"中心词": "跟腱断裂", "常见症状": ["足跟疼痛", "行走困难"], "就诊科室": ["骨科"], "手术治疗": ["跟腱修补术"]},
    {"中心词": "抗甲状腺微粒体抗体（ATMA）", "所属分类": ["免疫学检查"], "相关疾病": ["桥本甲状腺炎"]},
    {"中心词": "骨折", "常见症状": ["疼痛", "畸形"], "就诊科室": ["骨科"]},
    {"中心词": "指骨骨折", "常见症状": ["手指疼痛", "手指畸形"], "就诊科室": ["手外科"]},
    {"中心词": "赖氨葡锌颗粒", "适应症": ["锌缺乏"], "不良反应": ["恶心"], "成份": ["赖氨酸", "葡萄糖酸锌"]},
    {"中心词": "甲状腺功能亢进症", "常见症状": ["心悸", "多汗"], "检查": ["促甲状腺激素", "游离甲状腺素"]},
    {"中心词": "复方甲氧那明胶囊", "适应症": ["支气管哮喘", "咳嗽"], "不良反应": ["口干", "恶心"], "成份": ["盐酸甲氧那明"]},
    {"中心词": "高尿酸血症", "常见症状": ["关节痛"], "就诊科室": ["内分泌科"]},
    {"中心词": "慢性白血病", "常见症状": ["白细胞增多", "淋巴细胞增多", "血糖升高"], "就诊科室": ["血液内科"]},
    {"中心词": "牙周病", "常见症状": ["牙龈炎", "牙龈出血"], "就诊科室": ["口腔科"]},
    {"中心词": "好医生", "适应症": ["感冒"], "不良反应": ["皮疹"], "成份": ["板蓝根"]},  # a brand that is also words
    {"中心词": "痛经", "常见症状": ["下腹痛"], "就诊科室": ["妇科"]},
    {"中心词": "甲状腺素（T4）", "所属分类": ["内分泌检查"]},  # written 甲状腺素 too (the part before the parenthesis)
    {"中心词": "慢性浅表性胃炎", "常见症状": ["上腹痛"], "就诊科室": ["消化内科"]},
    {"中心词": "咳嗽性哮喘", "别称": ["咳嗽变异性哮喘"], "常见症状": ["哮喘", "咳嗽"], "就诊科室": ["呼吸内科"]},
    {"中心词": "急性淋巴细胞白血病", "常见症状": ["发热"], "就诊科室": ["血液内科"]},
    {"中心词": "慢性淋巴细胞白血病", "常见症状": ["乏力"], "就诊科室": ["血液内科"]},
    {"中心词": "湿疹", "常见症状": ["皮肤瘙痒", "头皮瘙痒"], "就诊科室": ["皮肤科"]},
    {"中心词": "羊肉", "性味": ["甘，温"], "禁忌": ["外感时邪者忌服"], "功效": ["温中暖肾"]},  # a food the KB types as a herb
]


@pytest.fixture
def kb(tmp_path):
    kb = kb_of_rows(tmp_path / "kb.sqlite", ROWS)
    yield kb
    kb.close()


def names(kb, text):
    return [m.name for m in kb.link(text).entities if not m.negated]


@pytest.mark.parametrize("text, expected", [
    ("我爸肚子老是胀，这是什么病？", ["腹胀"]),
    ("小便时有疼痛感，请问是怎么回事？", ["尿痛"]),
    ("最近眉毛开始变白了怎么办", ["毛发变白"]),
    ("跑步以后小腿疼得厉害", ["腿痛"]),
    ("一直牙根到耳根部很疼", ["牙痛"]),
    ("小腿发麻又疼", ["腿痛"]),  # the KB has no 腿麻木: the next feeling in reach
])
def test_a_body_part_and_a_feeling_name_a_kb_symptom(kb, text, expected):
    assert names(kb, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("最近后背痒得厉害，怎么回事", ["皮肤瘙痒"]),  # the KB has no 背瘙痒: the skin's itch
    ("孕妇手脚痒怎么办", ["皮肤瘙痒"]),
    ("头皮很痒怎么办", ["头皮瘙痒"]),  # the part's own name first
    ("后背疼得厉害", []),  # pain is no feeling of the skin (and the KB has no 背痛 here)
])
def test_a_skin_feeling_on_a_part_the_kb_names_nothing_for_is_the_skin_s(kb, text, expected):
    assert names(kb, text) == expected


@pytest.mark.parametrize("text, expected", [
    ("经前肚子疼怎么办", ["痛经"]),
    ("每次来月经的时候，肚子痛得厉害", ["痛经"]),  # a comma between: the same sentence
    ("我肚子疼，还一直拉不出来", ["腹痛"]),  # nothing says when: the symptom stays
    ("月经推迟了一周。今天肚子疼是怎么回事", ["腹痛"]),  # the period is told in another sentence
])
def test_a_symptom_whose_sentence_says_when_it_comes_names_the_narrower_entry(kb, text, expected):
    assert names(kb, text) == expected
    assert "痛经" not in names(kb, "来月经时肚子不疼")  # a denied pain is no dysmenorrhoea


def test_what_the_kb_does_not_name_is_not_composed_and_words_inside_other_words_are_no_parts(kb):
    assert names(kb, "我的手机坏了，很烦") == []  # no KB name 手烦; 手 of 手机 is no part
    assert names(kb, "做完手术后不是很痛，正常吗") == []  # 手 of 手术 is no hand: no 手痛
    assert names(kb, "眼睛很痒怎么办") == []  # 眼瘙痒 is no KB name here, and an eye is no skin-covered part


def test_a_negated_feeling_makes_a_negated_mention_and_a_later_one_wins(kb):
    res = kb.link("我的牙不疼，就是有点酸")
    assert [(m.name, m.negated) for m in res.entities] == [("牙痛", True)]
    assert names(kb, "牙都不疼，但是大牙那个位置疼一下疼一下") == ["牙痛"]


@pytest.mark.parametrize("text, expected", [
    ("体检尿酸有点偏高怎么办", [("高尿酸血症", False)]),  # a name of its own first (高{x}血症)
    ("白细胞偏高是怎么回事", [("白细胞增多", False)]),
    ("化验单上淋巴细胞比率升高", [("淋巴细胞增多", False)]),  # a measure word after the thing is left out
    ("最近牙龈发炎了", [("牙龈炎", False)]),
    ("查了血糖不高", [("血糖升高", True)]),  # a negation among the degree words
    ("孩子个子偏高", []),  # no KB name for it: nothing is guessed
])
def test_a_thing_written_with_how_it_changed_names_a_kb_symptom(kb, text, expected):
    assert [(m.name, m.negated) for m in kb.link(text).entities] == expected


def test_a_drug_name_that_starts_inside_a_common_word_is_no_mention(kb):
    assert names(kb, "您好医生，我最近牙痛") == ["牙痛"]  # 您好 is a greeting; 好医生 a brand
    assert names(kb, "好医生有什么副作用") == ["好医生"]  # written on its own it is the brand


def test_a_body_part_alone_is_no_entity_of_a_question(kb):
    assert names(kb, "小腿上的皮肤有点干") == []  # value nodes 小腿 and 皮肤 are parts, not symptoms
    assert kb.link("小腿上的皮肤有点干").abstained


def test_a_subject_written_without_its_suffix_or_parenthesis(kb):
    assert names(kb, "支气管扩张怎么办") == ["支气管扩张症"]
    assert names(kb, "抗甲状腺微粒体抗体偏高") == ["抗甲状腺微粒体抗体（ATMA）"]
    assert names(kb, "ATMA偏高有事吗") == ["抗甲状腺微粒体抗体（ATMA）"]


def test_a_generic_head_written_with_the_end_of_a_longer_name(kb):
    """变异性哮喘 is the end of 咳嗽变异性哮喘 (an alias of 咳嗽性哮喘): that subject, not the head 哮喘."""
    assert names(kb, "变异性哮喘怎么治？") == ["咳嗽性哮喘"]
    assert names(kb, "我有哮喘怎么办") == ["哮喘"]  # nothing of a longer name before it


def test_a_subject_written_without_its_course_modifier(kb):
    assert names(kb, "浅表性胃炎怎么治疗") == ["慢性浅表性胃炎"]  # one subject is written so
    assert "急性淋巴细胞白血病" not in names(kb, "淋巴细胞白血病怎么治疗")  # two are: neither is guessed
    assert "慢性淋巴细胞白血病" not in names(kb, "淋巴细胞白血病怎么治疗")


def test_a_long_name_written_with_one_character_more_or_less(kb):
    assert names(kb, "赖氨酸葡锌颗粒的作用？") == ["赖氨葡锌颗粒"]  # one too many; 赖氨酸 alone would be another entity
    assert names(kb, "孕五个月查促甲状腺素偏高") == ["促甲状腺激素"]  # one left out
    assert names(kb, "赖氨葡锌颗粒怎么吃") == ["赖氨葡锌颗粒"]  # written exactly: the linker's own
    # a shortened name inside the window (甲状腺素 of 甲状腺素（T4）) is no better reading than the full one
    assert names(kb, "孕五个月时查促甲状腺素为3.96，偏高") == ["促甲状腺激素"]
    assert names(kb, "甲状腺素偏高怎么办") == ["甲状腺素（T4）"]  # written as the shortened name alone: that one


def test_a_generic_head_with_the_modifiers_of_a_longer_name_links_that_name(kb):
    assert names(kb, "手指骨折了多久能好") == ["指骨骨折"]  # 指骨骨折 adds 指, written before 骨折
    assert names(kb, "骨折了多久能好") == ["骨折"]
    assert names(kb, "脚踝骨折，指甲也裂了") == ["骨折"]  # 指 after the head, in another clause: no


def test_a_name_written_with_one_homophone_is_found_next_to_other_mentions(kb):
    res = kb.link("咳嗽吃复方甲氧那名胶囊有什么副作用？")
    assert "复方甲氧那明胶囊" in [m.name for m in res.entities]
    assert {f.attribute for f in res.facts if f.entity == "复方甲氧那明胶囊"} == {"adverse_reactions"}


@pytest.mark.parametrize("text, asked", [
    ("我最近肚子老是胀，这是怎么回事？", {"related_diseases", "cause"}),  # described symptoms: which, and why
    ("最近肚子胀得厉害", {"related_diseases"}),  # a description that asks nothing in words: which diseases
    ("尿路感染严重吗？能治好吗", {"prognosis"}),
    # how it is treated is asked (the labelling guide); with no 治疗 facts, its drugs answer it
    ("支气管扩张症的病因和症状是什么，怎么治疗？", {"cause", "symptoms", "treatment"}),
])
def test_question_forms_ask_several_attributes(kb, text, asked):
    res = kb.link(text)
    assert set(res.attributes) >= asked
    if "怎么回事" not in text and "病因" not in text:
        assert "cause" not in res.attributes  # why is asked in words only
    if "treatment" in asked:
        assert "drugs" in {f.attribute for f in res.facts} and "drugs" not in res.attributes


def test_a_cue_in_a_clause_that_describes_asks_nothing(kb):
    res = kb.link("我有腹胀的症状，已经两周了，怎么办？")
    assert "symptoms" not in res.attributes and "treatment" in kb.detect_attributes("我有腹胀的症状，已经两周了，怎么办？")
    # a search query asks as a whole: its cues count although no clause has a question word
    assert kb.detect_attributes("尿路感染 症状") == ["symptoms"]
    # "X是什么病" asks what X is, not which diseases X may be
    assert not {"related_diseases", "cause"} & set(kb.link("支气管扩张症是什么病").attributes)


def test_a_story_that_asks_nothing_asks_no_attribute_through_its_cues(kb):
    story = "最近肚子老是胀，还有恶心的症状，吃了药也没用"
    assert "symptoms" not in kb.link(story).attributes  # 有…的症状 tells; it does not ask
    assert "symptoms" in kb.link("最近肚子老是胀，有哪些症状要注意？").attributes


def test_question_forms_never_read_statements(kb):
    """Verification detects cues in answers with the same linker: an answer asks nothing, so the question
    forms (可以吃 -> precautions) stay out of it."""
    assert kb.detect_attributes("尿路感染可以吃左氧氟沙星。") == []


def test_an_asked_attribute_the_kb_lacks_is_said_and_the_entity_s_facts_stand_in(kb):
    res = kb.link("跟腱断裂有什么注意事项？")
    assert res.missing == [("跟腱断裂", "precautions")] and not res.abstained
    assert {f.entity for f in res.facts} == {"跟腱断裂"}
    note = ground(kb, "跟腱断裂有什么注意事项？").coverage_note()
    assert note.startswith("知识库未收录：跟腱断裂的注意事项") and "其他信息" in note
    held = kb.link("跟腱断裂怎么手术？")  # the KB has it: nothing missing
    assert held.missing == [] and {f.attribute for f in held.facts} == {"surgery"}
    assert ground(kb, "跟腱断裂怎么手术？").coverage_note() == ""


def test_a_cue_of_several_readings_reads_as_the_named_type_has_it(kb):
    """治疗 of a disease asks how it is treated (the drugs answer it), never the indications a drug has;
    of a drug it asks the indications."""
    assert kb.link("支气管扩张症有什么方法治疗").attributes == ["treatment"]
    assert kb.link("左氧氟沙星治疗哪些病").attributes == ["indications"]
    # next to a drug it asks what the drug treats, though the disease named has treatments of its own
    assert kb.link("复方甲氧那明胶囊可以治疗龋病吗").attributes == ["indications"]


def test_does_it_work_for_a_named_disease_asks_indications_not_effects(kb):
    """用X治Y有效吗 asks whether X treats Y (its indications); X有效吗 alone also asks what X does."""
    for_disease = kb.detect_attributes("支气管扩张症用复方甲氧那明胶囊有效吗？")
    assert "indications" in for_disease and "efficacy" not in for_disease
    assert {"efficacy", "indications"} <= set(kb.detect_attributes("复方甲氧那明胶囊效果怎么样？"))


def test_a_test_result_out_of_range_also_asks_which_diseases_it_points_to(kb):
    """白细胞偏高，问题大吗 asks how serious and which diseases such a result points to (the real questions'
    labels); the diseases that list the value come back as reverse facts."""
    res = kb.link("白细胞偏高，问题大吗？")
    assert res.attributes == ["prognosis", "related_diseases"]
    assert any(f.entity == "慢性白血病" and f.via == "reverse" for f in res.facts)
    assert "related_diseases" in kb.link("促甲状腺激素偏高严重吗").attributes  # an examination written with its result
    assert kb.link("促甲状腺激素正常吗").attributes == ["prognosis"]  # no result out of range told
    assert kb.link("慢性白血病严重吗").attributes == ["prognosis"]  # a disease, not a result


def test_can_i_take_asks_contraindications_only_when_a_drug_is_named(kb):
    """能吃X吗 asks what to mind; what is contraindicated only when a drug is involved (the labelling guide)."""
    with_drug = set(kb.link("尿路感染可以吃左氧氟沙星吗？").attributes)
    assert {"precautions", "contraindications"} <= with_drug
    without = set(kb.detect_attributes("尿路感染可以吃辣椒吗？"))
    assert "precautions" in without and "contraindications" not in without
    # a named disease and a food the KB holds as a herb: what to mind stays asked although neither diseases
    # nor herbs have it in the KB, beside what the herb is contraindicated for
    food = kb.link("支气管扩张症可以吃羊肉吗？")
    assert {"precautions", "contraindications"} <= set(food.attributes)
    assert any(f.entity == "羊肉" and f.attribute == "contraindications" for f in food.facts)


def test_a_cause_told_in_a_description_is_not_asked(kb):
    told = "怎样预防反复感染引起的支气管扩张症？"
    assert "cause" not in kb.detect_attributes(told)
    asked = "支气管扩张症是什么原因引起的？"
    assert "cause" in kb.detect_attributes(asked)


def test_a_drug_taken_and_what_followed_asks_its_adverse_reactions(kb):
    """A form that reads the mentions (Ⓓ: a drug, Ⓢ: a symptom) counts in the story's clause too."""
    assert "adverse_reactions" in kb.link("吃了赖氨葡锌颗粒后一直恶心，正常吗？").attributes
    assert "adverse_reactions" in kb.link("用了复方甲氧那明胶囊，用后口干，怎么回事").attributes
    assert "adverse_reactions" not in kb.link("赖氨葡锌颗粒怎么吃？").attributes  # no story told
    assert kb.detect_attributes("吃了赖氨葡锌颗粒后恶心。") == []  # a statement (an answer) asks nothing
    # what followed the drug is what it does, not a disease to name: 怎么回事 adds no candidates' questions
    after = kb.link("吃了赖氨葡锌颗粒后一直恶心，这是怎么了？").attributes
    assert "related_diseases" not in after and "cause" not in after
    assert {"related_diseases", "cause"} <= set(kb.link("最近一直口干，怎么回事").attributes)  # no drug: which disease


@pytest.mark.parametrize("text, is_it", [
    ("我最近一直尿痛，是不是得了尿路感染？", True),
    ("最近腰痛，这可能是腰肌劳损吗", True),
    ("怎么判断自己是否得了尿路感染？", False),  # inside another question: how it is diagnosed
])
def test_is_it_x_at_the_head_of_a_clause_asks_which_disease_and_its_symptoms(kb, text, is_it):
    asked = set(kb.detect_attributes(text))
    assert ({"related_diseases", "symptoms"} <= asked) is is_it


@pytest.mark.parametrize("text, asked, not_asked", [
    ("赖氨葡锌颗粒要吃几个月？", {"dosage"}, {"prognosis"}),  # how long to take it
    ("赖氨葡锌颗粒吃多久能好？", {"prognosis"}, {"dosage"}),  # how long until it is better
    ("尿路感染有害吗", {"complications", "prognosis"}, set()),
    ("复方甲氧那明胶囊有没有依赖性", {"adverse_reactions"}, set()),
    ("尿路感染了，吃左氧氟沙星可以吗", {"precautions", "contraindications"}, {"indications"}),  # 吃X可以吗 = 能吃X吗
    ("赖氨葡锌颗粒是嚼服还是用水送服？", {"dosage"}, set()),
    ("最近老是尿痛，该咋整", {"treatment"}, set()),
    ("尿路感染严不严重", {"prognosis"}, set()),  # an A-not-A question asks, with no 吗 or question mark
    ("尿路感染吃什么水果", {"precautions"}, {"drugs"}),  # food, not medicine
    ("尿路感染可以做哪些检查", {"examinations"}, {"precautions"}),  # which tests, not whether one may
    ("尿路感染都查哪些项目？", {"examinations"}, set()),
])
def test_general_ways_of_asking(kb, text, asked, not_asked):
    found = set(kb.detect_attributes(text))
    assert asked <= found and not (not_asked & found)


def test_bad_question_forms_name_the_field(monkeypatch):
    from qihuang.kb import schema

    with pytest.raises(ConfigError, match=r"question_forms\[0\]: attributes"):
        schema._parse_forms([{"pattern": "怎么办", "attributes": ["no_such_attribute"]}], schema.load_schema().attributes)
    with pytest.raises(ConfigError, match=r"question_forms\[0\]: pattern: bad regular expression"):
        schema._parse_forms([{"pattern": "怎么(办", "attributes": ["treatment"]}], schema.load_schema().attributes)
    with pytest.raises(ConfigError, match=r"question_forms\[0\]: expected"):
        schema._parse_forms([{"pattern": "x", "attributes": ["treatment"], "typo": 1}], schema.load_schema().attributes)
    with pytest.raises(ConfigError, match=r"question_forms\[0\]: only_with"):
        schema._parse_forms([{"pattern": "x", "attributes": ["treatment"], "only_with": {"drugs": ["drug"]}}],
                            schema.load_schema().attributes)
    with pytest.raises(ConfigError, match=r"question_forms\[0\]: not_with"):
        schema._parse_forms([{"pattern": "x", "attributes": ["treatment"], "not_with": {"treatment": "disease"}}],
                            schema.load_schema().attributes)


def test_the_shipped_symptom_words_are_valid_and_bad_ones_name_the_field(tmp_path, monkeypatch):
    from qihuang.kb import variants

    words = variants.load_symptom_words()
    assert words.parts["肚子"] == ("腹",) and "痛" in words.feelings["疼"]
    bad = tmp_path / "symptom_words.yaml"
    bad.write_text("parts: {肚子: [腹]}\nfeelings: {疼: 痛}\n", encoding="utf-8")
    monkeypatch.setattr(variants, "resource", lambda name: bad)
    variants.load_symptom_words.cache_clear()
    try:
        with pytest.raises(ConfigError, match="symptom_words.yaml: feelings"):
            variants.load_symptom_words()
        bad.write_text("parts: {肚子: [腹]}\nfeelings: {疼: [痛]}\nchanges: {偏高: ['高{y}']}\n", encoding="utf-8")
        variants.load_symptom_words.cache_clear()
        with pytest.raises(ConfigError, match=r"symptom_words.yaml: .*changes.偏高: 高\{y\}"):
            variants.load_symptom_words()
        bad.write_text("parts: {肚子: [腹]}\nfeelings: {疼: [痛]}\nskin: {feelings: [痒], parts: [肚子]}\n",
                       encoding="utf-8")
        variants.load_symptom_words.cache_clear()
        with pytest.raises(ConfigError, match=r"symptom_words.yaml: skin .*skin.feelings: 痒"):
            variants.load_symptom_words()
        bad.write_text("parts: {肚子: [腹]}\nfeelings: {疼: [痛]}\ncontexts: {腹痛: {'月经(': 痛经}}\n", encoding="utf-8")
        variants.load_symptom_words.cache_clear()
        with pytest.raises(ConfigError, match=r"symptom_words.yaml: contexts.腹痛: pattern '月经\('"):
            variants.load_symptom_words()
    finally:
        variants.load_symptom_words.cache_clear()


def test_a_malformed_schema_file_is_named(tmp_path, monkeypatch):
    from qihuang.kb import schema

    bad = tmp_path / "kb_schema.yaml"
    bad.write_text('asking: "(\\w)[不没]\\1 \\q"\n', encoding="utf-8")
    monkeypatch.setattr(schema, "resource", lambda name: bad)
    schema.load_schema.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"kb_schema.yaml: line 1: cannot read the KB schema: found unknown escape"):
            schema.load_schema()
    finally:
        schema.load_schema.cache_clear()
