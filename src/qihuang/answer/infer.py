"""Batch inference over alpaca JSON / JSON lines (the HuaTuo ``infer.json`` shape).

Each input record gives a question (``instruction`` + ``input``, optional ``history``, or a
ShareGPT conversation whose last user turn is the question) and optionally a reference
``output``. Each output line holds ``record`` (the input record number, counted from 1),
``line`` (the input line it starts on; one-line JSON arrays share line 1), ``instruction``,
``input``, ``output`` (the reference), ``prediction``, ``grounded``, ``citations``, ``triage``,
``refused``, ``abstained``, ``verification`` (counts and spans of the claims, see
:mod:`qihuang.answer.verify`), ``draft`` (the model's first text when the policy changed it)
and ``disclaimer``. The summary counts red flags, refused, abstained and grounded answers, and
answers left with flagged spans, with sentences dropped, and regenerated.

Resumable: results are appended batch by batch to ``OUTPUT.partial`` (flushed and fsynced);
a rerun skips the input records already there, and the finished file is moved onto ``OUTPUT``
with ``os.replace``. A torn last line (a crash mid-write) is dropped and redone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qihuang.errors import InputError
from qihuang.fileio import atomic_write_text


def _read_done(path: Path) -> tuple[list[str], set[int]]:
    """Valid lines of a previous (partial) output and the input record numbers they cover
    (``record``; outputs written before it existed have only ``line``)."""
    kept, done = [], set()
    if not path.is_file():
        return kept, done
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a torn line from an interrupted run: redone
        key = row.get("record", row.get("line")) if isinstance(row, dict) else None
        if isinstance(key, int):
            kept.append(raw)
            done.add(key)
    return kept, done


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))


def _result_row(number: int, item: dict, answer) -> dict:
    row = {"record": number, "line": item["line"], "instruction": item["instruction"], "input": item["input"],
           "output": item["reference"], "prediction": answer.text, "grounded": answer.grounded,
           "citations": [c.to_dict() for c in answer.citations], "triage": answer.triage.to_dict(),
           "refused": answer.refused, "abstained": answer.abstained,
           "verification": answer.verification.to_dict(), "disclaimer": answer.disclaimer}
    if answer.draft:
        row["draft"] = answer.draft
    if item.get("id") is not None:
        row["id"] = item["id"]
    return row


def count_answer(counts: dict, answer) -> None:
    """Add one answer to the summary counts."""
    v = answer.verification
    counts["red_flags"] += answer.triage.is_red_flag
    counts["refused"] += answer.refused
    counts["abstained"] += answer.abstained
    counts["grounded"] += answer.grounded
    counts["flagged"] += not v.ok
    counts["dropped"] += bool(v.dropped)
    counts["regenerated"] += v.attempts > 1


def run_infer(input_path: str | Path, output_path: str | Path, answerer, batch_size: int = 8,
              limit: int | None = None, progress: bool = True) -> dict:
    """Answer every record of ``input_path`` into ``output_path`` (JSON lines); returns counts."""
    from tqdm import tqdm

    from qihuang.records import question_of, read_numbered

    src, out = Path(input_path), Path(output_path)
    if src.resolve() == out.resolve():
        raise InputError("--output must differ from --input", path=str(out))
    partial = out.with_name(out.name + ".partial")
    kept, done = _read_done(partial if partial.is_file() else out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_lines(partial, kept)  # drop a torn last line before appending
    todo = []
    for number, line, record in read_numbered(src):
        if limit is not None and len(todo) + len(done) >= limit:
            break
        if number not in done:
            item = question_of(record, str(src), line)
            item["id"], item["line"] = record.get("id"), line
            todo.append((number, item))
    counts = {"written": 0, "skipped": len(done), "red_flags": 0, "refused": 0, "abstained": 0, "grounded": 0,
              "flagged": 0, "dropped": 0, "regenerated": 0}
    bar = tqdm(total=len(todo), desc="infer", unit="q", disable=not progress)
    with open(partial, "a", encoding="utf-8") as fh:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            answers = answerer.answer_batch([it["question"] for _, it in chunk], [it["history"] for _, it in chunk],
                                            systems=[it["system"] for _, it in chunk])
            for (line, item), answer in zip(chunk, answers):
                fh.write(json.dumps(_result_row(line, item, answer), ensure_ascii=False) + "\n")
                count_answer(counts, answer)
            fh.flush()
            os.fsync(fh.fileno())
            counts["written"] += len(chunk)
            bar.update(len(chunk))
    bar.close()
    os.replace(partial, out)
    return counts
