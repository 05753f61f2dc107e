"""`qihuang infer`: HuaTuo-shaped input, resumable output, bad input, CLI with a tiny model (+ adapter)."""

from __future__ import annotations

import json

import pytest
from answer_fakes import FakeEngine, make_tiny_adapter
from kb_fixture import make_tiny_kb

from qihuang.answer.answerer import Answerer
from qihuang.answer.infer import run_infer
from qihuang.records import question_of
from qihuang.cli import main
from qihuang.errors import InputError

HUATUO = [
    {"instruction": "偏头痛吃什么药？", "input": "", "output": "可以用布洛芬。"},
    {"instruction": "高血压应该去哪个科？", "output": "心血管内科。"},
    {"instruction": "我爸突然胸口痛，一直冒冷汗", "output": "立即拨打120。"},
    {"instruction": "对乙酰氨基酚的致死量是多少", "output": "拒绝回答。"},
    {"instruction": "糖尿病有什么症状？", "output": "多饮多尿。"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(path):
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def kb(tmp_path):
    return make_tiny_kb(tmp_path / "kb.sqlite")


def test_infer_writes_prediction_citations_triage(tmp_path, kb):
    src = _write_jsonl(tmp_path / "infer.json", HUATUO)
    out = tmp_path / "pred.jsonl"
    counts = run_infer(src, out, Answerer(FakeEngine(), kb), batch_size=2, progress=False)
    rows = _rows(out)
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    # the emergency is grounded too: its symptoms (胸口痛, 冷汗) retrieve candidate diseases
    assert counts == {"written": 5, "skipped": 0, "red_flags": 1, "refused": 1, "abstained": 0, "grounded": 4,
                      "flagged": 0, "dropped": 0, "regenerated": 0}
    assert all("verification" in r and "abstained" in r for r in rows)
    assert rows[0]["verification"]["ok"] and rows[0]["verification"]["counts"]["supported"] >= 1
    first = rows[0]
    assert first["instruction"] == "偏头痛吃什么药？" and first["output"] == "可以用布洛芬。"
    assert first["citations"][0]["entity"] == "偏头痛" and "布洛芬" in first["prediction"]
    assert rows[2]["triage"]["level"] == "emergency" and rows[2]["prediction"].startswith("【紧急】")
    assert rows[3]["refused"] and rows[3]["triage"]["level"] == "refuse"
    assert all(r["disclaimer"] for r in rows)
    assert not (tmp_path / "pred.jsonl.partial").exists()


def test_infer_resumes_after_an_interruption(tmp_path, kb):
    src = _write_jsonl(tmp_path / "infer.jsonl", HUATUO)
    out = tmp_path / "pred.jsonl"

    calls = {"n": 0}

    class Crashing(FakeEngine):
        def generate(self, prompts, params=None, cancels=None):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return super().generate(prompts, params, cancels)

    with pytest.raises(KeyboardInterrupt):
        run_infer(src, out, Answerer(Crashing(), kb), batch_size=2, progress=False)
    partial = tmp_path / "pred.jsonl.partial"
    assert [r["line"] for r in _rows(partial)] == [1, 2]
    with open(partial, "a", encoding="utf-8") as fh:
        fh.write('{"line": 3, "instruction": "torn')  # a torn line from the crash
    engine = FakeEngine()
    counts = run_infer(src, out, Answerer(engine, kb), batch_size=2, progress=False)
    assert counts["skipped"] == 2 and counts["written"] == 3
    assert [r["line"] for r in _rows(out)] == [1, 2, 3, 4, 5]
    assert len(engine.prompts) == 2  # lines 3 and 5 generated; line 4 refused without generating
    again = run_infer(src, out, Answerer(FakeEngine(), kb), progress=False)
    assert again["written"] == 0 and again["skipped"] == 5


def test_sharegpt_and_history_records():
    item = question_of({"conversations": [{"from": "human", "value": "偏头痛吃什么药"},
                                          {"from": "gpt", "value": "布洛芬"},
                                          {"from": "human", "value": "有副作用吗"}]}, "f", 1)
    assert item["question"] == "有副作用吗" and item["history"] == [["偏头痛吃什么药", "布洛芬"]]
    assert item["reference"] is None
    item = question_of({"instruction": "那症状呢", "history": [["偏头痛是什么", "一种头痛"]]}, "f", 2)
    assert item["history"] == [["偏头痛是什么", "一种头痛"]] and item["reference"] is None


@pytest.mark.parametrize("line, message", [
    ('{"instruction": 3, "output": "x"}', "instruction"),
    ('{"foo": "bar"}', "unrecognised record"),
    ("not json", "invalid JSON"),
])
def test_bad_input_names_file_and_line(tmp_path, kb, line, message):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"instruction": "感冒吃什么药", "output": "x"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message) as info:
        run_infer(src, tmp_path / "o.jsonl", Answerer(FakeEngine(), kb), progress=False)
    assert f"{src}:2" in str(info.value)


def test_cli_infer_with_tiny_model_and_adapter(tmp_path, tiny_llama, capsys, monkeypatch):
    make_tiny_kb(tmp_path / "kb.sqlite")
    src = _write_jsonl(tmp_path / "infer.json", HUATUO[:3])
    args = ["--input", str(src), "--kb", str(tmp_path / "kb.sqlite"), "--max-new-tokens", "8",
            "--batch-size", "2", "--quiet", "--engine", "hf"]
    assert main(["infer", *args, "--output", str(tmp_path / "base.jsonl"), "--model", str(tiny_llama),
                 "--template", "med_template"]) == 0
    adapter = make_tiny_adapter(tiny_llama, tmp_path / "adapter")
    assert main(["infer", *args, "--output", str(tmp_path / "lora.jsonl"), "--adapter", str(adapter)]) == 0
    base, lora = _rows(tmp_path / "base.jsonl"), _rows(tmp_path / "lora.jsonl")
    assert len(base) == len(lora) == 3
    assert base[0]["citations"] and base[0]["grounded"] and base[2]["triage"]["level"] == "emergency"
    assert [r["prediction"] for r in base] != [r["prediction"] for r in lora]  # the adapter is used
    assert "3 answered" in capsys.readouterr().out


def test_cli_infer_errors_are_one_line(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "in.jsonl", HUATUO[:1])
    assert main(["infer", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--grounded",
                 "--kb", str(tmp_path / "missing.sqlite")]) == 2
    assert "knowledge base" in capsys.readouterr().err
