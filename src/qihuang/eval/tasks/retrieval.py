"""``retrieval``: the retrieval stage measured on its own, against labelled questions (no model).

Each record (JSON lines) holds ``question``, gold ``entities`` (KB names; an empty list means the KB
does not have what is asked, so nothing must be retrieved), gold ``attributes`` (canonical keys of
``resources/kb_schema.yaml``), and optionally ``kind`` (a style label), ``negated`` (names the question
negates), ``accept`` ({gold name: [other KB names that count as that entity]}, e.g. the products
布洛芬片, 布洛芬缓释胶囊 for the generic 布洛芬), ``history`` ([[question, answer], ...]) and ``split``
(``dev`` or ``heldout``). Every name is read through ``accept`` first (an accepted name *is* its gold entity).

Every question goes through :func:`qihuang.answer.grounding.ground`, the routine answering uses, so
what is measured is what the model is shown. Definitions:

* **Question entities** (the ranked list): for each retrieved fact in order, the entity it was
  reached from (``Fact.anchor`` when ``Fact.via`` is not ``direct``, else ``Fact.entity``), then the
  grounding's entities; each once. A reverse question (布洛芬能治什么病) is thus about 布洛芬 when its
  facts are anchored there, a symptom question about its symptoms. When the grounding carries
  ``question_entities`` (a list of names), those come first.
* **entity_acc1**: the first question entity is a gold entity; **entity_recall3**: share of the gold
  entities among the first three (out of ``min(3, len(gold))``); both over questions with gold entities.
* **attr_precision / attr_recall / attr_f1**: micro-averaged over all questions, detected attributes
  (``Grounding.attributes`` = ``link.attributes``) against the gold ones.
* A fact **belongs** to the gold pair (e, a) when e is a gold entity, a a gold attribute and either
  (direct) ``fact.entity == e`` and ``fact.attribute == a``; or (looked up) ``fact.via`` is not direct,
  e is one of ``fact.anchor`` (a name, or names joined by 、) and ``fact.attribute == a`` (two-hop, symptom candidates) or the fact points at
  an anchor (``fact.value == e``) and ``Schema.inverse[fact.attribute] == a`` (reverse: 偏头痛 -drugs->
  布洛芬 answers 布洛芬's indications). The evidence of a symptom lookup (``via == "symptom"``, a
  ``symptoms`` fact whose value is a gold entity) belongs as well.
* **fact_recall**: per question with gold entities and attributes, the share of gold pairs
  (every gold entity x every gold attribute) with at least one belonging fact; averaged.
* **citation_precision**: retrieved facts that belong / retrieved facts, micro-averaged over the
  questions with gold entities (what a not-in-KB question retrieves is counted by the abstain scores).
* **abstain_recall**: not-in-KB questions (no gold entity) that retrieved no fact / not-in-KB
  questions; **abstain_precision**: not-in-KB questions among those that retrieved no fact.
* **negated_hit_rate**: questions with ``negated`` names where one of them is a question entity.
* **questions_per_s**: questions / seconds spent inside ``ground`` (one process, one thread).

Scores are also broken down per ``kind`` and per ``split`` (``details``).

**Real-question figures** (the ``link_*`` scores and ``department_hit3``): the definitions of the
real-question scorer the project is judged by, computed on ``kb.link(question)`` itself (unbounded, as
that scorer calls it), so that users can score retrieval on their own labelled questions. Records may
also come in that set's shape: ``text`` for ``question``, ``also_ok`` (other KB names equally right for
the question), ``attributes`` with ``"none"`` when nothing is asked, ``department_gold`` (hospital
departments a triage nurse would choose), ``confidence`` (``high`` or ``low``; a record without one counts
as high) and ``split`` ``tune`` / ``held``. For the grounding scores above an ``also_ok`` name counts as the
first gold entity.

* **link_entity_recall**: questions with gold entities where a gold, ``also_ok`` or accepted name is among
  the linked entities or the subjects of the returned facts;
* **link_fact_precision**: over those questions, the share of returned facts whose subject, or one of the
  question entities it was reached from (``Fact.anchor``, split on 、), is such a name;
* **link_attr_f1**: micro-F1 of ``LinkResult.attributes`` against the gold attributes, over those questions;
* **link_abstain**: questions without gold entities that return no fact;
* **department_hit3**: questions with ``department_gold`` where one of the first three distinct department
  values among the returned facts is the same department as a gold one (:func:`same_department`).
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

from qihuang.errors import ConfigError
from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption
from qihuang.eval.dataio import data_files, iter_rows

SPLITS = ("dev", "heldout", "tune", "held")
CONFIDENCES = ("high", "low")
VIA_DIRECT = "direct"
_SUMMED = ("attr_tp", "attr_fp", "attr_fn", "n_facts", "n_belonging")
# department wordings scored as one department (hospital and KB names of it), as the real-question scorer
# counts them; besides, a name that contains the other, and any name with 儿 for 儿科
DEPARTMENT_GROUPS = (
    ("心血管内科", "心内科", "心血管科"), ("肾脏内科", "肾内科", "肾脏科"), ("内分泌代谢科", "内分泌科"),
    ("呼吸内科", "呼吸科"), ("消化内科", "消化科"), ("神经内科", "神经科"), ("普外科", "普通外科", "基本外科", "外科"),
    ("临床心理科", "精神科", "精神心理科", "心理科"), ("全科医学科", "内科", "GP", "全科"), ("血液内科", "血液科"),
    ("心胸外科", "胸外科", "心外科"), ("耳鼻喉科", "耳鼻咽喉科", "耳鼻咽喉头颈外科", "耳鼻咽喉—头颈外科"),
    ("肛肠外科", "肛肠科"), ("整形外科", "烧伤整形科"), ("感染科", "传染科", "感染和临床微生物科"), ("急诊科", "急诊室"),
    ("妇科", "妇产科"), ("产科", "妇产科"), ("男科", "泌尿外科"))


def _department_forms(name: str) -> set[str]:
    forms = {name}.union(*(g for g in DEPARTMENT_GROUPS if name in g))
    return forms | ({"儿科"} if "儿" in name else set())


def same_department(a: str, b: str) -> bool:
    """Whether two department names count as the same department (see :data:`DEPARTMENT_GROUPS`)."""
    a, b = a.strip(), b.strip()
    return bool(a and b) and (bool(_department_forms(a) & _department_forms(b)) or a in b or b in a)


def _names(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"field {field!r}: expected a list of non-empty strings")
    return list(dict.fromkeys(v.strip() for v in value))


def parse_record(row: dict) -> dict:
    """The validated gold labels of one record (raises ValueError naming the field)."""
    question = row.get("question", row.get("text"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("field 'question' (or 'text'): missing or empty")
    if "entities" not in row or "attributes" not in row:
        raise ValueError("fields 'entities' and 'attributes' are required (an empty list is allowed)")
    split = row.get("split") or "dev"
    if split not in SPLITS:
        raise ValueError(f"field 'split': {split!r} is not one of {list(SPLITS)}")
    history = row.get("history") or []
    if not isinstance(history, list) or not all(isinstance(p, list) and len(p) == 2 for p in history):
        raise ValueError("field 'history': expected [[question, answer], ...]")
    accept = row.get("accept") or {}
    if not isinstance(accept, dict):
        raise ValueError("field 'accept': expected {gold entity: [names], ...}")
    confidence = row.get("confidence") or "high"
    if confidence not in CONFIDENCES:
        raise ValueError(f"field 'confidence': {confidence!r} is not one of {list(CONFIDENCES)}")
    entities = _names(row["entities"], "entities")
    canon: dict[str, str] = {}
    for gold, alts in accept.items():
        if gold not in entities:
            raise ValueError(f"field 'accept': {gold!r} is not one of the gold entities")
        for alt in _names(alts, f"accept.{gold}"):
            canon.setdefault(alt, gold)
    also_ok = [n for n in _names(row.get("also_ok"), "also_ok") if n not in entities]
    for alt in also_ok if entities else ():
        canon.setdefault(alt, entities[0])
    return {"question": question.strip(), "entities": entities, "canon": canon, "also_ok": also_ok,
            "attributes": [a for a in _names(row["attributes"], "attributes") if a != "none"],
            "kind": str(row.get("kind") or "plain"), "negated": _names(row.get("negated"), "negated"),
            "split": split, "confidence": confidence, "history": [[str(q), str(a)] for q, a in history],
            "department_gold": _names(row.get("department_gold"), "department_gold")}


def _via(fact: Any) -> str:
    return getattr(fact, "via", None) or VIA_DIRECT


def fact_pairs(fact: Any, entities: list[str], attributes: list[str], inverse: dict[str, str],
               canon: dict[str, str] | None = None) -> set[tuple[str, str]]:
    """The gold (entity, attribute) pairs ``fact`` belongs to; empty when it belongs to none (see the
    module docstring). ``canon`` maps accepted names to their gold entity."""
    canon = canon or {}
    entity = canon.get(fact.entity, fact.entity)
    if entity in entities and fact.attribute in attributes:
        return {(entity, fact.attribute)}
    via = _via(fact)
    anchors = [canon.get(a, a) for a in _anchors(fact)]
    hit = [a for a in anchors if a in entities]
    if via == VIA_DIRECT or not hit:
        return set()
    if fact.attribute in attributes:  # symptom candidates answer for all the symptoms described together
        return {(e, fact.attribute) for e in entities} if via == "symptom" else {(a, fact.attribute) for a in hit}
    value = canon.get(fact.value, fact.value)
    if value in hit and inverse.get(fact.attribute) in attributes:
        return {(value, inverse[fact.attribute])}
    if via == "symptom" and fact.attribute == "symptoms" and value in entities:
        return {(hit[0], "evidence")}
    return set()


def _anchors(fact: Any) -> list[str]:
    """The question entities a fact was reached from: ``Fact.anchor`` names one, or several joined
    by 、 (a symptom lookup is reached from all the described symptoms together)."""
    return [a for a in str(getattr(fact, "anchor", None) or "").split("、") if a]


def question_entities(grounding: Any, canon: dict[str, str] | None = None) -> list[str]:
    """The ranked entities a grounding is about (see the module docstring), accepted names read as
    their gold entity."""
    canon = canon or {}
    ranked = list(getattr(grounding, "question_entities", None) or [])
    for fact in grounding.facts:
        anchors = _anchors(fact)
        ranked.extend(anchors if anchors and _via(fact) != VIA_DIRECT else [fact.entity])
    ranked.extend(grounding.entities)
    return list(dict.fromkeys(canon.get(name, name) for name in ranked))


def score_grounding(gold: dict, grounding: Any, inverse: dict[str, str]) -> dict:
    """Per-question scores of one grounding against one record's gold labels."""
    ents, attrs, canon = gold["entities"], gold["attributes"], gold.get("canon") or {}
    ranked = question_entities(grounding, canon)
    predicted_attrs = list(dict.fromkeys(grounding.attributes))
    pairs = [fact_pairs(f, ents, attrs, inverse, canon) for f in grounding.facts]
    gold_pairs = {(e, a) for e in ents for a in attrs}
    row: dict[str, Any] = {
        "pred_entities": ranked, "pred_attributes": predicted_attrs,
        "facts": [{"entity": f.entity, "attribute": f.attribute, "relation": f.relation, "value": f.value,
                   "via": _via(f), "anchor": getattr(f, "anchor", None), "belongs": bool(p)}
                  for f, p in zip(grounding.facts, pairs, strict=True)],
        "attr_tp": len(set(predicted_attrs) & set(attrs)), "attr_fp": len(set(predicted_attrs) - set(attrs)),
        "attr_fn": len(set(attrs) - set(predicted_attrs)), "n_facts": len(pairs),
        "n_belonging": sum(bool(p) for p in pairs), "in_kb": bool(ents), "abstained": not pairs,
        "entity_acc1": None, "entity_recall3": None, "fact_recall": None, "negated_hit": None,
    }
    if ents:
        row["entity_acc1"] = bool(ranked) and ranked[0] in ents
        row["entity_recall3"] = round(len(set(ranked[:3]) & set(ents)) / min(3, len(ents)), 4)
    if gold_pairs:
        row["fact_recall"] = round(len(gold_pairs & set().union(*pairs)) / len(gold_pairs), 4)
    if gold["negated"]:
        row["negated_hit"] = bool(set(gold["negated"]) & set(ranked))
    return row


def score_link(gold: dict, link: Any) -> dict:
    """Per-question real-question figures of one ``kb.link`` result (see the module docstring)."""
    ok = {*gold["entities"], *gold.get("also_ok", ()), *(gold.get("canon") or {})}
    names = {m.name for m in link.entities}
    facts = list(link.facts)
    departments = list(dict.fromkeys(f.value for f in facts if f.attribute == "department"))[:3]
    row: dict[str, Any] = {"link_entity_hit": None, "link_facts": 0, "link_facts_ok": 0, "link_attr": (0, 0, 0),
                           "link_abstained": None, "departments": departments, "department_hit3": None}
    if gold["entities"]:
        gold_attrs, asked = set(gold["attributes"]), set(link.attributes or [])
        row["link_entity_hit"] = bool(ok & (names | {f.entity for f in facts}))
        row["link_facts"] = len(facts)
        row["link_facts_ok"] = sum(f.entity in ok or bool(set(str(f.anchor or "").split("、")) & ok) for f in facts)
        row["link_attr"] = (len(gold_attrs & asked), len(asked - gold_attrs), len(gold_attrs - asked))
    else:
        row["link_abstained"] = not facts
    if gold.get("department_gold"):
        row["department_hit3"] = any(same_department(d, g) for d in departments for g in gold["department_gold"])
    return row


def summarize_link(rows: list[dict]) -> dict[str, Any]:
    """The real-question figures of a set of scored rows (percentages; None when nothing to count)."""
    with_entities = [r for r in rows if r["link_entity_hit"] is not None]
    abstain = [r["link_abstained"] for r in rows if r["link_abstained"] is not None]
    departments = [r["department_hit3"] for r in rows if r["department_hit3"] is not None]
    tp, fp, fn = (sum(r["link_attr"][i] for r in with_entities) for i in range(3))
    return {
        "link_entity_recall": _ratio(sum(r["link_entity_hit"] for r in with_entities), len(with_entities)),
        "link_fact_precision": _ratio(sum(r["link_facts_ok"] for r in with_entities),
                                      sum(r["link_facts"] for r in with_entities)),
        "link_attr_f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "link_abstain": _ratio(sum(abstain), len(abstain)),
        "department_hit3": _ratio(sum(departments), len(departments)),
        "n_link_entities": len(with_entities), "n_link_abstain": len(abstain), "n_departments": len(departments),
    }


_SUPPORT = {  # kind -> SQL: does the KB back (name, attribute) through a lookup rather than own facts?
    "reverse": "SELECT 1 FROM triples WHERE value=? AND attribute='drugs' AND ?='indications'",
    "symptom": "SELECT 1 FROM triples s JOIN triples t ON t.subject_id=s.subject_id "
               "WHERE s.value=? AND s.attribute='symptoms' AND t.attribute=?",
    "two_hop": "SELECT 1 FROM triples d JOIN entities e ON e.id=d.subject_id JOIN entities x ON x.name=d.value "
               "JOIN triples t ON t.subject_id=x.id WHERE e.name=? AND d.attribute='drugs' AND t.attribute=?",
}


def label_problems(kb: Any, record: dict) -> list[str]:
    """What is wrong with one labelled record, read from the KB's tables (never from the linker).

    Every gold, accepted and negated name must be a KB entity; every gold (entity, attribute) must be
    backed by triples: the entity's (or an accepted name's) own facts, or for ``reverse`` records the
    diseases that list the drug under drugs (answering indications), for ``symptom`` records a disease
    that has the symptom and the attribute, for ``two_hop`` records a drug of the disease that has it."""
    try:
        gold = parse_record(record)
    except ValueError as exc:
        return [str(exc)]
    conn = kb.conn

    def one(sql: str, *args: str) -> bool:
        return conn.execute(sql, args).fetchone() is not None

    alts: dict[str, list[str]] = {}
    for alt, name in gold["canon"].items():
        alts.setdefault(name, []).append(alt)
    out = [f"{n!r} is not a KB entity" for n in [*gold["entities"], *gold["negated"], *gold["canon"]]
           if not one("SELECT 1 FROM entities WHERE name=?", n)]
    for e in gold["entities"]:
        for a in gold["attributes"]:
            names = [e, *alts.get(e, [])]
            own = any(one("SELECT 1 FROM triples t JOIN entities x ON x.id=t.subject_id WHERE x.name=? "
                          "AND t.attribute=?", n, a) for n in names)
            looked_up = gold["kind"] in _SUPPORT and one(_SUPPORT[gold["kind"]], e, a)
            if not (own or looked_up):
                out.append(f"no {a} facts for {e!r}")
    if gold["entities"] and not gold["attributes"]:
        out.append("a question the KB has must name the attributes asked")
    return out


def _ratio(num: float, den: float) -> float | None:
    return round(100.0 * num / den, 2) if den else None


def _mean_pct(values: list) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return round(100.0 * sum(kept) / len(kept), 2) if kept else None


def summarize(rows: list[dict]) -> dict[str, Any]:
    """The scores of a set of scored rows (all questions, one kind or one split)."""
    tot = {k: sum(r[k] for r in rows) for k in _SUMMED}
    in_kb = [r for r in rows if r["in_kb"]]
    out_kb = [r for r in rows if not r["in_kb"]]
    abstained = [r for r in rows if r["abstained"]]
    p = _ratio(tot["attr_tp"], tot["attr_tp"] + tot["attr_fp"])
    r = _ratio(tot["attr_tp"], tot["attr_tp"] + tot["attr_fn"])
    f1 = round(2 * p * r / (p + r), 2) if p and r else (0.0 if p is not None and r is not None else None)
    seconds = sum(r["seconds"] for r in rows)
    return {
        "n": len(rows), "n_in_kb": len(in_kb), "n_not_in_kb": len(out_kb),
        "entity_acc1": _mean_pct([r["entity_acc1"] for r in in_kb]),
        "entity_recall3": _mean_pct([r["entity_recall3"] for r in in_kb]),
        "attr_precision": p, "attr_recall": r, "attr_f1": f1,
        "fact_recall": _mean_pct([r["fact_recall"] for r in in_kb]),
        "citation_precision": _ratio(sum(r["n_belonging"] for r in in_kb), sum(r["n_facts"] for r in in_kb)),
        "abstain_recall": _ratio(sum(r["abstained"] for r in out_kb), len(out_kb)),
        "abstain_precision": _ratio(sum(not r["in_kb"] for r in abstained), len(abstained)),
        "retrieved_rate": _ratio(sum(not r["abstained"] for r in rows), len(rows)),
        "negated_hit_rate": _mean_pct([r["negated_hit"] for r in rows]),
        "facts_mean": round(tot["n_facts"] / len(rows), 2) if rows else None,
        "questions_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
    }


def _accepts_history(fn: Any) -> bool:
    try:
        return "history" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class RetrievalTask(Task):
    """Entity, attribute, fact and abstain scores of ``ground`` on labelled questions; needs only a KB."""

    name = "retrieval"
    description = "entity acc@1/recall@3, attribute F1, fact recall, citation precision, abstain of retrieval"
    headline = ("entity_acc1", "entity_recall3", "attr_f1", "fact_recall", "citation_precision",
                "abstain_recall", "abstain_precision", "link_entity_recall", "link_fact_precision", "link_attr_f1",
                "link_abstain", "department_hit3", "questions_per_s")
    options = (TaskOption("split", str, "all", "score only the questions of this split",
                          choices=("all", *SPLITS)),
               TaskOption("confidence", str, "all", "score only the questions labelled with this confidence "
                          "(a record without one counts as high)", choices=("all", *CONFIDENCES)))

    def load(self, path: Path) -> Dataset:
        examples, skipped = [], []
        wanted = self.config["split"]
        for file in data_files(Path(path), (".jsonl", ".json")):
            for line, row, error, key in iter_rows(file):
                if error:
                    skipped.append(Skipped(str(file), line, error))
                    continue
                try:
                    gold = parse_record(row)
                except ValueError as exc:
                    skipped.append(Skipped(str(file), line, str(exc)))
                    continue
                if wanted != "all" and gold["split"] != wanted:
                    continue
                if self.config["confidence"] not in ("all", gold["confidence"]):
                    continue
                examples.append(Example(id=str(row.get("id") or key), question=gold["question"],
                                        history=gold["history"], subject=gold["kind"], fields=gold,
                                        source=str(file), line=line))
        return Dataset(examples, skipped)

    def needs_model(self, examples: list[Example]) -> bool:
        return False

    def prepare(self, dataset: Dataset, ctx: RunContext) -> None:
        if ctx.kb is None:
            raise ConfigError("the retrieval task needs a knowledge base (CLI: --kb, or a default KB)")
        from qihuang.answer.grounding import ground

        self._ground = ground
        self._with_history = _accepts_history(ground)
        self._inverse = dict(getattr(ctx.kb.schema, "inverse", None) or {})
        ctx.kb.link("预热")  # build the linker outside the timed calls

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        return [self.score_example(ex, "", ctx) for ex in batch]

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        # ground() takes the earlier user turns, as answering passes them
        turns = [question for question, _answer in example.history]
        kwargs = {"history": turns} if self._with_history and turns else {}
        t0 = time.perf_counter()
        grounding = self._ground(ctx.kb, example.question, **kwargs)
        seconds = time.perf_counter() - t0
        gold = example.fields
        row = {"id": example.id, "question": example.question, "kind": gold["kind"], "split": gold["split"],
               "gold_entities": gold["entities"], "gold_attributes": gold["attributes"],
               "accepted": sorted(gold["canon"]),
               "negated": gold["negated"], "history_used": bool(kwargs)}
        row.update(score_grounding(gold, grounding, self._inverse))
        row["seconds"] = round(seconds, 6)
        row["department_gold"] = gold["department_gold"]
        row.update(score_link(gold, ctx.kb.link(example.question, history=turns or None)))
        return row

    def aggregate(self, rows: list[dict]) -> dict:
        both = lambda part: summarize(part) | summarize_link(part)  # noqa: E731
        scores = both(rows)
        by_kind = {k: both([r for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows})}
        by_split = {s: both([r for r in rows if r["split"] == s]) for s in SPLITS if any(r["split"] == s for r in rows)}
        notes = []
        if not getattr(self, "_with_history", True) and any(r["kind"] == "followup" for r in rows):
            notes.append("ground() takes no history: follow-up questions were grounded on their own")
        return {"scores": scores, "details": {"by_kind": by_kind, "by_split": by_split}, "notes": notes}
