"""``benchqa``: open questions of published benchmarks scored against their references, as ``openqa`` scores.

Shapes (``resources/eval_shapes.yaml``, kind ``benchqa``):

* CMB-Clin cases: a case ``description`` and several ``QA_pairs``. Each question is one example, asked
  with the case as context: the first question with the description in front of it (the shape's
  ``prompt``), a later one after the earlier questions of the case as history, each with its reference
  answer (teacher forcing: every question is scored on its own, whatever the model said before);
* PromptCBLUE's generation records (``input`` -> ``target``; its cls/matching records are ``classify``'s).

Scores: those of ``openqa`` (corpus and sentence BLEU-4, ROUGE-1/2/L on jieba tokens, lengths), plus the
mean ROUGE-L per subject (PromptCBLUE: per ``task_dataset``). Always generated through the Answerer
(``method: generate`` in the tables).
"""

from __future__ import annotations

from pathlib import Path

from qihuang.eval.base import Dataset, Example
from qihuang.eval.metrics import mean
from qihuang.eval.select import SELECT_OPTIONS, SHAPE_OPTION, ShapedLoad, group_by_subject
from qihuang.eval.shapes import RecordError, Shape, read_shaped, subject_value, text_value
from qihuang.eval.tasks.openqa import OpenQATask


def case_examples(row: dict, shape: Shape, *, file: Path, line: int, key: str) -> list[Example]:
    """The examples of one case (one per question, with the case and earlier turns as context)."""
    context = text_value(row, shape.context)
    if not context:
        raise RecordError(f"field {shape.context[0]!r}: missing or empty case")
    turns = row.get(shape.turns)
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise RecordError(f"field {shape.turns!r}: expected a non-empty list of question/answer objects")
    case_id = text_value(row, shape.id) or key
    history: list[list[str]] = []
    examples = []
    for i, turn in enumerate(turns, 1):
        question, answer = text_value(turn, shape.turn_question), text_value(turn, shape.turn_answer)
        if not question or not answer:
            missing = shape.turn_question[0] if not question else "/".join(shape.turn_answer)
            raise RecordError(f"field {shape.turns}[{i}].{missing}: missing or empty")
        asked = shape.prompt.format(context=context, question=question) if i == 1 else question
        examples.append(Example(id=f"{case_id}-{i}", question=asked, reference=answer,
                                history=[list(h) for h in history], source=str(file), line=line))
        history.append([asked, answer])
    return examples


def pair_example(row: dict, shape: Shape, *, file: Path, line: int, key: str) -> Example:
    question, reference = text_value(row, shape.question), text_value(row, shape.reference)
    if not question:
        raise RecordError(f"field {shape.question[0]!r}: missing or empty question")
    if not reference:
        raise RecordError(f"field {shape.reference[0]!r}: missing or empty reference")
    return Example(id=text_value(row, shape.id) or key, question=question, reference=reference,
                   subject=subject_value(row, shape.subject), source=str(file), line=line)


def load_bench_qa(path: Path, shape: str | None = None) -> tuple[Dataset, dict[str, int]]:
    """Examples of a file or directory, malformed records skipped; records of another task counted by why."""
    def parse(row: dict, sh: Shape, file: Path, line: int, key: str) -> list[Example]:
        if sh.turns:
            return case_examples(row, sh, file=file, line=line, key=key)
        return [pair_example(row, sh, file=file, line=line, key=key)]

    return read_shaped(path, "benchqa", shape, parse, (".jsonl", ".json"))


class BenchQATask(ShapedLoad, OpenQATask):
    """BLEU-4 and ROUGE of benchmark open questions (CMB-Clin cases, PromptCBLUE generation tasks)."""

    reader = staticmethod(load_bench_qa)
    name = "benchqa"
    description = "open questions of published benchmarks (CMB-Clin cases, PromptCBLUE generation): BLEU-4/ROUGE"
    headline = ("rougeL", "bleu4")
    options = (
        OpenQATask.options[0],
        SHAPE_OPTION,
        *SELECT_OPTIONS,
    )

    def _given(self, example: Example) -> str | None:
        return None  # benchmark records carry no predictions: always answered by the model

    def aggregate(self, rows: list[dict]) -> dict:
        agg = super().aggregate(rows)
        agg["details"] = {"method": "generate", "by_subject": {
            s: {"n": len(v), "rougeL": round(mean(r.get("rougeL") for r in v) or 0.0, 4)}
            for s, v in group_by_subject(rows).items()}}
        agg["notes"] = self.notes
        return agg
