"""openqa scores predictions that already exist (CareLlama / LLaMA-Factory predict-then-score) and
reads flattened <user>/<bot> dialogues like training and inference do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev
from qihuang.cli import main
from qihuang.eval import metrics
from qihuang.eval.tasks.openqa import qa_record

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
PREDS = SEEDS / "carellama" / "generated_predictions.jsonl"


def _rows(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", ["generated_predictions.jsonl", "generated_predictions_old.jsonl"])
def test_llamafactory_predictions_are_scored_without_a_model(tmp_path, name):
    res = ev.run("openqa", SEEDS / "carellama" / name, out_dir=tmp_path / "run", progress=False)
    rows = _rows(PREDS)
    expected = metrics.sentence_scores(rows[0]["predict"], rows[0]["label"])
    assert res["scores"]["n"] == 3 and res["model"] == {}
    preds = _rows(tmp_path / "run" / "predictions.jsonl")
    assert preds[0]["rouge1"] == pytest.approx(expected["rouge1"]) and preds[2]["rouge2"] == 0.0
    assert res["scores"]["rouge1"] > 0


def test_cli_scores_existing_predictions_without_loading_a_model(tmp_path, capsys):
    # --model points nowhere: loading it would fail, so passing proves no model is loaded
    assert main(["eval", "--task", "openqa", "--data", str(PREDS), "--out", str(tmp_path / "r"),
                 "--model", str(tmp_path / "no-such-model"), "--no-progress"]) == 0
    assert "openqa: 3 examples" in capsys.readouterr().out


def test_regenerate_answers_again_and_infer_output_is_scored(tmp_path):
    src = tmp_path / "infer_out.jsonl"  # the shape `qihuang infer` writes: instruction, output, prediction
    src.write_text(json.dumps({"record": 1, "line": 1, "instruction": "胃痛能喝咖啡吗", "output": "胃痛时应少喝咖啡。",
                               "prediction": "胃痛时应少喝咖啡。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    res = ev.run("openqa", src, out_dir=tmp_path / "a", progress=False)
    assert res["scores"]["rouge1"] == pytest.approx(100.0)
    engine = ScriptedEngine(replies=lambda p: "不清楚。")
    res = ev.run("openqa", src, answerer=FakeAnswerer(engine), out_dir=tmp_path / "b", progress=False,
                 regenerate=True)
    assert res["scores"]["rouge1"] < 100.0


def test_flattened_dialogue_question_becomes_history():
    row = {"instruction": " <user>: 幽门螺杆菌阳性要治吗？ <bot>: 一般建议根除。 <user>: 要吃多久药？",
           "output": "多为十到十四天。", "input": ""}
    question, reference, history = qa_record(row)
    assert question == "要吃多久药？" and history == [["幽门螺杆菌阳性要治吗？", "一般建议根除。"]]
    assert reference == "多为十到十四天。"
