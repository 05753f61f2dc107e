"""kbqa task: gold values, normalized/alias hits, hallucinated entities, QiZhen criteria, BLEU/ROUGE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_engine import FakeAnswerer, ScriptedEngine
from kb_fixture import make_tiny_kb

import qihuang.eval as ev
from qihuang.eval.tasks.kbqa import gold_values

FIX = Path(__file__).parent / "fixtures" / "eval"

# scripted answers per question of tests/fixtures/eval/kbqa_test.jsonl, with what each should score
ANSWERS = {
    # 2 of 3 drugs, one written in traditional characters with full-width punctuation; 阿司匹林 is not gold
    "偏头痛应该吃什么药": ("可以服用布洛芬，或者「對乙酰氨基酚」。也有人用阿司匹林。", 2 / 3, ["阿司匹林"]),
    # 脑卒中 named by its KB alias 中风; 冠心病 and 肾衰竭 missing
    "高血压有哪些并发症": ("高血压控制不好容易中风。", 1 / 3, []),
    "糖尿病去医院挂什么科": ("去内分泌科 。", 1.0, []),
    # scenario: the gold is the disease; named by its alias; symptoms from the question are not hallucinations
    "胸痛、胸闷": ("胸痛胸闷心悸可能是冠状动脉粥样硬化性心脏病。", 1.0, []),
    # dialogue: only the drugs of the last turn count; 感冒 (question entity) and 鼻塞 (a fact) are fine
    "那感冒应该吃什么药": ("感冒鼻塞可以用复方氨酚烷胺，高血压患者要慎用。", 1 / 2, ["高血压"]),
}


def _engine() -> ScriptedEngine:
    return ScriptedEngine(replies={k: v[0] for k, v in ANSWERS.items()})


@pytest.fixture
def kb(tmp_path):
    return make_tiny_kb(tmp_path / "kb.sqlite")


def test_gold_values_by_kind():
    rows = [json.loads(x) for x in (FIX / "kbqa_test.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    assert gold_values(rows[0]) == ["布洛芬", "对乙酰氨基酚", "佐米曲普坦"]
    assert gold_values(rows[3]) == ["冠心病"]  # scenario: the disease (subject of the triples)
    assert gold_values(rows[4]) == ["对乙酰氨基酚", "复方氨酚烷胺"]  # dialogue: values the last answer names
    assert gold_values({"kind": "scenario", "knowledge": [], "entity": "感冒、肺炎"}) == ["感冒", "肺炎"]


def test_kbqa_scores_with_kb(tmp_path, kb):
    answerer = FakeAnswerer(_engine(), kb)
    res = ev.run("kbqa", FIX / "kbqa_test.jsonl", answerer=answerer, kb=kb, out_dir=tmp_path / "run",
                 batch_size=2, progress=False)
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    expected = list(ANSWERS.values())
    for (rid, row), (_, recall, halluc) in zip(sorted(rows.items()), expected, strict=True):
        assert row["fact_recall"] == pytest.approx(recall, abs=1e-4), rid
        assert row["hallucinated"] == halluc, rid
        assert row["qizhen_any"] == (recall > 0) and row["qizhen_half"] == (recall >= 0.5)
        assert row["qizhen_two_thirds"] == (recall >= 2 / 3 - 1e-9)
    recalls = [r for _, r, _ in expected]
    s = res["scores"]
    assert s["n"] == 5
    assert s["fact_recall"] == pytest.approx(100 * sum(recalls) / 5, abs=0.01)
    assert s["qizhen_any"] == 100.0
    assert s["qizhen_half"] == pytest.approx(100 * sum(r >= 0.5 for r in recalls) / 5)
    assert s["qizhen_two_thirds"] == pytest.approx(100 * sum(r >= 2 / 3 - 1e-9 for r in recalls) / 5)
    assert s["hallucination_rate"] == 40.0
    assert s["hallucinated_entities_mean"] == pytest.approx(2 / 5)
    for key in ("bleu4", "rouge1", "rouge2", "rougeL"):
        assert 0 < s[key] < 100
    assert rows["k2"]["hit"] == ["脑卒中"]
    assert res["kb"]["path"].endswith("kb.sqlite")
    assert {"k6", "k7"} == {f"k{s['line']}" for s in res["skipped"]}  # no knowledge / broken JSON
    assert set(res["details"]["by_kind"]) == {"single", "scenario", "dialogue"}


def test_kbqa_without_kb_counts_no_aliases_and_no_hallucination(tmp_path):
    res = ev.run("kbqa", FIX / "kbqa_test.jsonl", answerer=FakeAnswerer(_engine()), out_dir=tmp_path / "run",
                 progress=False)
    assert "hallucination_rate" not in res["scores"]
    assert any("no knowledge base" in n for n in res["notes"])
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    assert rows["k2"]["fact_recall"] == 0.0  # 中风 is an alias only the KB knows
    assert rows["k1"]["fact_recall"] == pytest.approx(2 / 3, abs=1e-4)  # traditional/full width still match


def test_perfect_reference_answers_score_full_marks(tmp_path, kb):
    records = [json.loads(x) for x in (FIX / "kbqa_test.jsonl").read_text(encoding="utf-8").splitlines()[:5]]
    by_q = {r["instruction"]: r["output"] for r in records}
    engine = ScriptedEngine(replies=lambda prompt: by_q[prompt.splitlines()[-1]])
    res = ev.run("kbqa", FIX / "kbqa_test.jsonl", answerer=FakeAnswerer(engine, kb), kb=kb,
                 out_dir=tmp_path / "run", progress=False)
    s = res["scores"]
    assert s["fact_recall"] == s["qizhen_two_thirds"] == 100.0
    assert s["bleu4"] == pytest.approx(100.0) and s["rougeL"] == pytest.approx(100.0)
    # the scenario reference sends the patient to 心血管内科, the KB's department of the gold disease: not a
    # hallucination (the metric before verification counted it as one)
    assert s["hallucination_rate"] == 0.0 and s["wrong_attribute_rate"] == 0.0


def test_the_answerers_kb_is_used_when_none_is_given(tmp_path, kb):
    res = ev.run("kbqa", FIX / "kbqa_test.jsonl", answerer=FakeAnswerer(_engine(), kb), out_dir=tmp_path / "run",
                 progress=False, limit=1)
    assert res["scores"]["hallucination_rate"] == 100.0  # 阿司匹林 in the first answer
    assert res["kb"]["path"].endswith("kb.sqlite")


def test_reference_answers_of_a_built_dataset_recall_every_gold_value(tmp_path, kb):
    """Contract check with `qihuang data build`: for every kind of record it writes, answering with
    the reference output recalls all gold values and names no entity outside the gold facts."""
    from qihuang.cli import main

    ds = tmp_path / "ds"
    assert main(["data", "build", "--db", str(kb.path), "--out", str(ds), "--test-ratio", "0.3", "--json"]) == 0
    records = [json.loads(x) for x in (ds / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    by_prompt = {"\n".join([*(f"{a}\n{b}" for a, b in r["history"]), r["instruction"]]): r["output"]
                 for r in records}
    engine = ScriptedEngine(replies=lambda prompt: by_prompt[prompt])
    res = ev.run("kbqa", ds, answerer=FakeAnswerer(engine, kb), out_dir=tmp_path / "run", progress=False,
                 batch_size=16)
    kinds = res["details"]["by_kind"]
    assert set(kinds) == {"single", "scenario", "dialogue"} and res["scores"]["n"] == len(records)
    assert all(v["fact_recall"] == 100.0 for v in kinds.values()), kinds
    assert res["scores"]["hallucination_rate"] == 0.0


def test_kb_facts_beyond_the_reference_are_not_hallucinations(tmp_path, kb):
    # the reference shows 2 of 高血压's 4 KB symptoms; 心悸 is a true KB symptom, 胸闷 is 冠心病's
    record = {"instruction": "高血压有什么症状", "output": "高血压常见头晕、头痛。", "kind": "single",
              "knowledge": [["高血压", "常见症状", "头晕"], ["高血压", "常见症状", "头痛"]],
              "entity": "高血压", "attribute": "symptoms", "id": "h1"}
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    engine = ScriptedEngine(replies={"高血压有什么症状": "高血压可有头晕、心悸，也可能胸闷。"})
    # the tiny KB cites 胸闷 twice: count every name (min_support=1), as for any small KB
    ev.run("kbqa", data, answerer=FakeAnswerer(engine, kb), kb=kb, out_dir=tmp_path / "run", progress=False,
           min_support=1)
    row = json.loads((tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8"))
    assert row["fact_recall"] == pytest.approx(0.5)
    assert row["hallucinated"] == ["胸闷"]
    # with the default (3), a name only ever cited as a value in fewer triples is not a named entity
    assert "胸闷" in kb.rare_values(3) and "高血压" not in kb.rare_values(3) and not kb.rare_values(1)
    ev.run("kbqa", data, answerer=FakeAnswerer(engine, kb), kb=kb, out_dir=tmp_path / "run3", progress=False)
    assert json.loads((tmp_path / "run3" / "predictions.jsonl").read_text(encoding="utf-8"))["hallucinated"] == []


def test_hallucination_ignores_names_found_across_word_boundaries(kb):
    from qihuang.eval.base import Example, RunContext
    from qihuang.segment import word_boundaries
    from qihuang.eval.tasks.kbqa import KBQATask

    assert {2, 4} <= word_boundaries("具体检查")  # 具体/检查: no boundary inside 体检
    example = Example(id="x", question="高血压有哪些并发症", subject="complications",
                      fields={"gold": ["脑卒中"], "knowledge": [["高血压", "并发症", "脑卒中"]], "entity": "高血压",
                              "kind": "single"})
    task, ctx = KBQATask(min_support=1), RunContext(kb=kb)
    text = "厌恶心理"  # 恶心 (a KB symptom) is found inside, across the 厌恶/心理 cut
    assert any(m.name == "恶心" for m in kb.find_entities(text))
    assert task.score_example(example, f"可能有脑卒中。{text}。", ctx)["hallucinated"] == []
    assert task.score_example(example, "可能有脑卒中，还会恶心。", ctx)["hallucinated"] == ["恶心"]


# ---------------------------------------------------------------- verification-based metric (adversarial)

def _one(tmp_path, record: dict) -> Path:
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    return data


IBU_RECORD = {"id": "i1", "instruction": "布洛芬缓释胶囊的适应症是什么？", "kind": "single",
              "output": "布洛芬缓释胶囊的适应症包括头痛、关节痛。", "entity": "布洛芬缓释胶囊", "attribute": "indications",
              "knowledge": [["布洛芬缓释胶囊", "适应症", "头痛"], ["布洛芬缓释胶囊", "适应症", "关节痛"]]}


@pytest.mark.parametrize("answer, hallucinated, wrong", [
    ("布洛芬缓释胶囊的适应症包括头痛、关节痛。", [], []),
    # an adverse reaction listed as an indication (恶心 is in the KB, under adverse reactions)
    ("布洛芬缓释胶囊的适应症包括头痛、恶心。", [], ["恶心"]),
    ("适应症：\n1. 头痛\n2. 皮疹", [], ["皮疹"]),
    # a drug / disease of another entity
    ("布洛芬缓释胶囊可用于头痛，也可以换成阿莫西林胶囊。", ["阿莫西林胶囊"], []),
    ("它还能治疗肺炎。", ["肺炎"], []),
    # a negated mention is no claim
    ("适应症有头痛。一般不会引起肺炎。", [], []),
    # a true adverse reaction, presented as one, is still not among the facts checked (gold + asked attribute)
    ("适应症有头痛。副作用可能有恶心。", ["恶心"], []),
])
def test_kbqa_metric_catches_wrong_attributes_and_foreign_entities(tmp_path, kb, answer, hallucinated, wrong):
    engine = ScriptedEngine(replies={"布洛芬缓释胶囊": answer})
    res = ev.run("kbqa", _one(tmp_path, IBU_RECORD), answerer=FakeAnswerer(engine, kb), kb=kb,
                 out_dir=tmp_path / "run", progress=False)
    row = json.loads((tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8"))
    assert row["hallucinated"] == hallucinated and row["wrong_attribute"] == wrong
    assert res["scores"]["hallucination_rate"] == (100.0 if hallucinated else 0.0)
    assert res["scores"]["wrong_attribute_rate"] == (100.0 if wrong else 0.0)


def test_kbqa_grounded_answers_are_checked_against_their_citations_and_drafts_are_scored(tmp_path, kb):
    from answer_fakes import FakeEngine

    from qihuang.answer.answerer import Answerer

    bad = "布洛芬缓释胶囊的适应症包括头痛、恶心。还可以治疗肺炎。"
    for policy, shown_wrong, shown_halluc in (("flag", 100.0, 100.0), ("drop", 0.0, 0.0)):
        answerer = Answerer(FakeEngine(reply=lambda p: bad), kb, on_unsupported=policy)
        res = ev.run("kbqa", _one(tmp_path, IBU_RECORD), answerer=answerer, kb=kb, out_dir=tmp_path / policy,
                     progress=False)
        s = res["scores"]
        assert (s["wrong_attribute_rate"], s["hallucination_rate"]) == (shown_wrong, shown_halluc), policy
        assert s["draft_wrong_attribute_rate"] == 100.0 and s["draft_hallucination_rate"] == 100.0
        row = json.loads((tmp_path / policy / "predictions.jsonl").read_text(encoding="utf-8"))
        assert row["citations"] and row["citations"][0]["attribute"] == "indications"
    assert "wrong_attribute_rate" in res["headline"] and s["abstained_rate"] == 0.0


def test_kbqa_counts_abstained_answers(tmp_path, kb):
    from answer_fakes import FakeEngine

    from qihuang.answer.answerer import Answerer

    record = {**IBU_RECORD, "instruction": "今天适合去爬山吗？"}  # nothing in the KB: abstain, no model call
    engine = FakeEngine(reply=lambda p: "头痛。")
    res = ev.run("kbqa", _one(tmp_path, record), answerer=Answerer(engine, kb, ungrounded="abstain"), kb=kb,
                 out_dir=tmp_path / "run", progress=False)
    assert res["scores"]["abstained_rate"] == 100.0 and engine.prompts == []
