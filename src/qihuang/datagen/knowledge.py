"""``qihuang data knowledge``: knowledge-tuning examples from a list of questions.

HuaTuo's knowledge tuning pairs each question with the KB facts it asks about and an answer
drawn from them. Here each question is linked and grounded by the one retrieval routine the
assistant answers with (:func:`qihuang.answer.grounding.ground`); the selected facts become the
record's ``knowledge`` and an answer is written from them with the phrasebook's answer patterns
(``resources/phrasings.yaml`` or the user's own file). Every record keeps its provenance: the
questions file and line, the linked entities and attributes, and the cited facts. Questions that
link to nothing are not written (``unlinked`` in the stats, each listed in ``unlinked.jsonl``).

Question files: ``.txt`` one question per line (a first line ``input``/``question`` is a header,
as in HuaTuo's ``knowledge_tuning_data_sample.txt``); ``.json``/``.jsonl``: records with
``instruction``/``question``/``input``/``query``/``context``, or a JSON array of strings.
Splits are by linked entity (an entity's questions share a split), like ``qihuang data build``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from qihuang.errors import InputError

_HEADERS = {"input", "question", "questions", "instruction", "query", "问题"}
_QUESTION_FIELDS = ("instruction", "question", "input", "query", "context")


def read_questions(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(true line, question)`` of a questions file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    if path.suffix in (".json", ".jsonl"):
        from qihuang.records import read_items

        for _number, line, item in read_items(path):
            if isinstance(item, str):  # a JSON array of question strings
                if item.strip():
                    yield line, item.strip()
                continue
            if not isinstance(item, dict):
                raise InputError(f"expected a question string or a JSON object, got {type(item).__name__}",
                                 path=str(path), line=line)
            question = next((item[k] for k in _QUESTION_FIELDS if isinstance(item.get(k), str)
                             and item[k].strip()), None)
            if question is None:
                raise InputError(f"no question field (one of {', '.join(_QUESTION_FIELDS)})", path=str(path), line=line)
            yield line, question.strip()
        return
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not (number == 1 and line.strip().lower() in _HEADERS):
            yield number, line.strip()


def knowledge_answer(grounding, book) -> str:
    """An answer stating the grounded facts, one sentence per (entity, attribute), in citation order."""
    from qihuang.datagen.phrasings import compose_answer

    parts, seen = [], set()
    for cite in grounding.citations:
        key = (cite.entity, cite.attribute)
        if key in seen:
            continue
        seen.add(key)
        values = [v for c in grounding.citations if (c.entity, c.attribute) == key for v in c.values]
        text, _ = compose_answer(cite.entity, cite.attribute, list(dict.fromkeys(values)), book=book)
        if text:
            parts.append(text)
    return "".join(parts)


def build_knowledge(kb, questions: str | Path, out_dir: str | Path, *, phrasings: str | Path | None = None,
                    seed: int = 0, dev_ratio: float = 0.05, test_ratio: float = 0.05, sharegpt: bool = False) -> dict:
    """Write knowledge-tuning ``train/dev/test.jsonl`` (+ ``dataset_info.json``, ``stats.json``) to
    ``out_dir`` from the questions in ``questions``; returns the statistics."""
    from qihuang.answer.grounding import ground
    from qihuang.datagen.io import DatasetWriter, dataset_info
    from qihuang.datagen.splits import Deduper, assign_splits, example_id
    from qihuang.fileio import atomic_write_text
    from qihuang.phrasebook import load_phrasebook

    t0, book, out = time.perf_counter(), load_phrasebook(phrasings), Path(out_dir)
    linked, unlinked, dedupe = [], [], Deduper()
    for line, question in read_questions(questions):
        if not dedupe.add(question):
            continue
        grounding = ground(kb, question)
        answer = knowledge_answer(grounding, book) if grounding.grounded else ""
        (linked if answer else unlinked).append((line, question, grounding, answer))
    split_of = assign_splits([g.entities[0] for _, _, g, _ in linked], seed=seed, dev_ratio=dev_ratio,
                             test_ratio=test_ratio)
    tally: Counter = Counter()
    with DatasetWriter(out, sharegpt=sharegpt) as writer:
        for line, question, grounding, answer in linked:
            split = split_of[grounding.entities[0]]
            record = {"instruction": question, "input": "", "output": answer, "history": [],
                      "knowledge": [f.triple() for f in grounding.facts], "entity": grounding.entities[0],
                      "attribute": grounding.citations[0].attribute, "kind": "knowledge",
                      "pattern": 0, "id": example_id("knowledge", question),
                      "provenance": {"questions": str(questions), "line": line, "entities": grounding.entities,
                                     "attributes": grounding.attributes,
                                     "citations": [c.to_dict() for c in grounding.citations]}}
            writer.write(split, record)
            tally[split] += 1
        stats = {"questions": len(linked) + len(unlinked) + dedupe.duplicates, "written": len(linked),
                 "unlinked": len(unlinked), "duplicates": dedupe.duplicates, "splits": dict(tally),
                 "phrasings": str(phrasings) if phrasings else "builtin",
                 "seconds": round(time.perf_counter() - t0, 3)}
        writer.commit(dataset_info("knowledge", sharegpt=sharegpt), stats)
    atomic_write_text(out / "unlinked.jsonl", "".join(json.dumps({"line": ln, "question": q}, ensure_ascii=False)
                                                      + "\n" for ln, q, _, _ in unlinked))
    return stats
