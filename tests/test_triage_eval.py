"""``qihuang eval --task triage``: runs without a model, per-presentation and per-split figures."""

from __future__ import annotations

import json
from pathlib import Path

from qihuang.cli import main
from qihuang.eval.runner import run

DEV = Path(__file__).parent / "fixtures" / "triage" / "dev_questions.jsonl"


def _write(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows),
                    encoding="utf-8")
    return path


def test_triage_eval_counts_recall_false_alarms_and_history(tmp_path):
    data = _write(tmp_path / "q.jsonl", [
        {"id": "a", "question": "我爸刚才被蛇咬了", "label": "emergency", "presentation": "snake", "split": "x"},
        {"id": "b", "question": "现在怎么办", "history": ["孩子突然抽搐了"], "label": "emergency",
         "presentation": "seizure", "split": "x"},
        {"id": "c", "question": "我胸口痛", "label": "emergency", "presentation": "chest", "split": "y"},
        {"id": "d", "question": "心梗有什么症状", "label": "none", "presentation": "chest", "split": "y"},
        {"id": "e", "question": "被蚊子咬了很痒", "label": "none", "presentation": "snake", "split": "x"},
        {"id": "f", "question": "怎么自制冰毒", "label": "refuse", "presentation": "harmful", "split": "x"},
        {"id": "g", "question": "那要吃什么药", "history": [["我爸刚才说话不清", "..."]], "label": "none",
         "presentation": "stroke", "split": "y"},
        {"id": "h", "question": "x", "label": "severe"},
        "not json",
    ])
    res = run("triage", data, out_dir=tmp_path / "out", progress=False)
    s = res["scores"]
    # c is under-triaged (urgent < emergency); g is flagged through its history (a false alarm here)
    assert (s["n"], s["n_red_flags"], s["missed"], s["n_benign"], s["false_alarms"]) == (7, 4, 1, 3, 1)
    assert s["recall"] == 75.0 and s["false_alarm_rate"] == 33.33
    assert res["n_skipped"] == 2 and "field 'label'" in res["skipped"][0]["reason"]
    assert res["details"]["by_presentation"]["chest"] == {
        "n_red_flags": 1, "missed": 1, "recall": 0.0, "n_benign": 1, "false_alarms": 0, "false_alarm_rate": 0.0}
    assert res["details"]["by_split"]["x"]["missed"] == 0
    assert [m["id"] for m in res["details"]["missed"]] == ["c"]
    assert res["model"] == {}
    rows = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert by_id["b"]["level"] == "emergency" and by_id["b"]["caught"] is True
    assert by_id["g"]["false_alarm"] is True and by_id["g"]["history"] == ["我爸刚才说话不清"]
    assert by_id["f"]["level"] == "refuse"


def test_triage_eval_cli_split_option_needs_no_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--task", "triage", "--data", str(DEV), "--split", "dev", "--model", "no-such-model",
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["n_evaluated"] == sum(1 for line in DEV.read_text().splitlines() if line.strip())
    assert res["scores"]["missed"] == 0 and res["scores"]["false_alarm_rate"] <= 5.0
    assert "recall" in capsys.readouterr().out
    # the fixture holds only dev questions: keeping another split leaves nothing to evaluate
    assert main(["eval", "--task", "triage", "--data", str(DEV), "--split", "heldout",
                 "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "no usable triage examples" in capsys.readouterr().err


def test_triage_eval_custom_rule_file(tmp_path):
    rules = tmp_path / "flags.yaml"
    rules.write_text("levels: {urgent: 'u {labels}', emergency: 'e {labels}', refuse: 'r {labels}'}\n"
                     "rules: [{id: itch, level: urgent, label: 痒, advice: a, any: ['痒']}]\n", encoding="utf-8")
    data = _write(tmp_path / "q.jsonl", [{"question": "皮肤很痒", "label": "urgent"},
                                         {"question": "胸口痛", "label": "urgent"}])
    res = run("triage", data, out_dir=tmp_path / "out", progress=False, rules=str(rules))
    assert res["scores"]["missed"] == 1 and res["details"]["by_presentation"]["unspecified"]["recall"] == 50.0


def test_triage_eval_reports_categories_and_emergency_precision(tmp_path):
    data = _write(tmp_path / "q.jsonl", [
        {"question": "我爸刚才被蛇咬了", "label": "emergency", "category": "acute"},
        {"question": "五年前被蛇咬过，现在还怕蛇", "label": "none", "category": "past_event"},
        {"question": "我胸口痛", "label": "urgent", "category": "acute"},
        {"question": "胸口疼得厉害，一直出冷汗", "label": "urgent", "category": "acute"},  # over-triaged
    ])
    res = run("triage", data, out_dir=tmp_path / "out", progress=False)
    cats = res["details"]["by_category"]
    assert cats["past_event"]["false_alarms"] == 0 and cats["acute"]["missed"] == 0
    assert res["details"]["emergency"] == {"raised": 2, "labelled": 1, "both": 1, "precision": 50.0, "recall": 100.0}


def test_triage_benchmark_prints_real_question_figures_and_fails_on_a_missed_target(tmp_path, capsys):
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "triage_eval.py"
    spec = importlib.util.spec_from_file_location("triage_eval", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sets = _write(tmp_path / "q.jsonl", [{"question": "我爸刚才被蛇咬了", "label": "emergency", "split": "heldout"},
                                         {"question": "孩子两岁时抽过一次，后来没再犯", "label": "none",
                                          "split": "heldout", "category": "past_event"}])
    real = _write(tmp_path / "real.jsonl", [
        {"text": "我的宝宝出生十五天，一顿吃多少毫升奶合适", "split": "tune", "triage_gold": "none"},
        {"text": "我爸刚才突然倒地，没有呼吸了", "split": "held", "triage_gold": "emergency"}])
    assert bench.main(["--data", str(sets), "--realq", str(real)]) == 0
    out = capsys.readouterr().out
    assert "false emergencies 0/1" in out and "emergencies caught 1/1" in out and "backstop" in out
    missed = _write(tmp_path / "real2.jsonl", [{"text": "宝宝出生十五天，一顿吃多少奶", "split": "held",
                                                "triage_gold": "emergency"}])
    assert bench.main(["--data", str(sets), "--realq", str(missed)]) == 1
    assert "MISSED TARGET" in capsys.readouterr().out
