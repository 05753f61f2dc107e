"""Evaluation through the real Engine and Answerer: a tiny random model (CLI, grounded vs not,
MCQ log-likelihood) and, marked ``integration``, the default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kb_fixture import make_tiny_kb

import qihuang.eval as ev
from qihuang.cli import main

FIX = Path(__file__).parent / "fixtures" / "eval"


def _kbqa_cli(model: str, kb_path: Path, out: Path, grounded: bool) -> dict:
    rc = main(["eval", "--task", "kbqa", "--data", str(FIX / "kbqa_test.jsonl"), "--model", model,
               "--kb", str(kb_path), "--grounded" if grounded else "--no-grounded", "--max-new-tokens", "12",
               "--batch-size", "4", "--out", str(out), "--no-progress", "--engine", "hf"])
    assert rc == 0
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_cli_kbqa_grounded_vs_plain_with_a_tiny_model(tiny_llama, tmp_path, capsys):
    kb_path = tmp_path / "kb.sqlite"
    make_tiny_kb(kb_path).close()
    grounded = _kbqa_cli(str(tiny_llama), kb_path, tmp_path / "grounded", True)
    plain = _kbqa_cli(str(tiny_llama), kb_path, tmp_path / "plain", False)
    assert grounded["scores"]["n"] == plain["scores"]["n"] == 5
    assert grounded["scores"]["grounded_rate"] > 0 and plain["scores"]["grounded_rate"] == 0
    assert grounded["config"]["grounded"] is True and plain["config"]["grounded"] is False
    assert grounded["model"]["model"] == str(tiny_llama) and grounded["kb"]["path"] == str(kb_path)
    rows = [json.loads(x) for x in (tmp_path / "grounded" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["n_citations"] > 0 for r in rows if r["grounded"])
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "plain"), str(tmp_path / "grounded"),
                 "--out", str(tmp_path / "compare.png")]) == 0
    table = capsys.readouterr().out
    assert "fact_recall" in table and "hallucination_rate" in table
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_mcq_loglik_uses_the_engine_scores(tiny_llama, tmp_path):
    from qihuang.engines.load import load_engine

    engine = load_engine(str(tiny_llama))
    res = ev.run("mcq", FIX / "basic_medicine_val.csv", engine=engine, out_dir=tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    task = ev.make_task("mcq")
    data = task.load(FIX / "basic_medicine_val.csv")
    for ex, row in zip(data.examples, rows, strict=True):
        direct = engine.loglikelihood([(task.context(ex, engine), k) for k in ex.fields["options"]])
        assert [row["loglik"][k] for k in ex.fields["options"]] == pytest.approx(direct, abs=1e-3)
        assert row["pred"] == max(row["loglik"], key=row["loglik"].get)
    assert res["scores"]["accuracy"] == pytest.approx(100 * sum(r["correct"] for r in rows) / len(rows), abs=0.01)


@pytest.mark.integration
def test_kbqa_default_model_grounded_and_plain_compare(default_model, tmp_path):
    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    kb = make_tiny_kb(tmp_path / "kb.sqlite")
    engine = load_engine(default_model)
    answerer = Answerer(engine, kb, params=GenerationParams(max_new_tokens=24))
    runs = []
    for grounded in (False, True):
        out = tmp_path / ("grounded" if grounded else "plain")
        res = ev.run("kbqa", FIX / "kbqa_test.jsonl", answerer=answerer, kb=kb, grounded=grounded, out_dir=out,
                     limit=3, progress=False)
        assert res["scores"]["n"] == 3 and res["scores"]["fact_recall"] is not None
        runs.append(out)
    table = ev.compare(runs, out_png=tmp_path / "compare.png")
    assert table.runs == ["plain", "grounded"]
    assert (tmp_path / "compare.png").stat().st_size > 1000
