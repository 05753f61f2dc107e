"""The eval runner (results.json, predictions.jsonl, limit, batching, resume), the task registry,
comparisons (table + PNG) and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine

import qihuang.eval as ev
from qihuang.cli import main
from qihuang.errors import ConfigError, InputError
from qihuang.eval.base import Dataset, Example, Task

FIX = Path(__file__).parent / "fixtures" / "eval"
OPENQA = FIX / "openqa.jsonl"


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_results_json_records_scores_config_model_data_and_timings(tmp_path):
    engine = ScriptedEngine(replies=lambda p: "多休息。", model_name="tiny-test")
    answerer = FakeAnswerer(engine)
    res = ev.run("openqa", OPENQA, answerer=answerer, out_dir=tmp_path / "run", limit=2, batch_size=1,
                 grounded=False, progress=False)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert on_disk == res
    assert res["task"] == "openqa" and res["label"] == "run"
    assert res["data"]["sha256"] == hashlib.sha256(OPENQA.read_bytes()).hexdigest()
    assert res["data"]["n_examples"] == 3 and res["data"]["n_evaluated"] == 2
    assert res["model"]["name"] == "tiny-test" and res["model"]["template"] == "fake"
    assert res["config"] == {"task_options": {"bleu_tokenize": "jieba", "regenerate": False}, "grounded": False, "limit": 2,
                             "batch_size": 1}
    assert set(res["timings"]) >= {"started_at", "finished_at", "seconds_total", "seconds_predict"}
    assert res["headline"] == ["bleu4", "rouge1", "rouge2", "rougeL"]
    assert [len(b["questions"]) for b in answerer.batches] == [1, 1]
    rows = _rows(tmp_path / "run")
    assert [r["id"] for r in rows] == ["o1", "o2"]
    assert all(r["prediction"] == "多休息。" and r["grounded"] is False for r in rows)
    assert not (tmp_path / "run" / ".partial").exists()


def test_batches_follow_batch_size(tmp_path):
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "好"))
    ev.run("mcq", FIX / "cmmlu", answerer=answerer, method="generate", out_dir=tmp_path / "r", batch_size=2,
           progress=False)
    assert [len(b["questions"]) for b in answerer.batches] == [2, 2, 1]


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    calls = []

    def flaky(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) == 3:
            raise _Interrupt
        return "回答：" + prompt[-6:]

    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        ev.run("mcq", FIX / "cmmlu", answerer=FakeAnswerer(ScriptedEngine(replies=flaky)), method="generate",
               out_dir=out, batch_size=2, progress=False)
    assert len((out / ".partial" / "predictions.jsonl").read_text().splitlines()) == 2
    assert not (out / "results.json").exists()
    second = FakeAnswerer(ScriptedEngine(replies=lambda p: "答案是B"))
    res = ev.run("mcq", FIX / "cmmlu", answerer=second, method="generate", out_dir=out, batch_size=2,
                 progress=False)
    assert sum(len(b["questions"]) for b in second.batches) == 3  # only the 3 not yet predicted
    assert res["timings"]["resumed_examples"] == 2
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["clinical_knowledge.csv:2", "clinical_knowledge.csv:3",
                                       "clinical_knowledge.csv:4", "nutrition.csv:2", "nutrition.csv:3"]
    assert rows[0]["prediction"].startswith("回答") and rows[2]["prediction"] == "答案是B"
    assert not (out / ".partial").exists()


def test_changed_options_do_not_reuse_partial_predictions(tmp_path):
    out = tmp_path / "run"
    (out / ".partial").mkdir(parents=True)
    (out / ".partial" / "state.json").write_text('{"fingerprint": "something-else"}')
    (out / ".partial" / "predictions.jsonl").write_text('{"id": "o1", "prediction": "stale"}\n')
    ev.run("openqa", OPENQA, answerer=FakeAnswerer(ScriptedEngine(replies=lambda p: "新")), out_dir=out,
           progress=False)
    assert all(r["prediction"] == "新" for r in _rows(out))


# ------------------------------------------------------------------ registry


class EchoLengthTask(Task):
    """A user task: the answer's length, to show that tasks plug in without touching qihuang."""

    name = "echo_len"
    headline = ("mean_len",)

    def load(self, path: Path) -> Dataset:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return Dataset([Example(id=str(i), question=q, line=i) for i, q in enumerate(lines, 1) if q])

    def score_example(self, example, prediction, ctx):
        return {"len": len(prediction)}

    def aggregate(self, rows):
        return {"scores": {"n": len(rows), "mean_len": sum(r["len"] for r in rows) / len(rows)}}


def test_user_tasks_register_and_run(tmp_path):
    data = tmp_path / "q.txt"
    data.write_text("一\n二\n", encoding="utf-8")
    ev.register_task(EchoLengthTask)
    assert "echo_len" in ev.task_names()
    answerer = FakeAnswerer(ScriptedEngine(replies={"一": "abc", "二": "abcde"}))
    res = ev.run("echo_len", data, answerer=answerer, out_dir=tmp_path / "a", progress=False)
    assert res["scores"]["mean_len"] == 4.0
    res = ev.run(f"{__name__}:EchoLengthTask", data, answerer=answerer, out_dir=tmp_path / "b", progress=False)
    assert res["task"] == "echo_len"


def test_builtin_registry_entries_all_load():
    for name in ("kbqa", "mcq", "openqa", "judge"):
        cls = ev.get_task(name)
        assert issubclass(cls, Task) and cls.name == name and cls.headline


@pytest.mark.parametrize("kwargs,error,match", [
    ({"task": "nope"}, ConfigError, "unknown eval task"),
    ({"task": "os:path"}, ConfigError, "not a qihuang.eval.Task"),
    ({"task": "openqa", "data": FIX / "missing.jsonl"}, InputError, "no such file"),
    ({"task": "openqa", "answerer": None}, ConfigError, "needs a model"),
    ({"task": "openqa", "limit": 0}, ConfigError, "limit"),
    ({"task": "openqa", "colour": "red"}, ConfigError, "no option"),
])
def test_errors(tmp_path, kwargs, error, match):
    kwargs = {"data": OPENQA, "answerer": FakeAnswerer(ScriptedEngine()), **kwargs}
    with pytest.raises(error, match=match):
        ev.run(out_dir=tmp_path / "r", progress=False, **kwargs)


def test_no_usable_rows_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "只有问题"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl.*no usable"):
        ev.run("mcq", bad, engine=ScriptedEngine(), out_dir=tmp_path / "r", progress=False)


# ------------------------------------------------------------------ compare and CLI


def _two_runs(tmp_path) -> list[Path]:
    runs = []
    for name, reply in (("plain", "多休息。"), ("grounded", "感冒时要多休息、多喝水，注意保暖。")):
        ev.run("openqa", OPENQA, answerer=FakeAnswerer(ScriptedEngine(replies=lambda p, r=reply: r)),
               out_dir=tmp_path / name, progress=False)
        runs.append(tmp_path / name)
    return runs


def test_compare_table_and_png(tmp_path):
    runs = _two_runs(tmp_path)
    table = ev.compare(runs, out_png=tmp_path / "cmp.png")
    assert table.runs == ["plain", "grounded"] and table.metrics == ["bleu4", "rouge1", "rouge2", "rougeL"]
    scores = [json.loads((r / "results.json").read_text())["scores"] for r in runs]
    assert table.values["rougeL"] == [s["rougeL"] for s in scores]
    text = table.format()
    assert "plain" in text.splitlines()[0] and "rougeL" in text
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert table.to_markdown().startswith("| metric | plain | grounded |")


def test_cli_compare(tmp_path, capsys):
    runs = _two_runs(tmp_path)
    png = tmp_path / "out" / "c.png"
    assert main(["eval", "compare", *map(str, runs), "--out", str(png), "--metrics", "bleu4,rougeL"]) == 0
    out = capsys.readouterr().out
    assert "bleu4" in out and "rougeL" in out and "rouge1" not in out
    assert png.stat().st_size > 1000
    assert main(["eval", "compare", str(tmp_path / "nothing")]) == 2


def test_cli_eval_mcq_loglik(tmp_path, monkeypatch, capsys):
    import qihuang.engines.load as engine_mod

    loaded = []

    def fake_load_engine(**kwargs):
        loaded.append(kwargs)
        return ScriptedEngine(choices=lambda ctx: "B")

    monkeypatch.setattr(engine_mod, "load_engine", fake_load_engine)
    out = tmp_path / "run"
    rc = main(["eval", "--task", "mcq", "--data", str(FIX / "cmmlu"), "--model", "tiny", "--out", str(out),
               "--limit", "4", "--shots", "1", "--no-progress"])
    assert rc == 0
    assert loaded == [{"model": "tiny", "adapter": None, "template": None, "backend": "auto", "dtype": "auto",
                       "batch_size": 8, "trust_remote_code": False}]
    res = json.loads((out / "results.json").read_text())
    gold = [r["gold"] for r in _rows(out)]
    assert res["scores"]["accuracy"] == 100 * gold.count("B") / 4
    assert res["config"]["task_options"]["shots"] == 1 and res["model"]["model"] == "tiny"
    assert "accuracy" in capsys.readouterr().out


def test_cli_errors(tmp_path):
    assert main(["eval", "--task", "mcq", "--data", str(FIX / "cmmlu")]) == 2  # --out missing
    assert main(["eval", "--task", "kbqa", "--data", str(FIX), "--out", str(tmp_path), "--shots", "2"]) == 2
    assert main(["eval", "--task", "mcq", "--data", str(FIX / "cmmlu"), "--out", str(tmp_path),
                 "-o", "novalue"]) == 2


def test_cli_lists_tasks(capsys):
    assert main(["eval", "tasks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("kbqa", "mcq", "openqa", "judge"))


def test_refusals_are_counted_and_scored_on_the_models_own_text(tmp_path):
    class RefusingAnswerer(FakeAnswerer):
        def answer_batch(self, questions, histories=None, grounded=None):
            answers = super().answer_batch(questions, histories, grounded)
            for a in answers:
                if "高血压" in a.question:
                    a.refused, a.text = True, "这个请求无法回答。"
                    a.model_text = ""
            return answers

    res = ev.run("openqa", OPENQA, answerer=RefusingAnswerer(ScriptedEngine(replies=lambda p: "多休息。")),
                 out_dir=tmp_path / "r", progress=False)
    assert res["scores"]["refused_rate"] == pytest.approx(100 / 3, abs=0.01)
    row = _rows(tmp_path / "r")[1]
    assert row["refused"] is True and row["prediction"] == "这个请求无法回答。" and row["model_text"] == ""
    assert row["rougeL"] == 0.0


def test_positional_answerer_or_engine(tmp_path):
    answerer = FakeAnswerer(ScriptedEngine(replies=lambda p: "多休息。"))
    res = ev.run("openqa", OPENQA, answerer, tmp_path / "a", progress=False, limit=1)
    assert res["scores"]["n"] == 1 and answerer.batches
    engine = ScriptedEngine(choices=lambda ctx: "B")
    res = ev.run("mcq", FIX / "basic_medicine_val.csv", engine, out_dir=tmp_path / "b", progress=False)
    assert engine.loglik_calls and res["scores"]["accuracy"] == pytest.approx(100 / 3, abs=0.01)
    with pytest.raises(ConfigError, match="out_dir"):
        ev.run("openqa", OPENQA, answerer)
