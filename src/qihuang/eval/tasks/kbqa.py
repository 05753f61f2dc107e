"""``kbqa``: knowledge-base question answering on the test split of ``qihuang data build``.

Gold values of a record (its ``knowledge`` triples ``[subject, relation, object]``):

* ``kind == "single"`` (and records without a kind): the distinct objects of the triples.
* ``kind == "scenario"`` (symptoms -> which disease?): the distinct subjects of the triples,
  i.e. the diseases whose facts the scenario was built from; when there are no triples,
  the record's ``entity`` field split on ``,``/``、``.
* ``kind == "dialogue"``: the objects that the reference answer of the last turn mentions
  (earlier turns were answered in the history); all objects when it mentions none.

Per answer: fact recall = hits / gold values, where a value counts as hit when it, or one of
its KB aliases (when a KB is given), occurs in the answer after normalization (full/half
width, traditional -> simplified, case, punctuation and spaces removed). QiZhen's criteria:
at least one value hit, at least 1/2 hit, at least 2/3 hit.

Hallucination and wrong attributes: the answer's claims are checked by the same
:func:`qihuang.answer.verify.verify` that checks answers at answer time (the same linker, noise
rule and presentation rule). The facts checked against are the gold knowledge of the record, the
KB's values of (its entity, the asked attribute) (for a scenario: the departments of its gold
diseases), and, for a grounded answer, the facts that were
in its prompt (its citations). ``hallucination_rate`` is the share of answers with at least one
``unsupported`` claim (a KB entity in none of those facts), ``wrong_attribute_rate`` the share
with at least one ``wrong_attribute`` claim (a value of the facts, or of the cited entities, under
another attribute than the sentence presents it as: an adverse reaction listed as an indication).
Both score the text the user was shown (after the answering policy); ``draft_hallucination_rate``
and ``draft_wrong_attribute_rate`` score the model's first draft. Names the KB has only as a value
of fewer than ``min_support`` (3) triples are noise (set it to 1 for a small KB). Needs a KB.
Abstained answers (no facts, the model not called) are counted as ``abstained_rate``.

BLEU-4 and ROUGE-1/2/L against the reference ``output`` are reported as well.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qihuang.errors import InputError
from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption, base_row, scored_text
from qihuang.eval.dataio import Row, data_files, iter_rows
from qihuang.eval.metrics import hits, length_stats, mean, norm, pct, sentence_scores, text_overlap_scores
from qihuang.kb.types import Fact
from qihuang.records import to_prompt

_SPLIT = re.compile(r"[,，、;；]")


def _dedupe(items) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        item = (item or "").strip()
        if item and item not in seen:
            seen[item] = None
    return list(seen)


def gold_values(record: dict) -> list[str]:
    """The gold values of a dataset record (see the module docstring)."""
    triples = [t for t in record.get("knowledge") or [] if isinstance(t, (list, tuple)) and len(t) >= 3]
    kind = record.get("kind") or "single"
    if kind == "scenario":
        gold = _dedupe(str(t[0]) for t in triples)
        return gold or _dedupe(_SPLIT.split(str(record.get("entity") or "")))
    gold = _dedupe(str(t[2]) for t in triples)
    if kind == "dialogue":
        ref = norm(record.get("output") or "")
        mentioned = [g for g in gold if norm(g) and norm(g) in ref]
        return mentioned or gold
    return gold


def _resolve_path(path: Path) -> Path:
    if path.is_dir() and (path / "test.jsonl").is_file():
        return path / "test.jsonl"
    return path


class KBQATask(Task):
    """Fact recall, hallucinated KB entities and QiZhen's criteria on KB-grounded questions."""

    name = "kbqa"
    description = "fact recall / hallucination / QiZhen criteria on `qihuang data build` test splits"
    headline = ("fact_recall", "qizhen_any", "qizhen_half", "qizhen_two_thirds",
                "hallucination_rate", "wrong_attribute_rate", "hallucinated_entities_mean",
                "draft_hallucination_rate", "draft_wrong_attribute_rate", "abstained_rate", "bleu4", "rougeL")
    options = (TaskOption("min_support", int, 3, "a name that is only a KB value, in fewer triples than this, is "
                          "not counted as a hallucinated entity (KB extraction noise); 1 counts every name"),)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._kb_cache: dict[str, Any] = {}

    def load(self, path: Path) -> Dataset:
        examples, skipped = [], []
        for file in data_files(_resolve_path(Path(path)), (".jsonl", ".json")):
            for item in iter_rows(file):
                if item.error:
                    skipped.append(Skipped(str(file), item.line, item.error))
                elif (ex := self._example(file, item, skipped)) is not None:
                    examples.append(ex)
        return Dataset(examples, skipped)

    def _example(self, file: Path, item: Row, skipped: list[Skipped]) -> Example | None:
        """The example of one record (the question read by :func:`qihuang.records.to_prompt`)."""
        row, line = item.row, item.line
        try:
            prompt = to_prompt(row)
        except InputError as exc:
            skipped.append(Skipped(str(file), line, str(exc)))
            return None
        if not isinstance(row.get("knowledge") or [], list):
            skipped.append(Skipped(str(file), line, "field 'knowledge': expected a list of [s, r, o] triples"))
            return None
        gold = gold_values(row)
        if not gold:
            skipped.append(Skipped(str(file), line, "field 'knowledge': no gold values"))
            return None
        return Example(
            id=str(row.get("id") or item.key), question=prompt.question, reference=prompt.reference,
            history=prompt.history, subject=row.get("attribute"), source=str(file), line=line,
            fields={"gold": gold, "knowledge": row.get("knowledge") or [], "entity": row.get("entity") or "",
                    "kind": row.get("kind") or "single"},
        )

    # ------------------------------------------------------------ scoring

    def _entity(self, kb: Any, name: str) -> Any:
        if name not in self._kb_cache:
            self._kb_cache[name] = kb.show(name) if name else None
        return self._kb_cache[name]

    def _variants(self, kb: Any, value: str) -> list[str]:
        """The value and, with a KB, the entity's canonical name and aliases."""
        ent = self._entity(kb, value) if kb is not None else None
        if ent is None:
            return [value]
        return _dedupe([value, ent.name, *ent.aliases])

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        """Answer through the Answerer; the rows keep the citations, draft and abstention for scoring."""
        prompts = [self.prompt(ex) for ex in batch]
        answers = ctx.answer_batch(prompts, [self.history(ex) or None for ex in batch])
        rows = []
        for ex, prompt, ans in zip(batch, prompts, answers, strict=True):
            row = base_row(ex, prompt, ans)
            if getattr(ans, "draft", None):
                row["draft"] = ans.draft
            row["abstained"] = bool(getattr(ans, "abstained", False))
            row.update(self.score_example(ex, scored_text(row), ctx, row))
            rows.append(row)
        return rows

    def score_example(self, example: Example, prediction: str, ctx: RunContext, row: dict | None = None) -> dict:
        kb = ctx.kb
        gold = example.fields["gold"]
        hit_flags = [any(hits(prediction, self._variants(kb, g))) for g in gold]
        n_hit = sum(hit_flags)
        recall = n_hit / len(gold)
        out: dict[str, Any] = {
            "gold": gold, "hit": [g for g, h in zip(gold, hit_flags, strict=True) if h],
            "fact_recall": round(recall, 4), "kind": example.fields["kind"],
            "qizhen_any": n_hit >= 1, "qizhen_half": recall >= 1 / 2, "qizhen_two_thirds": recall >= 2 / 3 - 1e-9,
        }
        if kb is not None:
            citations = (row or {}).get("citations") or []
            shown = self._verify(kb, example, prediction, citations)
            out["hallucinated"] = _dedupe(c.name for c in shown.claims if c.status == "unsupported")
            out["wrong_attribute"] = _dedupe(c.name for c in shown.claims if c.status == "wrong_attribute")
            draft = (row or {}).get("draft")
            if draft:
                first = self._verify(kb, example, draft, citations)
                out["draft_hallucinated"] = _dedupe(c.name for c in first.claims if c.status == "unsupported")
                out["draft_wrong_attribute"] = _dedupe(c.name for c in first.claims if c.status == "wrong_attribute")
        if example.reference:
            out.update(sentence_scores(prediction, example.reference))
        return out

    @staticmethod
    def _kb_truth(kb: Any, example: Example) -> list[Any]:
        """Every KB fact of the asked entity for the asked attribute(s): the complete gold facts, of
        which a reference answer shows only the first few. Naming one of them is not a hallucination."""
        if example.fields["kind"] == "scenario":  # which disease, and which department to see
            return [f for d in example.fields["gold"] for f in kb.facts(d, ["department"])]
        attrs = [a for a in str(example.subject or "").split(",") if a in getattr(kb, "attributes", dict)()]
        if not attrs or not example.fields["entity"]:
            return []
        return kb.facts(example.fields["entity"], attrs)

    def _facts(self, kb: Any, example: Example, citations: list[dict]) -> list[Fact]:
        """Gold triples (attribute from the KB schema), the KB truth of (entity, attribute), the citations."""
        schema = getattr(kb, "schema", None)
        facts = [Fact(str(t[0]), schema.attribute_of(str(t[1])) if schema else str(t[1]), str(t[1]), str(t[2]))
                 for t in example.fields["knowledge"]]
        facts += self._kb_truth(kb, example)
        facts += [Fact(c["entity"], c["attribute"], c.get("relation", ""), v)
                  for c in citations if isinstance(c, dict) for v in c.get("values", [])]
        return facts

    def _verify(self, kb: Any, example: Example, text: str, citations: list[dict]):
        from qihuang.answer.verify import question_names, verify

        context = [example.question, *(turn for pair in example.history for turn in pair)]
        names = question_names(kb, context)
        if example.fields["entity"]:
            names |= {n.strip() for n in _SPLIT.split(example.fields["entity"]) if n.strip()}
        attrs = [a for a in str(example.subject or "").split(",") if a]
        return verify(kb, text, self._facts(kb, example, citations), attrs, exclude=names,
                      min_support=self.config["min_support"])

    def aggregate(self, rows: list[dict]) -> dict:
        scores: dict[str, Any] = {"n": len(rows),
                                  "fact_recall": pct(r["fact_recall"] for r in rows),
                                  "qizhen_any": pct(r["qizhen_any"] for r in rows),
                                  "qizhen_half": pct(r["qizhen_half"] for r in rows),
                                  "qizhen_two_thirds": pct(r["qizhen_two_thirds"] for r in rows)}
        if rows and all("hallucinated" in r for r in rows):
            scores["hallucination_rate"] = pct(bool(r["hallucinated"]) for r in rows)
            scores["wrong_attribute_rate"] = pct(bool(r.get("wrong_attribute")) for r in rows)
            counts = [len(r["hallucinated"]) for r in rows]
            scores["hallucinated_entities_mean"] = round(mean(counts), 4)
            scores["draft_hallucination_rate"] = pct(bool(r.get("draft_hallucinated", r["hallucinated"]))
                                                     for r in rows)
            scores["draft_wrong_attribute_rate"] = pct(bool(r.get("draft_wrong_attribute", r.get("wrong_attribute")))
                                                       for r in rows)
        if rows and any("abstained" in r for r in rows):
            scores["abstained_rate"] = pct(bool(r.get("abstained")) for r in rows)
        scores.update(text_overlap_scores(rows))
        scores.update(length_stats([scored_text(r) for r in rows], "prediction"))
        if rows and any("grounded" in r for r in rows):
            scores["grounded_rate"] = pct(r.get("grounded", False) for r in rows)
        details = {"by_kind": _breakdown(rows, "kind"), "by_attribute": _breakdown(rows, "subject")}
        notes = [] if "hallucination_rate" in scores else ["no knowledge base given: aliases not counted, "
                                                           "hallucination not measured"]
        return {"scores": scores, "details": details, "notes": notes}


def _breakdown(rows: list[dict], key: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key) or "?"), []).append(r)
    return {k: {"n": len(v), "fact_recall": pct(r["fact_recall"] for r in v),
                "qizhen_any": pct(r["qizhen_any"] for r in v)} for k, v in sorted(groups.items())}
