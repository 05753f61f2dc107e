"""How triage reads around a match: absent-symptom lists, prevention, time (past, long-standing, acute
change), and suicidal intent said without a suicide word (simplified, traditional, no punctuation)."""

from __future__ import annotations

import pytest

from qihuang.answer.triage import read, triage
from qihuang.kb.lexicon import load_lexicon


@pytest.mark.parametrize("text", [
    "胸口有点闷，不疼不出汗也不喘",
    "孩子发烧了，不抽不吐也不蔫",
    "没有头晕也没有呕吐，就是头有点沉",
    "无胸痛无气短，偶尔心慌",
    "嘴不歪，说话也清楚，就是手有点麻木感",
    "我没有胸痛和出冷汗",
])
def test_a_list_of_absent_symptoms_negates_each_item(text):
    assert triage(text).level == "none"


@pytest.mark.parametrize("head, negated", [
    ("不胸闷不出", True),          # 不出汗: the cue and its follower
    ("没有发烧、咳嗽和", True),     # one cue over a list
    ("说不出", True),
    ("有没有", False),              # a question, not a negation
    ("不舒服和", False),            # 不舒服 is a symptom
    ("没有胸痛只是有点咳嗽和", False),  # a break word ends the scope
])
def test_the_shared_lexicon_reads_negation_scope(head, negated):
    assert load_lexicon().negation.negates(head) is negated


def test_answer_text_has_its_own_extra_cues():
    neg = load_lexicon().negation
    assert neg.negates("不建议服用", answer=True) and not neg.negates("不建议服用")
    assert not neg.negates("特别", answer=True)  # 别 inside 特别 negates nothing


@pytest.mark.parametrize("text, level", [
    ("家长怎么教孩子防溺水", "none"),
    ("出去爬山要带些什么，以防被毒蛇咬伤", "none"),
    ("冬天烧炭取暖怎么避免煤气中毒", "none"),
    ("我爸刚才被蛇咬了，怎么防止伤口感染", "emergency"),  # the bite itself is not what is prevented
])
def test_prevention_is_not_an_emergency(text, level):
    assert triage(text).level == level


PAST = ["我三年前被流浪猫咬过，打了疫苗，现在手上有道疤", "孩子四岁时抽搐过一次，后来一直没再犯",
        "上个月吃了不干净的东西上吐下泻，早就好了，想问问怎么养胃", "被狗咬了以后打完了全程疫苗，伤口也长好了",
        "大学时候出过一次车祸，现在阴天腿有点酸", "我爸以前中过风，现在想问问平时怎么锻炼"]
LONG_STANDING = ["我走快一点就喘，这样已经两年多了", "长期胸口闷，做过好几次心电图都正常",
                 "这三年来一直觉得呼吸不太顺，体检没查出问题", "我经常胸口疼一下，几秒就好"]


@pytest.mark.parametrize("text", PAST + LONG_STANDING)
def test_a_past_event_or_a_long_standing_complaint_without_change_is_not_a_red_flag(text):
    assert triage(text).level == "none"


@pytest.mark.parametrize("text", [
    "我爸有高血压二十年了，今天突然一边手脚没劲，说话不清楚",
    "胸口闷了好几年，今天疼得厉害，一直冒冷汗",
    "头疼好多年了，但刚才突然疼得像要炸开，还吐了",
    "我妈长期便秘，今天吐了一大口血",
])
def test_sudden_onset_or_acute_worsening_still_counts(text):
    assert triage(text).level == "emergency"


def test_time_stretches():
    t = read("活动后气喘，已经持续两年了，今天突然喘不上气")
    kinds = [(t.text[a:b], kind) for a, b, kind in t.stretches]
    assert kinds[0] == ("活动后气喘,", "chronic") and kinds[-1][1] == "present"
    # an age is not a duration: "两个月的宝宝" is a baby, not a complaint of two months
    assert triage("两个月的宝宝发烧38度").level == "emergency"
    # an event rule is not discounted by a duration, a complaint rule is
    assert triage("我被狗咬了，伤口流血，我有糖尿病十年了").level == "urgent"


@pytest.mark.parametrize("text", [
    "我就是家里的累赘，药我已经攒够了",                  # a burden, stockpiled medicine
    "跟大家说声再见吧，以后不用再为我操心了",              # a farewell
    "我把存款都转给了弟弟，猫也托付给了邻居，明天就去江边",  # giving things away, a place and a day
    "要是我永远睡过去不醒，大家应该会轻松很多",            # hypothetical wording, still intent
    "我覺得自己是全家的負擔，藥已經存夠了，週末就結束吧",    # traditional characters
    "活着太累了刀片就放在抽屉里今晚就做个了断",            # one line without punctuation
    "我女儿今天说她走了我们就解脱了，还把零花钱都分给了同学",  # said about someone else
])
def test_suicidal_intent_without_a_suicide_word_is_always_an_emergency_with_the_crisis_message(text):
    t = triage(text)
    assert t.level == "emergency", t
    assert "12356" in t.message and "120" in t.message


@pytest.mark.parametrize("text", [
    "把旧衣服都捐了，周末大扫除，灰尘过敏怎么办",
    "攒了点年假，下周去海边玩，要带什么药",
    "跟同事们道别后去聚餐，吃多了胃胀",
])
def test_everyday_plans_are_not_suicidal(text):
    assert triage(text).level == "none"


def test_a_past_suicide_word_still_counts():  # never discounted: a false alarm is acceptable, a miss is not
    assert triage("我三年前想过自杀").level == "emergency"
