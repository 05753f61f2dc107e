"""MCQ task: the exam shapes, malformed rows, letter extraction, loglik and generate scoring, few-shot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev
from qihuang.errors import ConfigError
from qihuang.eval.metrics import extract_choice
from qihuang.eval.tasks.mcq import MCQTask, question_block
from qihuang.eval.tasks.mcq_formats import load_exam, parse_options_text

FIX = Path(__file__).parent / "fixtures" / "eval"


# ------------------------------------------------------------------ shapes


def test_cmexam_csv_options_text_multiline_rows_and_malformed_lines():
    data = load_exam(FIX / "cmexam.csv")
    assert [(ex.line, ex.fields["answer"]) for ex in data.examples] == [(2, "B"), (7, "A"), (12, "C"), (17, "AB")]
    first = data.examples[0]
    assert list(first.fields["options"]) == ["A", "B", "C", "D", "E"]
    assert first.fields["options"]["B"] == "36.0～37.0℃"
    assert first.fields["explanation"].startswith("腋温")
    reasons = {s.line: s.reason for s in data.skipped}
    assert set(reasons) == {22, 23}
    assert "Options" in reasons[22] and "answer" in reasons[23]


def test_cmexam_subject_from_a_named_column():
    data = load_exam(FIX / "cmexam.csv", subject_field="Clinical Department")
    assert [ex.subject for ex in data.examples] == ["内科", "内科", "急诊科", "内分泌科"]


def test_cmmlu_directory_takes_subjects_from_file_names():
    data = load_exam(FIX / "cmmlu")
    subjects = [ex.subject for ex in data.examples]
    assert subjects == ["clinical_knowledge"] * 3 + ["nutrition"] * 2
    assert data.examples[2].fields["options"]["C"] == "皮肤"
    assert [(Path(s.source).name, s.line) for s in data.skipped] == [("nutrition.csv", 4)]


def test_ceval_csv_lowercase_columns_and_val_suffix():
    data = load_exam(FIX / "basic_medicine_val.csv")
    assert {ex.subject for ex in data.examples} == {"basic_medicine"}
    assert [ex.fields["answer"] for ex in data.examples] == ["B", "A", "C"]
    assert [ex.id for ex in data.examples] == ["0", "1", "2"]


def test_medqa_mcmle_jsonl_uses_answer_idx():
    data = load_exam(FIX / "medqa_mcmle.jsonl")
    assert [ex.fields["answer"] for ex in data.examples] == ["A", "B"]
    assert len(data.examples[0].fields["options"]) == 5
    assert [(s.line, "answer" in s.reason) for s in data.skipped] == [(3, True)]


def test_generic_jsonl_list_dict_index_and_text_answers():
    data = load_exam(FIX / "generic_mcq.jsonl")
    assert [(ex.id, ex.fields["answer"], ex.subject) for ex in data.examples] == [
        ("g1", "A", "儿科"), ("g2", "B", "药理"), ("g3", "B", "内分泌")]
    assert [s.line for s in data.skipped] == [4, 5]
    assert "options" in data.skipped[0].reason and "JSON" in data.skipped[1].reason


def test_options_on_one_line_are_split():
    assert parse_options_text("A. 头痛 B. 发热 C、咳嗽") == {"A": "头痛", "B": "发热", "C": "咳嗽"}


# ------------------------------------------------------------------ letter extraction

OPTS = {"A": "头痛", "B": "发热", "C": "咳嗽", "D": "腹泻"}


@pytest.mark.parametrize("reply,expected", [
    ("答案是B", "B"), ("正确答案为：C。", "C"), ("故选D", "D"), ("本题答案应选 D 项", "D"),
    ("B选项正确，因为发热是……", "B"), ("根据题意，A项是正确的", "A"), ("B. 发热", "B"), ("（C）", "C"),
    ("Ｂ", "B"), ("这题选择【A】", "A"), ("答案：A、C", "AC"), ("我认为应该是发热", "B"),
    ("需要做DNA检查", None), ("答案不确定", None), ("", None),
])
def test_extract_choice(reply, expected):
    assert extract_choice(reply, OPTS) == expected


# ------------------------------------------------------------------ scoring against a scripted engine

def _write_exam(path: Path, items: list[tuple[str, str]]) -> Path:
    """Generic JSONL exam: (question, gold letter) with four options each."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, (q, gold) in enumerate(items):
            row = {"id": f"q{i}", "question": q, "options": ["甲", "乙", "丙", "丁"], "answer": gold,
                   "subject": "内科" if i < 3 else "外科"}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


ITEMS = [("第一题", "A"), ("第二题", "B"), ("第三题", "C"), ("第四题", "D"), ("第五题", "A")]
# the scripted model's picks: right on 第一题, 第二题, 第四题; wrong on the others
PICKS = {"第一题": "A", "第二题": "B", "第三题": "D", "第四题": "D", "第五题": "C"}


def _expected(items, picks, subject_of=lambda i: "内科" if i < 3 else "外科"):
    right = [picks[q] == g for q, g in items]
    per = {}
    for i, ok in enumerate(right):
        per.setdefault(subject_of(i), []).append(ok)
    return 100 * sum(right) / len(right), {s: round(100 * sum(v) / len(v), 2) for s, v in per.items()}


def test_loglik_accuracy_matches_the_script(tmp_path):
    data = _write_exam(tmp_path / "exam.jsonl", ITEMS)
    engine = ScriptedEngine(choices=lambda ctx: next(v for k, v in PICKS.items() if k in ctx))
    res = ev.run("mcq", data, engine=engine, out_dir=tmp_path / "run", batch_size=2, progress=False)
    overall, per_subject = _expected(ITEMS, PICKS)
    assert overall == 60.0  # the script is right on exactly 3 of 5
    assert res["scores"]["accuracy"] == overall
    assert {s: v["accuracy"] for s, v in res["details"]["by_subject"].items()} == per_subject
    # one loglikelihood call per batch, one request per option
    assert [len(c) for c in engine.loglik_calls] == [8, 8, 4]
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["pred"] for r in rows] == [PICKS[q] for q, _ in ITEMS]
    assert all(set(r["loglik"]) == {"A", "B", "C", "D"} for r in rows)


def test_loglik_context_uses_the_engine_template_or_plain_text(tmp_path):
    data = _write_exam(tmp_path / "exam.jsonl", ITEMS[:1])
    engine = ScriptedEngine(choices={"第一题": "A"})
    ev.run("mcq", data, engine=engine, out_dir=tmp_path / "a", progress=False)
    ctx, cont = engine.loglik_calls[0][0]
    assert ctx.startswith("user: ") and ctx.endswith("assistant:") and "A. 甲" in ctx and cont == "A"
    ev.run("mcq", data, engine=engine, out_dir=tmp_path / "b", progress=False, prompt_format="plain")
    ctx, _ = engine.loglik_calls[-1][0]
    assert "user:" not in ctx and ctx.endswith("答案：")


def test_generate_method_goes_through_the_answerer(tmp_path):
    data = _write_exam(tmp_path / "exam.jsonl", ITEMS)
    replies = {"第一题": "答案是A", "第二题": "正确答案为（B）", "第三题": "我不知道",
               "第四题": "故选D。", "第五题": "B选项正确"}
    engine = ScriptedEngine(replies=replies)
    answerer = FakeAnswerer(engine)
    res = ev.run("mcq", data, answerer=answerer, out_dir=tmp_path / "run", method="generate", grounded=False,
                 progress=False)
    right = sum(extract_choice(replies[q], dict(zip("ABCD", ["甲", "乙", "丙", "丁"], strict=True))) == g
                for q, g in ITEMS)
    assert res["scores"]["accuracy"] == 100 * right / len(ITEMS) == 60.0
    assert res["scores"]["unparsed_rate"] == 20.0 and res["scores"]["n_unparsed"] == 1
    assert all(b["grounded"] is False for b in answerer.batches)
    assert not engine.loglik_calls


def test_multi_answer_items_are_skipped_in_loglik_and_scored_in_generate(tmp_path):
    res = ev.run("mcq", FIX / "cmexam.csv", engine=ScriptedEngine(choices=lambda c: "A"),
                 out_dir=tmp_path / "ll", progress=False)
    assert res["data"]["n_evaluated"] == 3
    assert any(s["line"] == 17 and "several" in s["reason"] for s in res["skipped"])
    engine = ScriptedEngine(replies={"糖尿病": "答案：A、B", "腋下": "B", "缺铁": "A", "心肺复苏": "C"})
    res = ev.run("mcq", FIX / "cmexam.csv", answerer=FakeAnswerer(engine), out_dir=tmp_path / "gen",
                 method="generate", progress=False)
    assert res["data"]["n_evaluated"] == 4 and res["scores"]["accuracy"] == 100.0


def test_fewshot_from_the_same_file_excludes_the_item(tmp_path):
    data = _write_exam(tmp_path / "exam.jsonl", ITEMS)
    engine = ScriptedEngine(choices=lambda ctx: "A")
    ev.run("mcq", data, engine=engine, out_dir=tmp_path / "run", shots=2, progress=False)
    # one call for the batch of 5; the first option's request of each item carries its context
    contexts = [r[0] for r in engine.loglik_calls[0][::4]]
    assert len(contexts) == 5
    for (q, _), ctx in zip(ITEMS, contexts, strict=True):
        assert ctx.count(q) == 1  # the item itself is not among its shots
        assert ctx.count("答案：") == 3  # two shots and the question
    # same subject first: 第三题 (内科) gets 第一题 and 第二题 as shots
    assert "第一题" in contexts[2] and "第二题" in contexts[2]


def test_fewshot_from_a_dev_file(tmp_path):
    data = _write_exam(tmp_path / "exam.jsonl", ITEMS[:2])
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "答案是B"))
    ev.run("mcq", data, answerer=answerer, out_dir=tmp_path / "run", method="generate", shots=1,
           fewshot_data=str(FIX / "cmmlu"), progress=False)
    hist = answerer.batches[0]["histories"]
    assert len(hist) == 2 and all(len(h) == 1 for h in hist)
    shot_q, shot_a = hist[0][0]
    assert "正常成人安静时的心率" in shot_q and shot_a == "B"


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="method"):
        MCQTask(method="vote")
    with pytest.raises(ConfigError, match="shots"):
        MCQTask(shots=-1)
    with pytest.raises(ConfigError, match="no option"):
        MCQTask(temperature=0.5)


def test_question_block_shows_all_options():
    ex = load_exam(FIX / "generic_mcq.jsonl").examples[1]
    block = question_block(ex)
    assert "阿司匹林" in block and "B. 解热镇痛抗炎药" in block and block.endswith("答案：")
