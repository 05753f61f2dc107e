"""``benchqa``: CMB-Clin cases asked question by question with the case as context, PromptCBLUE generation
records, scored by ROUGE/BLEU as ``openqa`` scores."""

from __future__ import annotations

import json
from pathlib import Path

from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev

BENCH = Path(__file__).parent / "fixtures" / "eval" / "bench"
CLIN = BENCH / "CMB" / "data" / "CMB-Clin" / "CMB-Clin-qa.json"


def test_cmb_clin_questions_go_through_the_answerer_with_the_case_and_earlier_turns(tmp_path):
    replies = {"诊断及诊断依据": "诊断：社区获得性肺炎。\n依据：受凉后发热、咳嗽，右下肺湿啰音，胸片右下肺片状阴影。",
               "治疗原则": "多休息。", "最可能的诊断": "2型糖尿病。"}
    answerer = FakeAnswerer(ScriptedEngine(replies=replies))
    res = ev.run("benchqa", CLIN, answerer=answerer, out_dir=tmp_path / "run", grounded=False, progress=False)
    batch = answerer.batches[0]
    assert batch["questions"][0].startswith("以下是一位病人的病例：") and batch["questions"][1] == "简述该病人的治疗原则。"
    assert batch["histories"][0] is None and batch["histories"][2] is None
    assert batch["histories"][1] == [[batch["questions"][0], replies["诊断及诊断依据"]]]  # reference = this reply
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0-1", "0-2", "1-1"]
    assert rows[0]["rougeL"] == 100.0 and rows[2]["rougeL"] == 100.0 and rows[1]["rougeL"] < 50
    assert res["scores"]["rougeL"] == round(sum(r["rougeL"] for r in rows) / 3, 4)
    assert res["headline"] == ["rougeL", "bleu4"] and res["n_skipped"] == 1
    assert res["details"]["method"] == "generate"


def test_promptcblue_generation_records_per_dataset(tmp_path):
    answerer = FakeAnswerer(ScriptedEngine(replies={"海鲜": "可能是海鲜过敏，先停止食用，可以口服氯雷他定，症状加重请及时就医。"},
                                           default="不清楚"))
    res = ev.run("benchqa", BENCH / "PromptCBLUE" / "dev.json", answerer=answerer, out_dir=tmp_path / "r",
                 progress=False)
    by = res["details"]["by_subject"]
    assert by["MedDG"] == {"n": 1, "rougeL": 100.0} and by["CMeEE-V2"]["rougeL"] < 100
    assert any("task_type 'cls'" in n for n in res["notes"])
