"""openqa task and the text metrics: BLEU-4 (sacrebleu) and ROUGE (rouge-chinese) on jieba tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev
from qihuang.eval import metrics
from qihuang.eval.tasks.openqa import qa_record

FIX = Path(__file__).parent / "fixtures" / "eval"
REFS = {"感冒了应该注意什么": "感冒时要多休息、多喝水，注意保暖，症状加重应及时就医。",
        "高血压患者饮食上要注意什么": "高血压患者应低盐饮食，控制体重，戒烟限酒。",
        "平时要监测什么": "需要定期监测血糖和糖化血红蛋白。"}


def test_record_shapes():
    rows = [json.loads(x) for x in (FIX / "openqa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert qa_record(rows[0])[:2] == ("感冒了应该注意什么？", REFS["感冒了应该注意什么"])
    assert qa_record(rows[1])[1] == REFS["高血压患者饮食上要注意什么"]
    question, reference, history = qa_record(rows[2])  # ShareGPT: last user turn, earlier turns as history
    assert question == "平时要监测什么？" and reference == REFS["平时要监测什么"]
    assert history == [["糖尿病能治愈吗？", "糖尿病目前难以根治，但可以通过药物和生活方式控制血糖。"]]


def test_identical_answers_score_100_and_unrelated_score_low():
    ref = REFS["感冒了应该注意什么"]
    same = metrics.sentence_scores(ref, ref)
    assert same == {"bleu4": pytest.approx(100.0), "rouge1": pytest.approx(100.0), "rouge2": pytest.approx(100.0),
                    "rougeL": pytest.approx(100.0)}
    other = metrics.sentence_scores("今天天气晴朗。", ref)
    assert other["rouge2"] == 0.0 and other["bleu4"] < 10
    assert metrics.sentence_scores("", ref)["rouge1"] == 0.0


def test_metrics_agree_with_the_libraries_called_directly():
    from rouge_chinese import Rouge
    from sacrebleu.metrics import BLEU

    pred, ref = "感冒要多休息，多喝水。", REFS["感冒了应该注意什么"]
    hyp_t, ref_t = " ".join(metrics.segment(pred)), " ".join(metrics.segment(ref))
    direct = Rouge().get_scores(hyp_t, ref_t)[0]
    got = metrics.sentence_scores(pred, ref)
    assert got["rougeL"] == pytest.approx(100 * direct["rouge-l"]["f"], abs=1e-3)
    assert got["bleu4"] == pytest.approx(BLEU(tokenize="none", effective_order=True)
                                         .sentence_score(hyp_t, [ref_t]).score, abs=1e-3)
    zh = metrics.corpus_bleu([pred], [ref], tokenize="zh")
    assert zh == pytest.approx(BLEU(tokenize="zh").corpus_score([pred], [[ref]]).score, abs=1e-3)


def test_openqa_run(tmp_path):
    answers = {"感冒了应该注意什么": REFS["感冒了应该注意什么"], "高血压患者饮食上要注意什么": "少吃盐。",
               "平时要监测什么": "监测血糖。"}
    answerer = FakeAnswerer(ScriptedEngine(replies=answers))
    res = ev.run("openqa", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False)
    s = res["scores"]
    assert s["n"] == 3 and res["n_skipped"] == 1 and res["skipped"][0]["line"] == 4
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["rougeL"] == pytest.approx(100.0)
    assert s["rougeL"] == pytest.approx(sum(r["rougeL"] for r in rows) / 3, abs=1e-3)
    assert s["bleu4"] == pytest.approx(metrics.corpus_bleu([r["prediction"] for r in rows],
                                                           [r["reference"] for r in rows]), abs=1e-3)
    lengths = [len(r["prediction"]) for r in rows]
    assert s["prediction_len_mean"] == pytest.approx(sum(lengths) / 3, abs=0.01)
    assert s["prediction_len_max"] == max(lengths)
    assert s["length_ratio"] == pytest.approx(s["prediction_len_mean"] / s["reference_len_mean"], abs=1e-3)
    # the ShareGPT record was asked with its earlier turns as history
    assert answerer.batches[0]["histories"][2] == [["糖尿病能治愈吗？",
                                                     "糖尿病目前难以根治，但可以通过药物和生活方式控制血糖。"]]


def test_openqa_zh_tokenizer_option(tmp_path):
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "多休息，多喝水。"))
    res = ev.run("openqa", FIX / "openqa.jsonl", answerer=answerer, out_dir=tmp_path / "run", progress=False,
                 bleu_tokenize="zh", limit=1)
    assert res["config"]["task_options"] == {"bleu_tokenize": "zh", "regenerate": False}
    assert res["scores"]["bleu4"] == pytest.approx(metrics.corpus_bleu(["多休息，多喝水。"],
                                                                       [REFS["感冒了应该注意什么"]], "zh"), abs=1e-3)
