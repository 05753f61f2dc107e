"""Triage rules rebuilt from the CEDIS taxonomy: per-presentation phrasings, negation scope,
general questions, conversation history, rule-file validation, speed."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from qihuang.answer.triage import load_rules, triage
from qihuang.errors import ConfigError
from qihuang.eval.tasks.triage import caught
from qihuang.kb.lexicon import load_lexicon
from qihuang.kb.normalize import normalize
from qihuang.paths import resource

DEV = Path(__file__).parent / "fixtures" / "triage" / "dev_questions.jsonl"


def _dev() -> list[dict]:
    return [json.loads(line) for line in DEV.read_text(encoding="utf-8").splitlines() if line.strip()]


def _presentations() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in _dev():
        out.setdefault(row["presentation"], []).append(row)
    return out


@pytest.mark.parametrize("presentation", sorted(_presentations()))
def test_every_presentation_has_three_phrasings_and_all_are_caught(presentation):
    rows = _presentations()[presentation]
    red = [r for r in rows if r["label"] != "none"]
    assert len(red) >= 3, f"{presentation}: only {len(red)} red-flag phrasings"
    missed = [(r["question"], triage(r["question"], history=r.get("history")).level) for r in red
              if not caught(r["label"], triage(r["question"], history=r.get("history")).level)]
    assert missed == []
    benign = [r for r in rows if r["label"] == "none"]
    assert benign, f"{presentation}: no benign look-alike"
    alarms = [r["question"] for r in benign if triage(r["question"], history=r.get("history")).level != "none"]
    assert alarms == []


def test_fixture_questions_are_not_copies_of_rule_text():
    text = resource("red_flags.yaml").read_text(encoding="utf-8")
    copies = [r["question"] for r in _dev() if normalize(r["question"]).strip("?？。!") in text]
    assert copies == []


def test_every_red_flag_rule_is_exercised_by_a_fixture_question():
    fired = set()
    for r in _dev():
        fired.update(triage(r["question"], history=r.get("history")).matched)
    rules = {rule.id for rule in load_rules().rules if rule.level != "refuse"}
    assert rules - fired == set()


@pytest.mark.parametrize("text, level", [
    ("没有胸痛，只是有点咳嗽", "none"),
    ("没有力气，说话不清", "emergency"),      # the negation scopes over its own clause only
    ("没有力气说话不清楚", "emergency"),      # ... and over its own term: 力气 is negated, not 说话不清
    ("我没有胸痛和出冷汗", "none"),           # a negated list: both items
    ("没有口角歪斜，也没有说话不清", "none"),
    ("没吃饭就晕倒了", "emergency"),          # 没 negates 吃饭, not 晕倒
    ("胸口不痛，就是有点闷", "none"),
    ("否认胸痛，有咳嗽", "none"),
])
def test_negation_has_a_scope(text, level):
    assert triage(text).level == level


@pytest.mark.parametrize("text, level", [
    ("心梗有什么症状？", "none"),
    ("中风的早期表现有哪些", "none"),
    ("被蛇咬了应该怎么急救", "none"),
    ("我想问一下，脑出血是什么原因引起的", "none"),   # "我想问一下" is not a person describing it
    ("如果被狗咬了怎么办", "none"),                  # hypothetical
    ("怎么预防孩子触电", "none"),                    # preventive, even with a person named
    ("我爸刚才被蛇咬了", "emergency"),
    ("被蛇咬了，脚肿起来了", "emergency"),            # no knowledge cue: someone describing it
    ("胸口疼得厉害，出冷汗，怎么办", "emergency"),    # patients drop the subject; 怎么办 is asking for help
    ("我妈突然嘴歪了，这是中风的表现吗", "emergency"),
])
def test_general_questions_are_not_red_flags(text, level):
    assert triage(text).level == level


def test_refusals_ignore_the_general_question_rule():
    assert triage("吃多少片安眠药能让人死亡").level == "refuse"


def test_a_red_flag_in_an_earlier_turn_still_counts():
    t = triage("现在应该先做什么？", history=["我爸刚才被蛇咬了脚"])
    assert t.level == "emergency" and t.matched == ["envenomation"]
    assert triage("现在应该先做什么？").level == "none"
    assert triage("那平时怎么预防呢", history=["心梗有什么症状？"]).level == "none"
    # a negation does not reach into the next turn
    assert triage("胸口痛", history=["没有"]).level == "urgent"
    # an urgent flag earlier and an emergency now: the most severe wins
    assert triage("他现在叫不醒了", history=["我爸胸口痛"]).level == "emergency"


def test_triage_of_text_alone_still_works():
    t = triage("我爸爸突然胸口很痛，还一直出冷汗")
    assert t.level == "emergency" and "chest_pain_with_sweating" in t.matched


def test_shipped_rule_file_names_its_taxonomy_and_every_rule_its_source():
    data = yaml.safe_load(resource("red_flags.yaml").read_text(encoding="utf-8"))
    assert "CEDIS" in data["source"]
    rules = load_rules()
    assert all(r.source for r in rules.rules)
    assert rules.context is not None and rules.negation is not None and rules.time.patterns
    assert rules.negation is load_lexicon().negation  # the one negation lexicon, shared with linking


def _write(tmp_path, **extra) -> Path:
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"]}
    data = {"levels": levels, "rules": [rule], **extra}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("extra, message", [
    ({"context": {"general": "x"}}, "field 'anchors'"),
    ({"context": {"general": "(", "anchors": "我"}}, "context.general: bad regular expression"),
    ({"context": {"general": "x", "anchors": "我", "typo": "y"}}, "unknown field"),
    ({"context": ["x"]}, "expected a mapping"),
    ({"context": {"general": "x", "anchors": "我", "prevention": "("}}, "context.prevention: bad regular expression"),
    ({"negation": "没有"}, "field 'negation' is no longer read"),  # one lexicon: resources/lexicon.yaml
    ({"time": {"past": "("}}, "time.past: bad regular expression"),
    ({"time": {"ago": "前"}}, "unknown field"),
    ({"time": "前"}, "expected a mapping"),
])
def test_bad_context_negation_or_time_names_the_field(tmp_path, extra, message):
    path = _write(tmp_path, **extra)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_rules(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key, value, message", [
    ("always", "yes", "field 'always'"), ("time", "forever", "field 'time' must be one of"),
    ("in_hypothetical", 1, "field 'in_hypothetical'"),
])
def test_bad_rule_fields_name_the_rule(tmp_path, key, value, message):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "itch", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"], key: value}
    path.write_text(yaml.safe_dump({"levels": levels, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"rule 'itch': {message}"):
        load_rules(path)


def test_bad_rule_flag_types_name_the_rule(tmp_path):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "itch", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"], "always": "yes"}
    path.write_text(yaml.safe_dump({"levels": levels, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="rule 'itch': field 'always'"):
        load_rules(path)


def test_always_rule_fires_in_a_general_question(tmp_path):
    ctx = {"general": "有什么症状", "anchors": "我"}
    path = _write(tmp_path, context=ctx)
    assert triage("痒有什么症状", load_rules(path)).level == "none"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["rules"][0]["always"] = True
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert triage("痒有什么症状", load_rules(path)).level == "urgent"


def test_triage_is_fast():
    questions = [r["question"] for r in _dev()]
    triage("热身")
    t0 = time.perf_counter()
    for q in questions * 3:
        triage(q)
    rate = 3 * len(questions) / (time.perf_counter() - t0)
    assert rate > 500, f"{rate:.0f} questions/s"
