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

Hallucinated entities: KB entities found in the answer (``kb.find_entities``) that are not
named by the question, not the record's entity, not a subject or object of its knowledge
triples, not an alias of those, and not part of one of those strings. A name found across a
word boundary (体检 inside 具体检查: jieba cuts 具体/检查) is not a mention, and neither is a name
that is only ever a value in fewer than ``min_support`` (3) triples (``kb.rare_values``: in CMeKG
mostly extraction noise such as 结合, 常见的, 有疼痛, 哮喘等; set it to 1 for a small KB).
Reported as the share
of answers with at least one, and the mean count per answer. Needs a KB.

BLEU-4 and ROUGE-1/2/L against the reference ``output`` are reported as well.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption, scored_text
from qihuang.eval.dataio import data_files, first, read_rows
from qihuang.eval.metrics import (hits, length_stats, mean, norm, pct, sentence_scores, text_overlap_scores,
                                  word_boundaries)

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
                "hallucination_rate", "hallucinated_entities_mean", "bleu4", "rougeL")
    options = (TaskOption("min_support", int, 3, "a name that is only a KB value, in fewer triples than this, is "
                          "not counted as a hallucinated entity (KB extraction noise); 1 counts every name"),)

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._kb_cache: dict[str, Any] = {}

    def load(self, path: Path) -> Dataset:
        examples, skipped = [], []
        for file in data_files(_resolve_path(Path(path)), (".jsonl", ".json")):
            for line, row, error in read_rows(file):
                if error:
                    skipped.append(Skipped(str(file), line, error))
                elif (ex := self._example(file, line, row, skipped)) is not None:
                    examples.append(ex)
        return Dataset(examples, skipped)

    def _example(self, file: Path, line: int, row: dict, skipped: list[Skipped]) -> Example | None:
        question = str(first(row, "instruction", "question", default="")).strip()
        extra = str(row.get("input") or "").strip()
        if extra:
            question = f"{question}\n{extra}" if question else extra
        if not question:
            skipped.append(Skipped(str(file), line, "field 'instruction': missing or empty"))
            return None
        if not isinstance(row.get("knowledge") or [], list):
            skipped.append(Skipped(str(file), line, "field 'knowledge': expected a list of [s, r, o] triples"))
            return None
        gold = gold_values(row)
        if not gold:
            skipped.append(Skipped(str(file), line, "field 'knowledge': no gold values"))
            return None
        history = [list(map(str, pair[:2])) for pair in row.get("history") or [] if len(pair) >= 2]
        return Example(
            id=str(row.get("id") or f"{file.name}:{line}"), question=question, reference=row.get("output"),
            history=history, subject=row.get("attribute"), source=str(file), line=line,
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

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        kb = ctx.kb
        gold = example.fields["gold"]
        hit_flags = [any(hits(prediction, self._variants(kb, g))) for g in gold]
        n_hit = sum(hit_flags)
        recall = n_hit / len(gold)
        row: dict[str, Any] = {
            "gold": gold, "hit": [g for g, h in zip(gold, hit_flags, strict=True) if h],
            "fact_recall": round(recall, 4), "kind": example.fields["kind"],
            "qizhen_any": n_hit >= 1, "qizhen_half": recall >= 1 / 2, "qizhen_two_thirds": recall >= 2 / 3 - 1e-9,
        }
        if kb is not None:
            row["hallucinated"] = self._hallucinated(kb, example, prediction)
        if example.reference:
            row.update(sentence_scores(prediction, example.reference))
        return row

    @staticmethod
    def _kb_truth(kb: Any, example: Example) -> list[str]:
        """Every KB value of the asked entity for the asked attribute(s): the complete gold facts, of
        which a reference answer shows only the first few. Naming one of them is not a hallucination."""
        attrs = [a for a in str(example.subject or "").split(",") if a in getattr(kb, "attributes", dict)()]
        if not attrs or not example.fields["entity"]:
            return []
        return [f.value for f in kb.facts(example.fields["entity"], attrs)]

    def _hallucinated(self, kb: Any, example: Example, prediction: str) -> list[str]:
        context = [example.question, *(turn for pair in example.history for turn in pair)]
        allowed_names = {m.name for text in context for m in kb.find_entities(text)}
        strings = [example.fields["entity"], *example.fields["gold"]]
        strings += [str(x) for t in example.fields["knowledge"] for x in (t[0], t[2])]
        strings += self._kb_truth(kb, example)
        allowed_norm = []
        for s in _dedupe(strings):
            for v in self._variants(kb, s):
                allowed_norm.append(norm(v))
                ent = self._entity(kb, v)
                if ent is not None:
                    allowed_names.add(ent.name)
        out = []
        cuts = word_boundaries(prediction)
        support = self.config["min_support"]
        rare = kb.rare_values(support) if support > 1 and hasattr(kb, "rare_values") else frozenset()
        for m in kb.find_entities(prediction):
            if m.name in allowed_names or m.name in rare or m.start not in cuts or m.end not in cuts:
                continue
            forms = {norm(m.name), norm(m.surface)}
            if any(f and f in s for f in forms for s in allowed_norm):
                continue
            out.append(m.name)
        return _dedupe(out)

    def aggregate(self, rows: list[dict]) -> dict:
        scores: dict[str, Any] = {"n": len(rows),
                                  "fact_recall": pct(r["fact_recall"] for r in rows),
                                  "qizhen_any": pct(r["qizhen_any"] for r in rows),
                                  "qizhen_half": pct(r["qizhen_half"] for r in rows),
                                  "qizhen_two_thirds": pct(r["qizhen_two_thirds"] for r in rows)}
        if rows and all("hallucinated" in r for r in rows):
            scores["hallucination_rate"] = pct(bool(r["hallucinated"]) for r in rows)
            counts = [len(r["hallucinated"]) for r in rows]
            scores["hallucinated_entities_mean"] = round(mean(counts), 4)
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
