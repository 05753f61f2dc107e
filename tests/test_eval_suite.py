"""Benchmark suites (resources/eval_suites.yaml) on the fixture data dir: registry, files found or missing,
per-benchmark and per-subject tables, results.json/results.jsonl/report.md/suite.png, LLaMA-Factory
predictions, resume, and (tiny model, end to end through the CLI) a base vs tuned comparison."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_engine import ScriptedEngine

from qihuang.errors import ConfigError, InputError
from qihuang.eval.suite import SuiteSettings, parse_registry, registry, run_suite
from qihuang.options import EvalOptions

BENCH = Path(__file__).parent / "fixtures" / "eval" / "bench"
QUIET = EvalOptions(progress=False)


def always(letter: str) -> ScriptedEngine:
    return ScriptedEngine(choices=lambda ctx: letter)


# ------------------------------------------------------------------ the registry


def test_shipped_registry_is_valid_and_its_suites_are_the_asked_ones():
    reg = registry()
    assert list(reg.suites["medical-mcq"].benchmarks) == ["cmexam", "cmb-exam", "medqa-mcmle", "cmmlu-medical",
                                                          "ceval-medical"]
    assert list(reg.suites["general"].benchmarks) == ["cmmlu-general"]
    assert len(reg.subject_groups["cmmlu-medical"]) == 9


@pytest.mark.parametrize("change,error", [
    ({"benchmarks": {"b": {"task": "quiz", "summary": "s", "data": ["x"]}}}, "unknown task 'quiz'"),
    ({"benchmarks": {"b": {"task": "mcq", "summary": "s", "data": ["x"], "options": {"colour": 1}}}},
     "no option.*colour"),
    ({"benchmarks": {"b": {"task": "benchqa", "summary": "s", "data": ["x"], "fewshot": ["d"]}}}, "fewshot_data"),
    ({"suites": {"s": {"summary": "s", "benchmarks": ["nope"]}}}, "unknown benchmark"),
    ({"suites": {"b": {"summary": "s", "benchmarks": ["b"]}}}, "either a suite or a benchmark"),
    ({"benchmarks": {"b": {"task": "mcq", "summary": "s", "data": []}}}, "benchmarks.b.data"),
])
def test_registry_errors_name_the_field(change, error):
    raw = {"benchmarks": {"b": {"task": "mcq", "summary": "s", "data": ["x"]}},
           "suites": {"s": {"summary": "s", "benchmarks": ["b"]}}}
    raw.update(change)
    with pytest.raises(ConfigError, match=error):
        parse_registry(raw, "my_suites.yaml")


# ------------------------------------------------------------------ running a suite


def test_medical_mcq_suite_tables_files_and_llamafactory_predictions(tmp_path):
    out = tmp_path / "base"
    res = run_suite("medical-mcq", BENCH, out, engine=always("B"), options=QUIET)
    b = res["benchmarks"]
    assert list(b) == ["cmexam", "cmb-exam", "medqa-mcmle", "cmmlu-medical", "ceval-medical"] and not res["missing"]
    # always "B": cmexam 2/2 (its multi-answer and unanswered rows skipped), CMB-test 2/3 (multi-answer skipped)
    assert (b["cmexam"]["score"], b["cmexam"]["n"], b["cmexam"]["n_skipped"]) == (100.0, 2, 2)
    assert (b["cmb-exam"]["score"], b["cmb-exam"]["n"]) == (66.67, 3)
    assert b["medqa-mcmle"]["score"] == 33.33 and b["medqa-mcmle"]["method"] == "loglik"
    assert set(b["cmmlu-medical"]["by_subject"]) == {"anatomy", "virology"}  # medical subjects only
    assert set(b["ceval-medical"]["by_subject"]) == {"basic_medicine", "physician"}
    lo, hi = b["medqa-mcmle"]["ci95"]
    assert 0 <= lo <= 33.33 <= hi <= 100
    assert all(s["seconds_per_100"] is not None for s in b.values())
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [ln["benchmark"] for ln in lines if ln["subject"] is None] == list(b)
    assert {(ln["benchmark"], ln["subject"]) for ln in lines if ln["subject"]} >= {("cmmlu-medical", "anatomy")}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| cmexam | mcq | loglik | accuracy | 2 | 100.00 |" in report and "## cmmlu-medical: per subject" in report
    assert (out / "suite.png").read_bytes()[:4] == b"\x89PNG"
    lf = [json.loads(x) for x in (out / "cmexam" / "generated_predictions.jsonl").read_text().splitlines()]
    assert lf[0] == {"prompt": lf[0]["prompt"], "label": "B", "predict": "B"} and "呼吸频率" in lf[0]["prompt"]


def test_general_suite_leaves_out_the_medical_subjects_and_uses_dev_shots(tmp_path):
    engine = always("B")
    res = run_suite("general", BENCH, tmp_path / "g", engine=engine, options=QUIET, settings=SuiteSettings(shots=1))
    s = res["benchmarks"]["cmmlu-general"]
    assert set(s["by_subject"]) == {"chinese_history", "elementary_mathematics"} and s["n"] == 5
    contexts = [ctx for call in engine.loglik_calls for ctx, _ in call]
    assert any("汉朝的建立者" in c for c in contexts)  # the shot came from CMMLU's dev split, same subject
    assert not any("人体最长的骨" in c for c in contexts)  # not from a medical subject's dev file


def test_a_finished_benchmark_is_not_run_again_and_a_changed_one_is(tmp_path):
    engine = always("A")
    run_suite("medqa-mcmle,cmmlu-medical", BENCH, tmp_path / "r", engine=engine, options=QUIET)
    calls = len(engine.loglik_calls)
    again = run_suite("medqa-mcmle,cmmlu-medical", BENCH, tmp_path / "r", engine=engine, options=QUIET)
    assert len(engine.loglik_calls) == calls and all(s["reused"] for s in again["benchmarks"].values())
    sampled = run_suite("medqa-mcmle,cmmlu-medical", BENCH, tmp_path / "r", engine=engine, options=QUIET,
                        settings=SuiteSettings(sample=2, seed=1))
    assert len(engine.loglik_calls) > calls and not any(s["reused"] for s in sampled["benchmarks"].values())
    assert [s["n"] for s in sampled["benchmarks"].values()] == [2, 2]


def test_missing_benchmark_files_stop_the_run_unless_skipped(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(BENCH / "MedQA", data / "MedQA")
    with pytest.raises(InputError) as exc:
        run_suite("medical-mcq", data, tmp_path / "o", engine=always("A"), options=QUIET)
    msg = str(exc.value)
    assert "cmexam: looked for" in msg and "CMExam/data/test.csv" in msg and "--skip-missing" in msg
    assert "medqa-mcmle" not in msg.split("(", 1)[1].split("cmexam")[0]
    res = run_suite("medical-mcq", data, tmp_path / "o", engine=always("A"), options=QUIET,
                    settings=SuiteSettings(skip_missing=True))
    assert list(res["benchmarks"]) == ["medqa-mcmle"] and set(res["missing"]) == {
        "cmexam", "cmb-exam", "cmmlu-medical", "ceval-medical"}
    assert "Not run: cmexam" in (tmp_path / "o" / "report.md").read_text(encoding="utf-8")
    moved = run_suite("cmexam", data, tmp_path / "m", engine=always("B"), options=QUIET,
                      settings=SuiteSettings(bench_data={"cmexam": str(BENCH / "CMExam" / "data" / "test.csv")}))
    assert moved["benchmarks"]["cmexam"]["n"] == 2
    with pytest.raises(ConfigError, match="unknown suite or benchmark"):
        run_suite("medical-everything", data, tmp_path / "x", engine=always("A"), options=QUIET)


def test_intent_and_clinical_suites_report_their_methods(tmp_path):
    from fake_engine import FakeAnswerer

    engine = ScriptedEngine(choices=lambda ctx: "病症", replies=lambda p: "治疗方案")
    res = run_suite("medical-intent", BENCH, tmp_path / "i", engine=engine, options=QUIET)
    assert res["benchmarks"]["cmid"]["method"] == "loglik" and res["benchmarks"]["cmid"]["score"] == 25.0
    gen = run_suite("medical-intent", BENCH, tmp_path / "j", answerer=FakeAnswerer(engine), options=QUIET,
                    settings=SuiteSettings(method="generate"))
    k = gen["benchmarks"]["kuake-qic"]
    assert k["method"] == "generate" and k["score"] == 25.0 and k["scores"]["n_unparsed"] == 0
    clin = run_suite("medical-clin", BENCH, tmp_path / "c", answerer=FakeAnswerer(engine), options=QUIET)
    assert clin["benchmarks"]["cmb-clin"]["method"] == "generate" and clin["benchmarks"]["cmb-clin"]["metric"] == "rougeL"


# ------------------------------------------------------------------ paired comparison


def test_paired_comparison_of_two_suite_runs(tmp_path):
    from qihuang.eval.paired import compare_pair

    run_suite("medical-mcq", BENCH, tmp_path / "base", engine=always("A"), options=QUIET)
    run_suite("medical-mcq", BENCH, tmp_path / "tuned", engine=always("B"), options=QUIET)
    table = compare_pair(tmp_path / "base", tmp_path / "tuned", n_boot=300)
    rows = {r.benchmark: r for r in table.rows}
    cmexam = rows["cmexam"]  # gold B, B: base 0 %, tuned 100 % on both questions
    assert (cmexam.base, cmexam.tuned, cmexam.delta, cmexam.n) == (0.0, 100.0, 100.0, 2)
    assert cmexam.ci95 == [100.0, 100.0]  # every resample of the pairs gives +100
    medqa = rows["medqa-mcmle"]  # gold A, B, C: base right on one, tuned right on another
    assert (medqa.base, medqa.tuned, medqa.delta) == (33.33, 33.33, 0.0)
    assert medqa.ci95[0] < 0 < medqa.ci95[1]
    mean = rows["mean of benchmarks"]
    assert mean.delta == pytest.approx(sum(r.delta for r in table.rows[:-1]) / 5, abs=0.01)
    assert table.to_dict() == compare_pair(tmp_path / "base", tmp_path / "tuned", n_boot=300).to_dict()  # seeded
    same = compare_pair(tmp_path / "base", tmp_path / "base", n_boot=100)
    assert all(r.delta == 0 and r.ci95 == [0.0, 0.0] for r in same.rows)
    subjects = compare_pair(tmp_path / "base", tmp_path / "tuned", subjects=True, n_boot=50)
    assert any(r.benchmark == "cmmlu-medical" and r.subject == "anatomy" for r in subjects.rows)


def test_paired_comparison_notes_questions_not_in_both_runs(tmp_path):
    from qihuang.eval.paired import compare_pair

    run_suite("cmmlu-general", BENCH, tmp_path / "a", engine=always("A"), options=QUIET)
    run_suite("cmmlu-general", BENCH, tmp_path / "b", engine=always("B"), options=QUIET,
              settings=SuiteSettings(sample=3, seed=5))
    table = compare_pair(tmp_path / "a", tmp_path / "b", n_boot=50)
    assert table.rows[0].n == 3 and "3 questions in both runs" in table.notes[0]


# ------------------------------------------------------------------ end to end on a tiny model (CLI)


def test_cli_suite_and_compare_base_vs_tuned_on_a_tiny_model(tiny_llama, tmp_path, capsys):
    from test_train import write_alpaca

    from qihuang.cli import main
    from qihuang.train import run

    adapter = tmp_path / "tuned-model"
    run({"model": str(tiny_llama), "dataset": str(write_alpaca(tmp_path / "sft", 8, 2)), "output": str(adapter),
         "max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "cutoff_len": 96, "num_threads": 1,
         "eval_at_start": False}, progress=False)
    common = ["--data-dir", str(BENCH), "--sample", "2", "--no-progress", "--engine", "hf", "--max-new-tokens", "6"]
    for name, extra in (("base", []), ("tuned", ["--adapter", str(adapter)])):
        assert main(["eval", "suite", "medical-mcq", "--model", str(tiny_llama), *extra, *common,
                     "--out", str(tmp_path / name)]) == 0
    out = capsys.readouterr().out
    assert "cmb-exam" in out and "s / 100 q" in out and "loglik" in out
    base = json.loads((tmp_path / "base" / "results.json").read_text(encoding="utf-8"))
    assert all(s["n"] == 2 for s in base["benchmarks"].values()) and base["model"]["model"] == str(tiny_llama)
    assert main(["eval", "compare", str(tmp_path / "base"), str(tmp_path / "tuned"), "--markdown",
                 "--bootstrap", "200", "--out", str(tmp_path / "cmp.png")]) == 0
    table = capsys.readouterr().out
    assert "| cmexam | loglik | accuracy | 2 |" in table and "95% CI of Δ" in table and "mean of benchmarks" in table
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "suite", "medical-clin", "--model", str(tiny_llama), *common, "--no-grounded",
                 "--out", str(tmp_path / "clin")]) == 0
    clin = json.loads((tmp_path / "clin" / "results.json").read_text(encoding="utf-8"))["benchmarks"]["cmb-clin"]
    assert clin["method"] == "generate" and clin["n"] == 2 and clin["score"] is not None
    assert main(["eval", "suite"]) == 0 and "medical-mcq" in capsys.readouterr().out
