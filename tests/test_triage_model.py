"""The learned backstop of triage: when it is asked, what it reads and is trained on, its cap, its settings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from qihuang.answer.triage import BACKSTOP, LEARNED_SELF_HARM, load_rules, read, triage
from qihuang.answer.triage_model import read_examples, weights
from qihuang.errors import ConfigError
from qihuang.paths import resource

SETS = Path(__file__).parents[1] / "benchmarks" / "triage"
UNKNOWN_WORDING = "我姥姥今天一直迷瞪着，喊了也只哼两声"  # no pattern covers this wording
LEVELS = {"urgent": "u {labels}", "emergency": "e {labels}", "refuse": "r {labels}"}


def _rules_with_model(tmp_path, **model) -> Path:
    """The shipped rule file with its ``model`` section changed."""
    data = yaml.safe_load(resource("red_flags.yaml").read_text(encoding="utf-8"))
    data["model"] = {**data["model"], **model}
    path = tmp_path / "flags.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_backstop_catches_wording_no_rule_knows():
    t = triage(UNKNOWN_WORDING)
    assert t.level == "emergency" and t.matched == [BACKSTOP]
    assert "120" in t.message


def test_backstop_is_not_asked_for_general_questions_or_benign_ones():
    for q in ("心梗有什么症状？", "中风的早期表现有哪些", "感冒应该吃什么药？", "被蚊子咬了很痒",
              "宝宝出生十几天，一顿喝多少毫升奶合适", "做完双眼皮一周，眼皮还是硬硬的"):
        assert triage(q).level == "none", q


def test_alone_it_raises_urgent_unless_its_emergency_probability_is_very_high(tmp_path):
    capped = load_rules(_rules_with_model(tmp_path, urgent=0.01, emergency=1.0))
    t = triage(UNKNOWN_WORDING, capped)
    assert t.level == "urgent" and t.matched == [BACKSTOP]
    loose = load_rules(_rules_with_model(tmp_path, urgent=0.01, emergency=0.01))
    assert triage(UNKNOWN_WORDING, loose).level == "emergency"


def test_backstop_never_overrides_a_rule():
    t = triage("我胸痛，没有出汗")  # the chest-pain rule says urgent; the backstop is not asked
    assert t.level == "urgent" and BACKSTOP not in t.matched


def test_backstop_reads_only_what_is_said_now():
    assert read("五年前被狗咬过，现在伤口有点痒").current_text() == "现在伤口有点痒"
    assert read("活动后气喘，已经持续两年了，想问问吃什么药").current_text() == "想问问吃什么药"
    assert read("没有胸痛，只是有点咳嗽").current_text() == "只是有点咳嗽"
    assert read("我爸今天没有发烧，也不吐").current_text() == ""
    assert read("我喘不上气").current_text() == "我喘不上气"  # a potential complement is not a negation
    assert triage("十年前被蛇咬过一次，当时住了院").level == "none"


def test_weights_give_red_flags_their_share():
    labels = ["none"] * 8 + ["urgent", "emergency"]
    w = weights(labels, 0.1)
    red = sum(x for x, label in zip(w, labels) if label != "none")
    assert red / sum(w) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="both red flags and 'none'"):
        weights(["none", "none"], 0.1)


def test_training_file_is_mostly_ordinary_questions_and_never_a_held_out_part():
    examples = read_examples()
    counts = Counter(examples.labels)
    assert set(counts) == {"none", "urgent", "emergency"} and counts["none"] > counts["urgent"] + counts["emergency"]
    assert 50 <= sum(examples.self_harm) < counts["emergency"]  # the suicidal-intent head has its own examples
    last_turns = {t.splitlines()[-1] for t in examples.texts}
    for name in ("questions.jsonl", "context.jsonl"):  # the part never tuned on is split "heldout"
        rows = [json.loads(x) for x in (SETS / name).read_text(encoding="utf-8").splitlines() if x.strip()]
        held_out = {r["question"] for r in rows if r["split"] == "heldout"}
        assert held_out.isdisjoint(last_turns), name
        assert held_out or name == "questions.jsonl"  # the older set's last part was tuned on (heldout7)
    sources = {json.loads(x)["source"].split()[0] for x in resource("triage_examples.jsonl").read_text(
        encoding="utf-8").splitlines() if x.strip()}
    assert {"triage/questions.jsonl", "triage/context.jsonl", "written"} <= sources


def test_a_rule_file_without_a_model_section_has_no_backstop(tmp_path):
    path = tmp_path / "flags.yaml"
    rule = {"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"]}
    path.write_text(yaml.safe_dump({"levels": LEVELS, "rules": [rule]}, allow_unicode=True), encoding="utf-8")
    assert triage(UNKNOWN_WORDING, load_rules(path)).level == "none"


_MODEL = {"urgent": 0.5, "emergency": 0.9, "self_harm": 0.1, "c": 1, "red_share": 0.1, "label": "l", "advice": "a",
          "self_harm_label": "s", "self_harm_advice": "crisis"}


@pytest.mark.parametrize("change, message", [
    ({"urgent": 1.5}, "at most 1"), ({"c": 0}, "field 'c'"), ({"red_share": 2}, "field 'red_share'"),
    ({"self_harm": True}, "field 'self_harm'"), ({"label": None}, "field 'label'"),
    ({"self_harm_advice": ""}, "field 'self_harm_advice'"), ({"emergency": None}, "field 'emergency'"),
    ({"threshold": 0.5}, "unknown field"),
])
def test_bad_model_section_names_the_field(tmp_path, change, message):
    model = {k: v for k, v in {**_MODEL, **change}.items() if v is not None}
    _check_model(tmp_path, model, message)


def test_a_model_section_that_is_not_a_mapping(tmp_path):
    _check_model(tmp_path, "0.5", "expected a mapping")


def _check_model(tmp_path, model, message):
    path = tmp_path / "flags.yaml"
    rule = {"id": "x", "level": "urgent", "label": "l", "advice": "a", "any": ["痒"]}
    data = {"levels": LEVELS, "rules": [rule], "model": model}
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_rules(path)


def test_bad_training_file_names_the_line(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('{"question": "a", "label": "none"}\n{"question": "b", "label": "severe"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"ex.jsonl:2: field 'label'"):
        read_examples(path)


def test_the_suicidal_intent_head_carries_the_crisis_advice(tmp_path):
    text = "这日子过不下去了，我把自己关在房间里，把那些药片都摆在了桌上"  # no rule pattern needed
    loose = load_rules(_rules_with_model(tmp_path, self_harm=0.001, urgent=1.0))
    t = triage(text, loose)
    assert t.level == "emergency" and LEARNED_SELF_HARM in t.matched
    assert "12356" in t.message and "120" in t.message
    strict = load_rules(_rules_with_model(tmp_path, self_harm=1.0, urgent=1.0))
    assert LEARNED_SELF_HARM not in triage(text, strict).matched


def test_a_baby_care_question_is_not_read_as_suicidal():
    # a recurrence (每次) is context the backstop keeps: stripping it once left "我的宝宝已经15天了"
    assert triage("我的宝宝已经十五天了，我每次给他喂九十毫升的奶，这个量正常吗").level == "none"


def test_shipped_model_section():
    backstop = load_rules().backstop
    assert backstop is not None and 0 < backstop.urgent <= backstop.emergency <= 1 and 0 < backstop.self_harm < 1
    assert 0 < backstop.red_share < 0.5  # calibrated to a realistic share of red flags
    assert resource("triage_examples.jsonl").is_file()


def test_fast_scoring_matches_scikit_learn():
    """The shipped model, scored by hand (textclf.py), says what scikit-learn fitted on the same examples says."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from qihuang.answer.triage_model import default_model, prepared_examples

    examples = prepared_examples()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2, lowercase=False)
    x = vec.fit_transform(examples.texts)
    w = weights(examples.labels, 0.1)
    heads = ([label != "none" for label in examples.labels], [label == "emergency" for label in examples.labels],
             examples.self_harm)
    models = [LogisticRegression(C=16.0, solver="liblinear").fit(x, y, sample_weight=w) for y in heads]
    model = default_model()
    for text in ("我姥姥今天一直迷瞪着，喊了也只哼两声", "宝宝出生十几天  喝奶多少合适", "不想活了", "x", ""):
        xt = vec.transform([text])
        expected = [m.predict_proba(xt)[0][list(m.classes_).index(True)] for m in models]
        assert [*model.probabilities(text), model.self_harm_probability(text)] == pytest.approx(expected, abs=1e-9)


def test_training_rows_taken_from_a_question_set_match_it():
    def lines(path):
        return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]

    sets = {name: {r["question"]: r for r in lines(SETS / name)} for name in ("questions.jsonl", "context.jsonl")}
    rows = lines(resource("triage_examples.jsonl"))
    for row in rows:
        where, _, split = row["source"].partition(" ")
        if where.startswith("triage/"):
            origin = sets[where.removeprefix("triage/")][row["question"]]
            assert (origin["label"], origin["split"]) == (row["label"], split) and split != "heldout"
            assert (row.get("topic") == "self_harm") == (origin.get("category") == "self_harm" or (
                origin.get("presentation") == "suicidal" and origin["label"] != "none"))
