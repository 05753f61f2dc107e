"""Red-flag triage: our own red-flag and benign question sets, rule-file validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qihuang.answer.triage import LEVELS, load_rules, triage
from qihuang.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "triage"
SEVERITY = {name: i for i, name in enumerate(LEVELS)}


def _red_flags() -> list[tuple[str, str]]:
    data = yaml.safe_load((FIXTURES / "red_flag_questions.yaml").read_text(encoding="utf-8"))
    return [(level, q) for level, questions in data.items() for q in questions]


def _benign() -> list[str]:
    lines = (FIXTURES / "benign_questions.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_no_red_flag_missed():
    cases = _red_flags()
    assert len(cases) >= 60
    missed = []
    for expected, question in cases:
        got = triage(question)
        if expected == "refuse":
            ok = got.level == "refuse"
        else:  # a red flag must reach at least its level, and must not be refused
            ok = got.level != "refuse" and SEVERITY[got.level] >= SEVERITY[expected]
        if not ok:
            missed.append((expected, got.level, question))
    print(f"\nred flags: {len(cases)} questions, {len(missed)} missed")
    assert missed == []


def test_few_false_alarms_on_benign_questions():
    questions = _benign()
    assert len(questions) >= 80
    alarms = [(q, triage(q).level) for q in questions if triage(q).level != "none"]
    print(f"\nbenign: {len(questions)} questions, {len(alarms)} false alarms: {alarms}")
    assert len(alarms) <= len(questions) * 0.03


def test_emergency_message_and_matched_rules():
    t = triage("我爸爸突然胸口很痛，还一直出冷汗")
    assert t.level == "emergency" and t.is_red_flag
    assert "chest_pain_with_sweating" in t.matched
    assert "120" in t.message and "心肌梗死" in t.message


def test_refusal_carries_crisis_advice():
    t = triage("吃多少片安眠药能让人死亡")
    assert t.level == "refuse" and not t.is_red_flag
    assert "12356" in t.message and "不能提供" in t.message


def test_negation_suppresses_a_symptom():
    assert triage("我没有胸痛，也没有出冷汗").level == "none"
    assert triage("我胸痛，没有出汗").level == "urgent"  # chest pain alone is still urgent


def test_unless_vetoes_benign_twitching():
    assert triage("眼皮抽搐好几天了").level == "none"
    assert triage("孩子突然抽搐").level == "emergency"


def test_traditional_and_full_width_are_normalized():
    assert triage("他突然說話不清楚").level == "emergency"
    assert triage("喝了８４消毒液").level == "emergency"


def test_empty_text_is_none():
    t = triage("")
    assert (t.level, t.message, t.matched) == ("none", "", [])


def test_shipped_rule_file_is_valid():
    rules = load_rules()
    assert len(rules.rules) >= 20
    levels = {r.level for r in rules.rules}
    assert levels == {"urgent", "emergency", "refuse"}


@pytest.mark.parametrize("rule, message", [
    ({"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["("]}, "bad regular expression"),
    ({"id": "x", "level": "severe", "label": "l", "advice": "a", "any": ["a"]}, "field 'level'"),
    ({"id": "x", "level": "urgent", "label": "l", "advice": "a"}, "exactly one of 'any'"),
    ({"id": "x", "level": "urgent", "advice": "a", "any": ["a"]}, "field 'label'"),
])
def test_bad_rule_file_names_the_rule(tmp_path, rule, message):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    path.write_text(yaml.safe_dump({"levels": levels, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_custom_rule_file(tmp_path):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "尽快就医：{labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "itch", "level": "urgent", "label": "瘙痒", "advice": "去看皮肤科", "any": ["痒"]}
    path.write_text(yaml.safe_dump({"levels": levels, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    t = triage("皮肤很痒", load_rules(path))
    assert t.level == "urgent" and t.message == "尽快就医：瘙痒\n去看皮肤科"
