"""`qihuang data validate`: dataset_info.json applied, inference-only mode, .txt hint, warning count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qihuang.cli import main
from qihuang.datagen.validate import validate_file, validate_path

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
CARE = SEEDS / "carellama" / "data"


def test_dataset_info_columns_tags_and_ranking_are_applied(capsys):
    reports = {Path(r.path).name: r for r in validate_path(CARE)}
    assert all(r.ok for r in reports.values()), [r.errors for r in reports.values()]
    assert reports["med_qa.json"].records == 2
    assert reports["med_chat.json"].shapes["sharegpt"] == 1 and reports["med_chat.json"].shapes["multi_turn"] == 1
    assert reports["med_pref.json"].shapes["ranking"] == 1
    assert main(["data", "validate", str(CARE)]) == 0


def test_dataset_info_bad_mapped_record_is_reported(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(CARE, data)
    rows = json.loads((data / "med_qa.json").read_text(encoding="utf-8"))
    rows[1]["answer"] = ""
    (data / "med_qa.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    pref = data / "med_pref.json"
    pref.write_text(pref.read_text(encoding="utf-8").replace('"rejected": "马上热敷并用力按摩。"', '"rejected": ""'),
                    encoding="utf-8")
    assert main(["data", "validate", str(data)]) == 1
    out = capsys.readouterr().out
    assert "med_qa.json:7 (record 2): field 'output'" in out
    assert "med_pref.json:1: field 'rejected'" in out


def test_inference_only_mode_accepts_question_lists(capsys):
    questions = SEEDS / "huatuo" / "data" / "questions_only.json"
    assert not validate_file(questions).ok  # training needs reference answers
    assert validate_file(questions, mode="infer").ok
    assert main(["data", "validate", str(questions), "--mode", "infer"]) == 0
    assert validate_file(SEEDS / "huatuo" / "data" / "infer.json", mode="infer").ok


def test_txt_gets_a_format_hint(tmp_path, capsys):
    txt = tmp_path / "corpus.txt"
    txt.write_text("第一篇文献。\n第二篇文献。\n", encoding="utf-8")
    assert main(["data", "validate", str(txt)]) == 1
    assert "one document per line" in capsys.readouterr().out


def test_warnings_left_out_are_counted(tmp_path, capsys):
    src = tmp_path / "many.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"问题{i}", "output": "答", "kind": "odd"}, ensure_ascii=False)
                           + "\n" for i in range(7)), encoding="utf-8")
    assert main(["data", "validate", str(src), "--max-errors", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: ") == 5 and "… and 2 more warnings" in out
