"""The learned backstop of triage: when it is asked, what it is trained on, its settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from qihuang.answer.triage import load_rules, triage
from qihuang.answer.triage_model import read_examples, strip_negated
from qihuang.errors import ConfigError
from qihuang.paths import resource

QUESTIONS = Path(__file__).parents[1] / "benchmarks" / "triage" / "questions.jsonl"
UNKNOWN_WORDING = "我姥姥今天一直迷瞪着，喊了也只哼两声"  # no pattern covers this wording


def test_backstop_catches_wording_no_rule_knows():
    t = triage(UNKNOWN_WORDING)
    assert t.level == "emergency" and t.matched == ["learned_backstop"]
    assert "120" in t.message


def test_backstop_is_not_asked_for_general_questions_or_benign_ones():
    for q in ("心梗有什么症状？", "中风的早期表现有哪些", "感冒应该吃什么药？", "被蚊子咬了很痒"):
        assert triage(q).level == "none", q


def test_a_rule_file_without_a_model_section_has_no_backstop(tmp_path):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"]}
    path.write_text(yaml.safe_dump({"levels": levels, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    assert triage(UNKNOWN_WORDING, load_rules(path)).level == "none"


@pytest.mark.parametrize("model, message", [
    ({"threshold": 1.5, "c": 1, "label": "l", "advice": "a"}, "at most 1"),
    ({"threshold": 0.5, "c": 0, "label": "l", "advice": "a"}, "field 'c'"),
    ({"threshold": 0.5, "c": 1, "advice": "a"}, "field 'label'"),
    ("0.5", "expected a mapping"),
])
def test_bad_model_section_names_the_field(tmp_path, model, message):
    path = tmp_path / "flags.yaml"
    levels = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}
    rule = {"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"]}
    data = {"levels": levels, "rules": [rule], "model": model}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def test_negated_clauses_are_removed_before_classification():
    assert strip_negated("没有胸痛,只是有点咳嗽") == "只是有点咳嗽"
    assert strip_negated("没有力气,说话不清") == "说话不清"
    assert strip_negated("胸口痛,也没有出汗") == "胸口痛"


def test_training_examples_never_contain_the_current_held_out_part():
    rows = [json.loads(x) for x in QUESTIONS.read_text(encoding="utf-8").splitlines() if x.strip()]
    held_out = {r["question"] for r in rows if r["split"] == "heldout"}
    assert held_out, "the question set has a held-out part"
    texts, labels = read_examples()
    assert held_out.isdisjoint(t.splitlines()[-1] for t in texts)
    assert set(labels) == {"none", "urgent", "emergency"} and len(texts) >= 500


def test_bad_training_file_names_the_line(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"question": "a", "label": "none"}\n{"question": "b", "label": "severe"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ex.jsonl:2: field 'label'"):
        read_examples(path)


def test_shipped_model_section():
    rules = load_rules()
    assert rules.backstop is not None and 0 < rules.threshold <= 1
    assert resource("triage_examples.jsonl").is_file()
