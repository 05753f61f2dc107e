"""retrieval task: record validation, the metrics (with adversarial groundings), runs on the tiny KB,
the CLI without a model, and (integration) the labelled CMeKG questions against the real KB."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from kb_fixture import make_tiny_kb

import qihuang.eval as ev
from qihuang.answer.grounding import Grounding
from qihuang.cli import main
from qihuang.errors import ConfigError
from qihuang.eval.tasks import retrieval as rt
from qihuang.kb.types import Fact

FIX = Path(__file__).parent / "fixtures" / "eval"
TINY = FIX / "retrieval_tiny.jsonl"
CMEKG_DEV = FIX / "retrieval_cmekg_dev.jsonl"
REALQ = FIX / "retrieval_realq_tiny.jsonl"  # the real-question set's shape, questions written for these tests
INVERSE = {"drugs": "indications"}


@dataclass(frozen=True)
class LookedUp:
    """A fact as the retrieval contract describes it: reached ``via`` a lookup from ``anchor``."""

    entity: str
    attribute: str
    relation: str
    value: str
    via: str = "direct"
    anchor: str | None = None


def _gold(entities, attributes, **extra) -> dict:
    return rt.parse_record({"question": "q", "entities": entities, "attributes": attributes, **extra})


def _grounding(facts, attributes) -> Grounding:
    entities = list(dict.fromkeys(f.entity for f in facts))
    return Grounding(list(facts), [], entities, list(attributes))


def _fact(entity, attribute, value, relation="r") -> Fact:
    return Fact(entity, attribute, relation, value)


def _summary(pairs) -> dict:
    rows = []
    for gold, grounding in pairs:
        row = rt.score_grounding(gold, grounding, INVERSE)
        row.update(kind=gold["kind"], split=gold["split"], seconds=0.001)
        rows.append(row)
    return rt.summarize(rows)


# ---------------------------------------------------------------- records


def test_parse_record_validates_fields():
    gold = _gold(["布洛芬"], ["indications"], kind="reverse", accept={"布洛芬": ["布洛芬片"]}, split="heldout")
    assert gold["canon"] == {"布洛芬片": "布洛芬"} and gold["split"] == "heldout" and gold["kind"] == "reverse"
    for bad, field in [({"entities": "偏头痛"}, "entities"), ({"split": "test"}, "split"),
                       ({"accept": {"别的": ["x"]}}, "accept"), ({"history": [["only one"]]}, "history"),
                       ({"question": " "}, "question")]:
        row = {"question": "q", "entities": ["偏头痛"], "attributes": ["drugs"], **bad}
        with pytest.raises(ValueError, match=field):
            rt.parse_record(row)
    with pytest.raises(ValueError, match="required"):
        rt.parse_record({"question": "q", "entities": []})


def test_load_skips_malformed_rows_and_filters_split(tmp_path):
    data = tmp_path / "q.jsonl"
    rows = TINY.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join([*rows, "{not json", json.dumps({"question": "x", "entities": []})]) + "\n",
                    encoding="utf-8")
    ds = rt.RetrievalTask().load(data)
    assert len(ds.examples) == len(rows) and len(ds.skipped) == 2
    assert {s.line for s in ds.skipped} == {len(rows) + 1, len(rows) + 2}
    heldout = rt.RetrievalTask(split="heldout").load(data)
    assert {ex.fields["split"] for ex in heldout.examples} == {"heldout"}
    assert 0 < len(heldout.examples) < len(ds.examples)


# ---------------------------------------------------------------- metrics


def test_perfect_retrieval_scores_full_marks():
    gold = _gold(["偏头痛"], ["drugs"])
    facts = [_fact("偏头痛", "drugs", "布洛芬"), _fact("偏头痛", "drugs", "对乙酰氨基酚")]
    s = _summary([(gold, _grounding(facts, ["drugs"]))])
    assert s["entity_acc1"] == s["entity_recall3"] == s["attr_f1"] == 100.0
    assert s["fact_recall"] == s["citation_precision"] == 100.0


def test_wrong_attribute_lowers_citation_precision_and_fact_recall():
    gold = _gold(["阿莫西林胶囊"], ["indications"])
    right = [_fact("阿莫西林胶囊", "indications", "肺炎")]
    wrong = [_fact("阿莫西林胶囊", "adverse_reactions", "皮疹"), _fact("阿莫西林胶囊", "adverse_reactions", "腹泻")]
    mixed = _summary([(gold, _grounding(right + wrong, ["indications"]))])
    assert mixed["citation_precision"] == pytest.approx(100 / 3, abs=0.01) and mixed["fact_recall"] == 100.0
    only_wrong = _summary([(gold, _grounding(wrong, ["adverse_reactions"]))])
    assert only_wrong["citation_precision"] == 0.0 and only_wrong["fact_recall"] == 0.0
    assert only_wrong["attr_precision"] == only_wrong["attr_recall"] == only_wrong["attr_f1"] == 0.0
    assert only_wrong["entity_acc1"] == 100.0  # the entity was right, the facts were not


def test_facts_for_a_not_in_kb_question_lower_abstain_recall():
    nik = _gold([], ["adverse_reactions"], kind="not_in_kb")
    in_kb = _gold(["偏头痛"], ["drugs"])
    good = _grounding([_fact("偏头痛", "drugs", "布洛芬")], ["drugs"])
    abstains = _summary([(nik, Grounding.empty()), (in_kb, good)])
    assert abstains["abstain_recall"] == 100.0 and abstains["abstain_precision"] == 100.0
    leaks = _summary([(nik, _grounding([_fact("司美", "adverse_reactions", "恶心")], [])), (in_kb, good)])
    assert leaks["abstain_recall"] == 0.0 and leaks["abstain_precision"] is None
    assert leaks["citation_precision"] == 100.0  # counted by the abstain scores, not here
    silent = _summary([(nik, Grounding.empty()), (in_kb, Grounding.empty())])
    assert silent["abstain_precision"] == 50.0 and silent["entity_acc1"] == 0.0 and silent["fact_recall"] == 0.0


def test_entity_ranking_acc1_and_recall3():
    gold = _gold(["高血压"], ["drugs"])
    second = _grounding([_fact("糖尿病", "drugs", "二甲双胍"), _fact("高血压", "drugs", "氨氯地平")], ["drugs"])
    s = _summary([(gold, second)])
    assert s["entity_acc1"] == 0.0 and s["entity_recall3"] == 100.0
    assert s["citation_precision"] == 50.0
    four = _gold(["a", "b", "c", "d"], ["drugs"])
    got = _grounding([_fact(e, "drugs", "x") for e in ("a", "b", "z", "c")], ["drugs"])
    assert rt.score_grounding(four, got, {})["entity_recall3"] == pytest.approx(2 / 3, abs=1e-3)


def test_reverse_two_hop_and_symptom_facts_belong_through_the_contract():
    reverse = _gold(["布洛芬"], ["indications"], kind="reverse")
    fact = LookedUp("偏头痛", "drugs", "药物治疗", "布洛芬", via="reverse", anchor="布洛芬")
    row = rt.score_grounding(reverse, _grounding([fact], ["indications"]), INVERSE)
    assert row["pred_entities"][0] == "布洛芬" and row["entity_acc1"] and row["fact_recall"] == 1.0
    assert row["n_belonging"] == 1
    sibling = LookedUp("偏头痛", "drugs", "药物治疗", "对乙酰氨基酚", via="reverse", anchor="布洛芬")
    row = rt.score_grounding(reverse, _grounding([fact, sibling], ["indications"]), INVERSE)
    assert row["n_belonging"] == 1  # another drug of the same disease does not answer 布洛芬's indications
    no_inverse = rt.score_grounding(reverse, _grounding([fact], ["indications"]), {})
    assert no_inverse["n_belonging"] == 0 and no_inverse["fact_recall"] == 0.0
    unanchored = LookedUp("偏头痛", "drugs", "药物治疗", "布洛芬")  # a direct fact of another entity
    assert rt.score_grounding(reverse, _grounding([unanchored], ["drugs"]), INVERSE)["entity_acc1"] is False

    two_hop = _gold(["偏头痛"], ["drugs", "contraindications"], kind="two_hop")
    hop1 = LookedUp("偏头痛", "drugs", "药物治疗", "布洛芬")
    hop2 = LookedUp("布洛芬片", "contraindications", "禁忌", "孕妇禁用", via="two_hop", anchor="偏头痛")
    stray = LookedUp("布洛芬片", "adverse_reactions", "不良反应", "恶心", via="two_hop", anchor="偏头痛")
    row = rt.score_grounding(two_hop, _grounding([hop1, hop2, stray], ["drugs", "contraindications"]), INVERSE)
    assert row["fact_recall"] == 1.0 and row["n_belonging"] == 2 and row["n_facts"] == 3

    symptom = _gold(["头痛", "发热"], ["department"], kind="symptom", negated=["咳嗽"])
    dept = LookedUp("偏头痛", "department", "就诊科室", "神经内科", via="symptom", anchor="头痛")
    evidence = LookedUp("偏头痛", "symptoms", "临床症状及体征", "头痛", via="symptom", anchor="头痛")
    row = rt.score_grounding(symptom, _grounding([dept, evidence], ["department"]), INVERSE)
    assert row["n_belonging"] == 2 and row["fact_recall"] == 1.0  # the candidates answer for both symptoms
    assert row["negated_hit"] is False
    one_hop = LookedUp("偏头痛", "department", "就诊科室", "神经内科", via="two_hop", anchor="头痛")
    assert rt.score_grounding(symptom, _grounding([one_hop], ["department"]), INVERSE)["fact_recall"] == 0.5
    cough = LookedUp("感冒", "department", "就诊科室", "呼吸内科", via="symptom", anchor="咳嗽")
    row = rt.score_grounding(symptom, _grounding([cough], ["department"]), INVERSE)
    assert row["negated_hit"] is True and row["n_belonging"] == 0


def test_accepted_names_count_as_their_gold_entity():
    gold = _gold(["布洛芬"], ["indications"], accept={"布洛芬": ["布洛芬片"]})
    row = rt.score_grounding(gold, _grounding([_fact("布洛芬片", "indications", "头痛")], ["indications"]), {})
    assert row["entity_acc1"] and row["fact_recall"] == 1.0 and row["pred_entities"] == ["布洛芬"]
    other = rt.score_grounding(gold, _grounding([_fact("布洛芬乳膏", "indications", "扭伤")], ["indications"]), {})
    assert not other["entity_acc1"] and other["fact_recall"] == 0.0


def test_attribute_micro_f1_over_questions():
    a = _gold(["x"], ["drugs"])
    b = _gold(["y"], ["department", "examinations"])
    s = _summary([(a, _grounding([], ["drugs", "cause"])), (b, _grounding([], ["department"]))])
    # tp 2, fp 1, fn 1
    assert s["attr_precision"] == pytest.approx(66.67) and s["attr_recall"] == pytest.approx(66.67)
    assert s["attr_f1"] == pytest.approx(66.67)


# ---------------------------------------------------------------- runs


@pytest.fixture
def kb(tmp_path):
    return make_tiny_kb(tmp_path / "kb.sqlite")


def test_labels_of_the_tiny_fixture_are_backed_by_the_tiny_kb(kb):
    for line in TINY.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        assert rt.label_problems(kb, rec) == [], rec["id"]
    bad = {"question": "q", "entities": ["偏头痛", "不存在的药"], "attributes": ["dosage"]}
    assert rt.label_problems(kb, bad) == ["'不存在的药' is not a KB entity", "no dosage facts for '偏头痛'",
                                          "no dosage facts for '不存在的药'"]


def test_run_on_the_tiny_kb_writes_results_without_a_model(kb, tmp_path):
    res = ev.run("retrieval", TINY, out_dir=tmp_path / "run", kb=kb, progress=False)
    assert res["task"] == "retrieval" and res["model"] == {} and res["data"]["n_evaluated"] == 10
    scores = res["scores"]
    for key in rt.RetrievalTask.headline:
        assert key in scores
    assert 0 <= scores["entity_acc1"] <= 100 and scores["questions_per_s"] > 0
    assert set(res["details"]["by_split"]) == {"dev", "heldout"}
    assert {"not_in_kb", "reverse", "negated"} <= set(res["details"]["by_kind"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert by_id["t01"]["entity_acc1"] is True and by_id["t01"]["fact_recall"] == 1.0
    assert by_id["t01"]["facts"] and all(f["belongs"] for f in by_id["t01"]["facts"])
    assert by_id["t10"]["abstained"] is True and by_id["t10"]["entity_acc1"] is None
    # the scores are what the rows say
    in_kb = [r for r in rows if r["gold_entities"]]
    assert scores["entity_acc1"] == round(100 * sum(r["entity_acc1"] for r in in_kb) / len(in_kb), 2)


def test_a_retrieval_that_returns_nothing_scores_nothing(kb, tmp_path, monkeypatch):
    import qihuang.answer.grounding as grounding

    monkeypatch.setattr(grounding, "ground", lambda kb, question: Grounding.empty())
    res = ev.run("retrieval", TINY, out_dir=tmp_path / "run", kb=kb, progress=False)
    s = res["scores"]
    assert s["entity_acc1"] == 0.0 and s["fact_recall"] == 0.0 and s["citation_precision"] is None
    assert s["abstain_recall"] == 100.0 and s["abstain_precision"] == 20.0  # 2 of the 10 abstentions are right


def test_history_is_passed_only_when_ground_accepts_it(kb, tmp_path, monkeypatch):
    import qihuang.answer.grounding as grounding

    seen = []

    def ground(kb, question, history=None):
        seen.append(history)
        return Grounding.empty()

    monkeypatch.setattr(grounding, "ground", ground)
    data = tmp_path / "h.jsonl"
    data.write_text(json.dumps({"question": "那它有什么副作用", "entities": ["阿莫西林胶囊"],
                                "attributes": ["adverse_reactions"], "kind": "followup",
                                "history": [["阿莫西林胶囊治什么", "肺炎等"]]}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    ev.run("retrieval", data, out_dir=tmp_path / "run", kb=kb, progress=False)
    assert seen == [["阿莫西林胶囊治什么"]]  # the earlier user turns, as answering passes them


def test_run_needs_a_kb(tmp_path):
    with pytest.raises(ConfigError, match="knowledge base"):
        ev.run("retrieval", TINY, out_dir=tmp_path / "run", progress=False)


def test_cli_runs_the_task_without_a_model(kb, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "--task", "retrieval", "--data", str(TINY), "--kb", str(kb.path), "--out", str(out),
                 "--split", "dev", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "entity_acc1" in printed and "abstain_recall" in printed
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["data"]["n_evaluated"] == 5 and set(res["details"]["by_split"]) == {"dev"}


# ---------------------------------------------------------------- the real-question shape and figures


def test_records_in_the_real_question_shape():
    gold = rt.parse_record({"text": " 头痛挂什么科 ", "entities": ["头痛"], "also_ok": ["偏头痛", "头痛"],
                            "attributes": ["department", "none"], "department_gold": ["神经内科"], "split": "held"})
    assert gold["question"] == "头痛挂什么科" and gold["attributes"] == ["department"]
    assert gold["also_ok"] == ["偏头痛"] and gold["canon"] == {"偏头痛": "头痛"}  # counts as the first gold entity
    assert gold["department_gold"] == ["神经内科"] and gold["confidence"] == "high" and gold["split"] == "held"
    assert rt.parse_record({"text": "x", "entities": [], "attributes": ["none"]})["attributes"] == []
    with pytest.raises(ValueError, match="confidence"):
        rt.parse_record({"text": "x", "entities": [], "attributes": [], "confidence": "sure"})
    with pytest.raises(ValueError, match="department_gold"):
        rt.parse_record({"text": "x", "entities": [], "attributes": [], "department_gold": "儿科"})


@pytest.mark.parametrize("a, b, same", [
    ("心内科", "心血管内科", True), ("急诊室", "急诊科", True), ("妇产科", "产科", True), ("男科", "泌尿外科", True),
    ("消化内科", "内科", True),  # one name inside the other
    ("新生儿科", "儿科", True), ("小儿消化内科", "儿科", True), ("全科医学科", "消化内科", False),
    ("皮肤科", "眼科", False), ("", "眼科", False),
])
def test_same_department(a, b, same):
    assert rt.same_department(a, b) is same and rt.same_department(b, a) is same


def _link(facts, entities=(), attributes=()):
    from qihuang.kb.types import LinkResult, Mention

    mentions = [Mention(n, n, 0, len(n), "disease") for n in entities]
    return LinkResult("q", mentions, list(attributes), list(facts))


def test_link_figures_follow_their_definitions():
    gold = rt.parse_record({"text": "q", "entities": ["头痛"], "also_ok": ["偏头痛"], "attributes": ["department"],
                            "department_gold": ["神经内科"]})
    facts = [LookedUp("头痛", "department", "r", "心内科", "department", "头痛"),
             LookedUp("偏头痛", "department", "r", "心内科", "direct"),  # the same department again
             LookedUp("偏头痛", "department", "r", "急诊科", "direct"),
             LookedUp("感冒", "symptoms", "r", "发热", "symptom", "发热、头痛"),  # anchored at a gold name
             LookedUp("感冒", "drugs", "r", "布洛芬"),  # on another entity
             LookedUp("偏头痛", "department", "r", "神经内科", "direct")]  # the 3rd distinct one
    row = rt.score_link(gold, _link(facts, entities=["偏头痛"], attributes=["department", "drugs"]))
    assert row["link_entity_hit"] and (row["link_facts"], row["link_facts_ok"]) == (6, 5)
    assert row["link_attr"] == (1, 1, 0) and row["link_abstained"] is None
    assert row["departments"] == ["心内科", "急诊科", "神经内科"] and row["department_hit3"] is True
    late = rt.score_link(gold, _link(facts[:1] + [LookedUp("x", "department", "r", d) for d in ("眼科", "骨科")]
                                     + facts[5:]))
    assert late["departments"] == ["心内科", "眼科", "骨科"] and late["department_hit3"] is False
    missed = rt.score_link(gold, _link([LookedUp("感冒", "drugs", "r", "布洛芬")], entities=["感冒"]))
    assert missed["link_entity_hit"] is False and missed["link_facts_ok"] == 0
    empty = rt.parse_record({"text": "q", "entities": [], "attributes": ["none"]})
    assert rt.score_link(empty, _link([]))["link_abstained"] is True
    assert rt.score_link(empty, _link(facts))["link_abstained"] is False
    s = rt.summarize_link([row, missed, rt.score_link(empty, _link([]))])
    assert s["link_entity_recall"] == 50.0 and s["link_fact_precision"] == round(100 * 5 / 7, 2)
    assert s["link_attr_f1"] == round(100 * 2 * 1 / (2 * 1 + 1 + 0 + 1), 2)  # missed: no attributes, one gold
    assert s["link_abstain"] == 100.0 and s["n_departments"] == 2


def test_real_question_figures_on_the_tiny_kb(kb, tmp_path):
    res = ev.run("retrieval", REALQ, out_dir=tmp_path / "run", kb=kb, progress=False)
    scores = res["scores"]
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text(
        encoding="utf-8").splitlines())}
    assert rows["r01"]["departments"][0] == "呼吸内科" and rows["r01"]["department_hit3"] is True
    assert rows["r03"]["departments"][0] == "儿科"  # a child's question: 儿科 first
    assert rows["r02"]["link_entity_hit"] is True  # through also_ok: the product the linker found
    assert rows["r04"]["link_abstained"] is True and rows["r06"]["link_abstained"] is True
    with_entities = [r for r in rows.values() if r["link_entity_hit"] is not None]
    assert scores["link_entity_recall"] == round(100 * sum(r["link_entity_hit"] for r in with_entities)
                                                 / len(with_entities), 2)
    assert scores["department_hit3"] == 100.0 and scores["n_departments"] == 2
    assert set(res["details"]["by_split"]) == {"tune", "held"}
    high = ev.run("retrieval", REALQ, out_dir=tmp_path / "high", kb=kb, progress=False, confidence="high",
                  split="held")
    assert high["data"]["n_evaluated"] == 2 and high["scores"]["link_abstain"] == 100.0


def test_cli_prints_the_real_question_figures(kb, tmp_path, capsys):
    assert main(["eval", "--task", "retrieval", "--data", str(REALQ), "--kb", str(kb.path), "--out",
                 str(tmp_path / "cli"), "--confidence", "high", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for key in ("link_entity_recall", "link_fact_precision", "link_attr_f1", "link_abstain", "department_hit3"):
        assert key in printed
    res = json.loads((tmp_path / "cli" / "results.json").read_text(encoding="utf-8"))
    assert res["data"]["n_evaluated"] == 4 and res["scores"]["department_hit3"] == 100.0


# ---------------------------------------------------------------- the real KB


@pytest.mark.integration
def test_labelled_dev_questions_on_cmekg(tmp_path_factory):
    """The fixture part of the labelled set (all split=dev) against the imported CMeKG: every label is
    backed by the KB, and the task scores every question."""
    db = tmp_path_factory.mktemp("cmekg") / "kb.sqlite"
    assert main(["kb", "import", "--db", str(db), "--json"]) == 0
    from qihuang.kb import KnowledgeBase

    kb = KnowledgeBase.open(db)
    records = [json.loads(x) for x in CMEKG_DEV.read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 40 and {r["split"] for r in records} == {"dev"}
    assert [p for r in records for p in rt.label_problems(kb, r)] == []
    res = ev.run("retrieval", CMEKG_DEV, out_dir=tmp_path_factory.mktemp("run"), kb=kb, progress=False)
    assert res["data"]["n_evaluated"] == len(records) and res["n_skipped"] == 0
    assert res["scores"]["n_not_in_kb"] == sum(not r["entities"] for r in records)
    assert res["scores"]["entity_acc1"] is not None and res["scores"]["abstain_recall"] is not None
