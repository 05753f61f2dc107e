"""``classify``: label log-likelihood and generation scoring, accuracy and macro-F1, unparsed replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev
from qihuang.eval.tasks.classify import f1_scores, match_label

BENCH = Path(__file__).parent / "fixtures" / "eval" / "bench"
KUAKE = BENCH / "CBLUE" / "KUAKE-QIC" / "KUAKE-QIC_dev.json"
# gold: s1 治疗方案, s2 病因分析, s3 医疗费用, s4 指标解读; the script's picks:
PICKS = {"孩子发烧": "治疗方案", "口干口苦": "治疗方案", "胃镜": "医疗费用", "尿酸": "病因分析"}


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_loglik_scores_every_label_and_picks_the_best_per_character(tmp_path):
    engine = ScriptedEngine(choices=lambda ctx: next(v for k, v in PICKS.items() if k in ctx))
    res = ev.run("classify", KUAKE, engine=engine, out_dir=tmp_path / "run", progress=False)
    assert res["scores"]["accuracy"] == 50.0
    # by hand: 治疗方案 P=1/2 R=1 F1=2/3; 病因分析 0; 医疗费用 1; 指标解读 0 -> macro (66.67 + 100) / 4
    assert res["scores"]["macro_f1"] == pytest.approx((200 / 3 + 100) / 4, abs=0.01)
    assert res["details"]["by_label"]["治疗方案"] == {"n": 1, "precision": 50.0, "recall": 100.0, "f1": 66.67}
    assert res["n_skipped"] == 1 and res["details"]["method"] == "loglik"
    requests = engine.loglik_calls[0]
    assert len(requests) == 4 * 11 and {c for _, c in requests[:11]} == set(_rows(tmp_path / "run")[0]["loglik_per_char"])
    assert requests[0][0].startswith("user: 判断下面这个医疗搜索的意图") and requests[0][0].endswith("assistant:")


def test_generate_reads_the_label_from_the_reply_and_counts_unreadable_ones(tmp_path):
    replies = {"孩子发烧": "建议的意图是：治疗方案。", "口干口苦": "病因分析", "胃镜": "我不确定",
               "尿酸": "可能是指标解读，也可能是病因分析"}
    answerer = FakeAnswerer(ScriptedEngine(replies=replies))
    res = ev.run("classify", KUAKE, answerer=answerer, out_dir=tmp_path / "run", method="generate", progress=False)
    rows = _rows(tmp_path / "run")
    assert [r["pred"] for r in rows] == ["治疗方案", "病因分析", None, None]
    assert res["scores"]["accuracy"] == 50.0
    assert res["scores"]["n_unparsed"] == 2 and res["scores"]["unparsed_rate"] == 50.0


@pytest.mark.parametrize("reply,expected", [
    ("药物", "药物"), ("  药物。", "药物"), ("这是一个关于药物禁忌的问题", "药物禁忌"), ("药物禁忌和用法", None),
    ("", None), ("不知道", None), ("答：临床意义/检查目的", "临床意义/检查目的"),
])
def test_match_label_prefers_the_outer_label_and_refuses_two(reply, expected):
    labels = ["药物", "药物禁忌", "用法", "临床意义/检查目的"]
    assert match_label(reply, labels) == expected


def test_macro_f1_counts_unparsed_as_missed():
    rows = [{"gold": "a", "pred": "a"}, {"gold": "a", "pred": None}, {"gold": "b", "pred": "b"}]
    macro, per = f1_scores(rows)
    assert per["a"] == {"n": 2, "precision": 100.0, "recall": 50.0, "f1": 66.67}
    assert macro == pytest.approx((66.67 + 100) / 2, abs=0.01)
    wrong = rows + [{"gold": "b", "pred": "c"}]  # a label only ever predicted scores 0 and counts in the mean
    macro, per = f1_scores(wrong)
    assert per["c"] == {"n": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0} and per["b"]["recall"] == 50.0
    assert macro == pytest.approx((66.67 + 66.67 + 0) / 3, abs=0.01)
    assert f1_scores([{"gold": "a", "pred": None}]) == (0.0, {"a": {"n": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}})


def test_promptcblue_per_dataset_scores_and_a_note_for_the_records_left_to_benchqa(tmp_path):
    engine = ScriptedEngine(choices=lambda ctx: "是的" if "相同" in ctx else "非上述类型")
    res = ev.run("classify", BENCH / "PromptCBLUE" / "dev.json", engine=engine, out_dir=tmp_path / "r",
                 progress=False)
    by = res["details"]["by_subject"]
    assert by["CHIP-STS"]["accuracy"] == 100.0 and by["CHIP-CTC"] == {"n": 2, "accuracy": 50.0, "macro_f1": 33.33}
    assert by["KUAKE-QIC"]["accuracy"] == 0.0
    assert any("task_type 'ner'" in n for n in res["notes"])


def test_subject_selection_and_seeded_sample(tmp_path):
    engine = ScriptedEngine(choices=lambda ctx: "年龄")
    path = BENCH / "PromptCBLUE" / "dev.json"
    one = ev.run("classify", path, engine=engine, out_dir=tmp_path / "a", subjects="CHIP-CTC", progress=False)
    assert one["scores"]["n"] == 2
    drop = ev.run("classify", path, engine=engine, out_dir=tmp_path / "b", exclude_subjects="CHIP-CTC,CHIP-STS",
                  progress=False)
    assert drop["scores"]["n"] == 1
    ids = [[r["id"] for r in _rows(tmp_path / d)] for d in ("c", "d")
           if ev.run("classify", path, engine=engine, out_dir=tmp_path / d, sample=2, seed=3, progress=False)]
    assert ids[0] == ids[1] and len(ids[0]) == 2
