"""Making preference pairs from the knowledge base (``qihuang data prefs``): a KB-faithful answer is
*chosen*, the same answer made wrong is *rejected*, and every pair records how it was made wrong.

Corruption kinds (``corruption`` field of each record; details in ``corruption_detail``):

- ``swap``: about half of the stated values (drugs, departments, symptoms …) are replaced by
  values the KB gives for *other* entities of the same type and attribute; the answer pattern
  is unchanged, only the facts are wrong.
- ``omission``: about half of the stated values are left out (the list reads as complete).
- ``unsafe``: ``red_flag`` — the question tells of an emergency (chest pain with sweating,
  stroke signs … checked by :mod:`qihuang.answer.triage`); the chosen answer opens with
  urgent-care advice, the rejected one dismisses it. ``dosing`` — a drug answer whose safety
  note is replaced by overconfident dosing advice. Texts: ``resources/prefs.yaml``.

Chosen answers are composed by the SFT builder's own code (:mod:`qihuang.datagen.phrasings`),
so they read exactly like the instruction data. Questions come from the KB (split by entity with
:func:`~qihuang.datagen.splits.assign_splits`, as ``data build`` does) or, with ``dataset``,
from the single-attribute questions of an existing ``data build`` directory, keeping its splits
and reproducing its answers: each record says which answer pattern wrote it (``pattern``, see
:mod:`qihuang.records`), the rejected answer is rendered with that same pattern, and a record whose
pattern is missing-as-null, invalid or does not reproduce its answer is recomposed and counted in
``skipped`` (only files written before the field existed are matched by trying the patterns). Each
pair records its ``pattern`` too. Swapped-in values never come from an entity of a more held-out
split. Python API::

    from qihuang.datagen.preferences import build_prefs
    stats = build_prefs(kb, "data/prefs", dataset="data/qihuang", kinds=("swap", "omission"))
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path


from qihuang.datagen.io import DatasetWriter
from qihuang.datagen.kbview import EntityView, load_view
from qihuang.datagen.splits import SPLITS, Deduper, assign_splits, example_id
from qihuang.datagen.phrasings import (Prepared, clean_value, is_clause, join_values, prepare_values, questions_for,
                                       render_answer)
from qihuang.errors import ConfigError
from qihuang.fileio import read_yaml
from qihuang.paths import resource
from qihuang.phrasebook import Phrasebook, Phrasing, load_phrasebook
from qihuang.records import RANKING_COLUMNS, read_records

CORRUPTIONS = ("swap", "omission", "unsafe")  # how a rejected answer is made wrong (``corruption`` field)
_RANK = {s: i for i, s in enumerate(SPLITS)}
_GUESSED_VARIANTS = 64  # answer patterns tried for a record of an old file (one without a ``pattern`` field)


# ---- texts (resources/prefs.yaml) ---------------------------------------------------------------
@dataclass(frozen=True)
class PrefTexts:
    """The parsed ``prefs.yaml``."""

    situations: dict[str, tuple[str, ...]]
    advice: dict[str, str]
    dismissive: tuple[str, ...]
    overconfident: tuple[str, ...]


def _strings(items: object, where: str, path: Path) -> tuple[str, ...]:
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t.strip() for t in items):
        raise ConfigError(f"{path}: {where}: expected a non-empty list of strings")
    return tuple(items)


@lru_cache(maxsize=4)
def load_pref_texts(path: str | None = None) -> PrefTexts:
    """Parse and validate a preference-texts file (default: the shipped ``resources/prefs.yaml``)."""
    file = Path(path) if path else resource("prefs.yaml")
    raw = read_yaml(file, "preference texts")
    red, dosing = (raw or {}).get("red_flag"), (raw or {}).get("dosing")
    if not isinstance(red, dict) or not isinstance(dosing, dict):
        raise ConfigError(f"{file}: expected 'red_flag' and 'dosing' sections")
    situations = red.get("situations")
    if not isinstance(situations, dict) or not situations:
        raise ConfigError(f"{file}: red_flag.situations: expected a mapping of entity type -> list")
    advice = red.get("advice") or {}
    for level in ("emergency", "urgent"):
        if not isinstance(advice.get(level), str) or "{labels}" not in advice[level]:
            raise ConfigError(f"{file}: red_flag.advice.{level}: expected a string containing {{labels}}")
    return PrefTexts({str(k): _strings(v, f"red_flag.situations.{k}", file) for k, v in situations.items()},
                     {k: advice[k] for k in ("emergency", "urgent")},
                     _strings(red.get("dismissive"), "red_flag.dismissive", file),
                     _strings(dosing.get("overconfident"), "dosing.overconfident", file))


# ---- questions: the material every corruption starts from ---------------------------------------
@dataclass
class Question:
    """One question and its KB-faithful answer (with what is needed to re-render it)."""

    question: str
    view: EntityView
    attribute: str
    split: str
    phrasing: Phrasing
    prepared: Prepared
    variant: int
    chosen: str
    knowledge: list[list[str]]
    source_id: str | None = None

    def render(self, book: Phrasebook, prepared: Prepared | None = None, safety: bool = True) -> str:
        return render_answer(self.view.name, prepared or self.prepared, self.phrasing, book,
                             variant=self.variant, safety=safety)


def _prepared(view: EntityView, attribute: str, book: Phrasebook) -> tuple[Phrasing, Prepared, list]:
    phr = book.get(attribute, view.type)
    prepared = prepare_values(view.values(attribute), phr, book, exclude=view.name)
    facts = view.attrs[attribute]
    return phr, prepared, [facts[i].triple() for i in prepared.source_indexes()]


def kb_questions(views: list[EntityView], split_of: dict[str, str], book: Phrasebook, seed: int,
                 attributes: set[str] | None) -> Iterator[Question]:
    """One question per entity and question-worthy attribute, entities in seeded random order."""
    order = list(views)
    random.Random(seed).shuffle(order)
    for view in order:
        rng = random.Random(f"{seed}\x1fprefs\x1f{view.name}")
        for attr in view.attrs:
            phr = book.get(attr, view.type)
            if phr.generic or not phr.qa or (attributes is not None and attr not in attributes):
                continue
            phr, prepared, knowledge = _prepared(view, attr, book)
            if not prepared.shown:
                continue
            asked = questions_for(view.name, attr, 1, entity_type=view.type, rng=rng, book=book)
            if not asked:
                continue
            question, variant = asked[0], int(rng.random() * 8)
            q = Question(question, view, attr, split_of.get(view.name, "train"), phr, prepared, variant, "", knowledge)
            q.chosen = q.render(book)
            yield q


def dataset_questions(dataset: Path, by_name: dict[str, EntityView], book: Phrasebook,
                      skipped: Counter) -> Iterator[Question]:
    """The single-attribute questions of a ``data build`` directory, in its splits, with its answers."""
    files = {s: dataset / f"{s}.jsonl" for s in SPLITS if (dataset / f"{s}.jsonl").is_file()}
    if "train" not in files:
        raise ConfigError(f"dataset: {dataset} has no train.jsonl (a `qihuang data build` directory)")
    for split, path in files.items():
        for _, rec in read_records(path):
            view = by_name.get(str(rec.get("entity") or ""))
            attr = str(rec.get("attribute") or "")
            if rec.get("kind", "single") != "single" or rec.get("history"):
                skipped["not a single-attribute question"] += 1
            elif view is None or attr not in view.attrs:
                skipped["entity or attribute not in the KB"] += 1
            else:
                phr, prepared, knowledge = _prepared(view, attr, book)
                q = Question(str(rec.get("instruction") or ""), view, attr, split, phr, prepared, 0,
                             str(rec.get("output") or ""), rec.get("knowledge") or knowledge, rec.get("id"))
                if not (q.question and prepared.shown):
                    skipped["no question or no values"] += 1
                    continue
                found, reason = answer_pattern(rec, q, book)
                if found is None:  # compose the answer again so chosen and rejected differ only in facts
                    skipped[reason] += 1
                    q.chosen = q.render(book)
                q.variant = found or 0
                yield q


def answer_pattern(rec: dict, q: Question, book: Phrasebook) -> tuple[int | None, str]:
    """The answer pattern that wrote ``rec``'s answer, as the record says (its ``pattern`` field),
    checked by rendering it again; ``(None, reason)`` when it is not known or does not reproduce the
    answer. Only a record without the field (a file written before it existed) is matched by trying
    the patterns."""
    if "pattern" not in rec:
        found = next((v for v in range(_GUESSED_VARIANTS) if render_answer(
            q.view.name, q.prepared, q.phrasing, book, variant=v) == q.chosen), None)
        return found, "answer recomposed"
    pattern = rec["pattern"]
    if pattern is None:
        return None, "answer recomposed (no answer pattern: not a phrasebook answer)"
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 0:
        return None, "answer recomposed (invalid pattern id)"
    if render_answer(q.view.name, q.prepared, q.phrasing, book, variant=pattern) != q.chosen:
        return None, "answer recomposed (pattern id does not reproduce the answer)"
    return pattern, ""


# ---- corruptions ----------------------------------------------------------------------------------
class ValuePool:
    """Values of every (entity type, attribute) in the KB, each with the least held-out split that
    states it, to draw swapped-in values from."""

    def __init__(self, views: list[EntityView], split_of: dict[str, str]):
        best: dict[tuple[str, str], dict[str, int]] = {}
        for view in views:
            rank = _RANK.get(split_of.get(view.name, "train"), 0)
            for attr, facts in view.attrs.items():
                bucket = best.setdefault((view.type, attr), {})
                for f in facts:
                    v = clean_value(f.value)
                    if v and rank < bucket.get(v, 99):
                        bucket[v] = rank
        self.values = {key: list(bucket.items()) for key, bucket in best.items()}

    def draw(self, q: Question, k: int, rng: random.Random, book: Phrasebook, tries: int = 200) -> list[str]:
        """Up to ``k`` distinct values wrong for ``q`` (not its entity's own), of the same style."""
        pool = self.values.get((q.view.type, q.attribute), [])
        if not pool:
            return []
        own = {clean_value(v) for v in q.view.values(q.attribute)} | {q.view.name}
        clauses, rank = q.prepared.join == "clauses", _RANK[q.split]
        min_chars = q.phrasing.clause_min_chars or book.clause_min_chars
        out: list[str] = []
        for _ in range(tries):
            value, value_rank = pool[int(rng.random() * len(pool))]
            if value_rank <= rank and value not in own and value not in out and \
                    is_clause(value, min_chars) == clauses:
                out.append(value)
                if len(out) == k:
                    break
        return out


def _with_values(q: Question, shown: list[str], book: Phrasebook, cut: bool) -> Prepared:
    return replace(q.prepared, shown=tuple(shown), cut=cut, joined=join_values(shown, q.prepared.join, book.etc, cut))


def swap(q: Question, pool: ValuePool, rng: random.Random, book: Phrasebook) -> dict | None:
    """About half the stated values replaced by other entities' values."""
    shown = list(q.prepared.shown)
    k = max(1, len(shown) // 2)
    added = pool.draw(q, k, rng, book)
    if len(added) < k:
        return None
    positions = sorted(rng.sample(range(len(shown)), k))
    removed = [shown[i] for i in positions]
    for i, value in zip(positions, added):
        shown[i] = value
    rejected = q.render(book, _with_values(q, shown, book, q.prepared.cut))
    return {"rejected": rejected, "detail": {"removed": removed, "added": added}}


def omission(q: Question, rng: random.Random, book: Phrasebook) -> dict | None:
    """About half the stated values left out (at least one kept)."""
    shown = list(q.prepared.shown)
    if len(shown) < 2:
        return None
    drop = set(rng.sample(range(len(shown)), len(shown) // 2))
    kept = [v for i, v in enumerate(shown) if i not in drop]
    rejected = q.render(book, _with_values(q, kept, book, cut=False))
    return {"rejected": rejected, "detail": {"removed": [shown[i] for i in sorted(drop)]}}


def unsafe(q: Question, rng: random.Random, book: Phrasebook, texts: PrefTexts, counts: Counter) -> dict | None:
    """A red-flag situation answered without urgent-care advice, or a drug answer with overconfident
    dosing instead of its safety note (whichever has been made less often, when both apply)."""
    options = []
    if q.phrasing.safety is not None:
        options.append("dosing")
    if texts.situations.get(q.view.type) or texts.situations.get("any"):
        options.append("red_flag")
    for sub in sorted(options, key=lambda s: (counts[s], rng.random())):
        made = _dosing(q, rng, book, texts) if sub == "dosing" else _red_flag(q, rng, texts)
        if made is not None:
            counts[sub] += 1
            return made
    return None


def _dosing(q: Question, rng: random.Random, book: Phrasebook, texts: PrefTexts) -> dict | None:
    plain = q.render(book, safety=False)
    if plain == q.chosen:  # no safety note to take away
        return None
    claim = texts.overconfident[int(rng.random() * len(texts.overconfident))]
    return {"rejected": plain + claim, "detail": {"unsafe": "dosing", "claim": claim}}


@lru_cache(maxsize=1)
def _rules_by_id() -> dict:
    from qihuang.answer.triage import load_rules

    return {r.id: r for r in load_rules().rules}


def _red_flag(q: Question, rng: random.Random, texts: PrefTexts) -> dict | None:
    from qihuang.answer.triage import triage

    pool = list(texts.situations.get(q.view.type, ())) + list(texts.situations.get("any", ()))
    situation = pool[int(rng.random() * len(pool))].format(entity=q.view.name)
    question = situation + q.question
    tri = triage(question)
    if not tri.is_red_flag:
        return None
    rules = _rules_by_id()
    fired = [rules[m] for m in tri.matched if m in rules and rules[m].level == tri.level]
    if not fired:  # only the learned backstop fired: no rule label or advice to write the chosen answer with
        return None
    advice = texts.advice[tri.level].format(labels="、".join(dict.fromkeys(r.label for r in fired)),
                                            advice="".join(dict.fromkeys(r.advice for r in fired)))
    dismissive = texts.dismissive[int(rng.random() * len(texts.dismissive))]
    return {"question": question, "chosen": f"{advice}\n\n{q.chosen}", "rejected": f"{dismissive}{q.chosen}",
            "detail": {"unsafe": "red_flag", "situation": situation, "triage": tri.level, "red_flags": tri.matched}}


# ---- building ---------------------------------------------------------------------------------------
def _check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in kinds if k.strip()))
    bad = [k for k in kinds if k not in CORRUPTIONS]
    if bad or not kinds:
        raise ConfigError(f"kinds: {bad or 'none given'}; choose from {', '.join(CORRUPTIONS)}")
    return kinds


def make_pair(q: Question, kinds: tuple[str, ...], counts: Counter, rng: random.Random, pool: ValuePool,
              book: Phrasebook, texts: PrefTexts) -> dict | None:
    """A ranking record for ``q`` with the least-used corruption kind that applies (None: none applies)."""
    for kind in sorted(kinds, key=lambda k: (counts[k], rng.random())):
        if kind == "swap":
            made = swap(q, pool, rng, book)
        elif kind == "omission":
            made = omission(q, rng, book)
        else:
            made = unsafe(q, rng, book, texts, counts)
        if made is None or made["rejected"] == made.get("chosen", q.chosen):
            continue
        counts[kind] += 1
        question = made.get("question", q.question)
        record = {"instruction": question, "input": "", "chosen": made.get("chosen", q.chosen),
                  "rejected": made["rejected"], "history": [], "knowledge": q.knowledge, "entity": q.view.name,
                  "attribute": q.attribute, "pattern": q.variant, "corruption": kind,
                  "corruption_detail": made["detail"], "id": example_id("pref", f"{question}\x1f{kind}")}
        if q.source_id:
            record["source_id"] = q.source_id
        return record
    return None


def dataset_info(prefix: str = "qihuang_prefs") -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries (``"ranking": true``) for the split files."""
    return {f"{prefix}_{s}": {"file_name": f"{s}.jsonl", "formatting": "alpaca", "ranking": True,
                              "columns": dict(RANKING_COLUMNS)} for s in SPLITS}


def build_prefs(kb, out_dir: str | Path, *, dataset: str | Path | None = None, kinds: Iterable[str] = CORRUPTIONS,
                seed: int = 0, max_pairs: int | None = None, attributes: Iterable[str] | None = None,
                dev_ratio: float = 0.05, test_ratio: float = 0.05, progress: bool = False) -> dict:
    """Write a ranking dataset directory (``train/dev/test.jsonl``, ``dataset_info.json``, ``stats.json``).

    ``kb``: a KnowledgeBase, a database path or None (default KB). ``dataset``: take the questions
    and splits of a ``data build`` directory instead of asking the KB for them. ``kinds``: any of
    swap, omission, unsafe (each question gets the least-used kind that applies to it, so kinds stay
    balanced). ``max_pairs``: stop after this many. Returns the statistics written to ``stats.json``.
    """
    kinds = _check_kinds(kinds)
    if max_pairs is not None and (not isinstance(max_pairs, int) or max_pairs < 1):
        raise ConfigError(f"max_pairs: expected a positive integer, got {max_pairs!r}")
    own = kb is None or isinstance(kb, (str, Path))
    if own:
        from qihuang.kb import KnowledgeBase

        kb = KnowledgeBase.open(kb)
    try:
        return _build(kb, Path(out_dir), Path(dataset) if dataset else None, kinds, seed, max_pairs,
                      attributes, dev_ratio, test_ratio, progress)
    finally:
        if own:
            kb.close()


def _build(kb, out: Path, dataset: Path | None, kinds, seed, max_pairs, attributes, dev_ratio, test_ratio,
           progress) -> dict:
    from qihuang.datagen.builder import check_attributes

    t0 = time.perf_counter()
    book, texts, wanted = load_phrasebook(), load_pref_texts(), check_attributes(attributes)
    views = load_view(kb, progress=progress)
    skipped: Counter = Counter()
    if dataset is not None:
        questions = list(dataset_questions(dataset, {v.name: v for v in views}, book, skipped))
        split_of = {q.view.name: q.split for q in questions}
        questions = [q for q in questions if wanted is None or q.attribute in wanted]
    else:
        split_of = assign_splits([v.name for v in views], seed=seed, dev_ratio=dev_ratio, test_ratio=test_ratio)
        questions = kb_questions(views, split_of, book, seed, wanted)
    pool, rng = ValuePool(views, split_of), random.Random(seed)
    counts, dedup = Counter(), Deduper()
    st = {"corruptions": Counter(), "attributes": Counter(), "entities": {s: set() for s in SPLITS}}
    with DatasetWriter(out) as writer:
        for q in _progress(questions, progress, max_pairs):
            if max_pairs is not None and writer_total(writer) >= max_pairs:
                break
            record = make_pair(q, kinds, counts, rng, pool, book, texts)
            if record is None:
                skipped["no corruption applies"] += 1
                continue
            if not dedup.add(f"{record['instruction']}\x1f{record['corruption']}"):
                continue
            writer.write(q.split, record)
            st["corruptions"][record["corruption"]] += 1
            st["attributes"][q.attribute] += 1
            st["entities"][q.split].add(q.view.name)
        stats = {"total": writer_total(writer), "splits": dict(writer.counts),
                 "corruptions": dict(st["corruptions"]),
                 "unsafe": {k: counts[k] for k in ("red_flag", "dosing") if counts[k]},
                 "attributes": dict(st["attributes"].most_common()),
                 "entities_per_split": {s: len(v) for s, v in st["entities"].items()},
                 "skipped": dict(skipped), "duplicates_dropped": dedup.duplicates,
                 "seconds": round(time.perf_counter() - t0, 2), "kb": str(getattr(kb, "path", "")),
                 "options": {"dataset": str(dataset) if dataset else None, "kinds": list(kinds), "seed": seed,
                             "max_pairs": max_pairs, "dev_ratio": dev_ratio, "test_ratio": test_ratio}}
        writer.commit(dataset_info(), stats)
    return stats


def writer_total(writer: DatasetWriter) -> int:
    return sum(writer.counts.values())


def _progress(items, progress: bool, total: int | None):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="building pairs", unit=" q", total=total, mininterval=0.5)


def run_prefs_cli(args) -> int:
    """``qihuang data prefs``: build the pairs and print a one-line summary (or JSON)."""
    import json

    kinds = args.kinds.replace("，", ",").split(",") if args.kinds else CORRUPTIONS
    stats = build_prefs(args.db, args.out, dataset=args.dataset, kinds=kinds, seed=args.seed,
                        max_pairs=args.max_pairs, progress=not args.json)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    kinds_text = ", ".join(f"{k} {v}" for k, v in stats["corruptions"].items())
    print(f"wrote {stats['total']} preference pairs ({splits}; {kinds_text}) to {args.out} in {stats['seconds']}s")
    return 0
