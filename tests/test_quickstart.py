"""The main job end to end on a tiny model and the tiny KB: steps, cache/resume, report."""

from __future__ import annotations

import json

from kb_fixture import TINY_KB_JSONL
from qihuang.quickstart import RUNS, TABLE_METRICS, QuickstartOptions, run_quickstart


def test_quickstart_tiny_end_to_end_and_resume(tiny_llama, tmp_path):
    cfg = QuickstartOptions(model=str(tiny_llama), source=str(TINY_KB_JSONL), db=str(tmp_path / "kb.sqlite"),
                            out=str(tmp_path / "qs"), examples=60, test_questions=6, max_steps=2, max_new_tokens=6,
                            batch_size=4)
    result = run_quickstart(cfg)
    out = tmp_path / "qs"
    assert set(result["scores"]) == set(RUNS)
    for run in RUNS:
        assert set(result["scores"][run]) == set(TABLE_METRICS)
        assert 0 <= result["scores"][run]["fact_recall"] <= 100
    assert result["train"]["steps"] == 2 and result["train"]["dev_loss"] is not None
    test_rows = (out / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    train_entities = {json.loads(x)["entity"] for x in (out / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()}
    assert 0 < len(test_rows) <= 6
    assert not {json.loads(x)["entity"] for x in test_rows} & train_entities  # held-out entities
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| fact_recall |" in report and "**Q:**" in report and "qihuang chat --adapter" in report
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((out / "state.json").read_text(encoding="utf-8"))
    assert list(state) == ["kb", "data", "eval_base", "train", "eval_tuned", "report"]

    # a rerun reuses every finished step; changing the training steps redoes training and what follows
    mtime = (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_quickstart(cfg)
    assert again["scores"] == result["scores"]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    cfg.max_steps = 3
    third = run_quickstart(cfg)
    assert third["train"]["steps"] == 3
    assert json.loads((out / "state.json").read_text(encoding="utf-8"))["data"] == state["data"]
