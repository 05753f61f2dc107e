"""``openqa``: open questions scored against reference answers with BLEU-4 and ROUGE-1/2/L.

Accepted records (JSON lines or a JSON array; a dataset directory means its ``test.jsonl``):

* alpaca / ``qihuang data build``: ``instruction`` (+ ``input``), ``output``, optional ``history`` [[q, a], ...];
* question/answer: ``question`` (or ``prompt``/``query``), ``answer`` (or ``reference``/``response``);
* ShareGPT: ``conversations`` (or ``messages``) with the roles training reads (human/user, gpt/assistant/
  bot/model, system: :data:`qihuang.records.ROLES`); the last user turn is the question, the assistant turn
  after it the reference, earlier turns the history;
* LLaMA-Factory ``generated_predictions.jsonl``: ``prompt``, ``label`` (the reference), ``predict``.

Every shape is read by :func:`qihuang.records.to_prompt`, as batch inference reads it; a question
holding a flattened dialogue (``<user>: … <bot>: …``, HuaTuo's literature data) is split into history
and question there, as training splits it.

Records that already carry a ``prediction`` (a qihuang ``infer`` output) or ``predict`` (LLaMA-Factory)
are scored as they are, without a model (CareLlama's predict-then-score flow); ``--regenerate``
answers them again with the model.

BLEU-4 uses sacrebleu on jieba tokens (``bleu_tokenize=jieba``, default) or sacrebleu's own
``zh`` tokenizer; ROUGE F1 uses ``rouge-chinese`` on jieba tokens. Reported in 0-100: corpus
BLEU-4 (``bleu4``), the mean sentence BLEU-4, mean ROUGE-1/2/L, and length statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.errors import InputError
from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption, base_row, scored_text
from qihuang.eval.dataio import data_files, first, iter_rows
from qihuang.eval.metrics import BLEU_TOKENIZERS, length_stats, sentence_scores, text_overlap_scores
from qihuang.records import to_prompt


class RecordError(ValueError):
    """A record of no known question/answer shape; the message names the field."""


def qa_record(row: dict) -> tuple[str, str | None, list[list[str]]]:
    """``(question, reference, history)`` of a record in any accepted shape (:func:`qihuang.records.to_prompt`)."""
    try:
        prompt = to_prompt(row, allow_empty=existing_prediction(row) is not None)  # old LLaMA-Factory rows
    except InputError as exc:
        raise RecordError(str(exc)) from None
    return prompt.question, prompt.reference, prompt.history


def existing_prediction(row: dict) -> str | None:
    """The prediction a record already carries (``prediction``, or LLaMA-Factory's ``predict``)."""
    value = first(row, "prediction", "predict")
    return None if value is None else str(value)


def load_qa(path: Path, *, need_reference: bool) -> Dataset:
    """Question/answer records from a file, a directory of files, or a dataset dir's test.jsonl."""
    path = Path(path)
    if path.is_dir() and (path / "test.jsonl").is_file():
        path = path / "test.jsonl"
    examples, skipped = [], []
    for file in data_files(path, (".jsonl", ".json")):
        for item in iter_rows(file):
            row, line = item.row, item.line
            try:
                if item.error:
                    raise RecordError(item.error)
                question, reference, history = qa_record(row)
                if need_reference and not (reference or "").strip():
                    raise RecordError("field 'output'/'answer': missing or empty reference")
            except RecordError as exc:
                skipped.append(Skipped(str(file), line, str(exc)))
                continue
            prediction = existing_prediction(row)
            fields = {} if prediction is None else {"prediction": prediction}
            examples.append(Example(id=str(row.get("id") or item.key), question=question,
                                    reference=reference, history=history, subject=row.get("subject"),
                                    source=str(file), line=line, fields=fields))
    return Dataset(examples, skipped)


class OpenQATask(Task):
    """BLEU-4, ROUGE-1/2/L and lengths of answers against reference answers."""

    name = "openqa"
    description = "BLEU-4 and ROUGE-1/2/L (jieba) against reference answers, with length statistics"
    headline = ("bleu4", "rouge1", "rouge2", "rougeL")
    options = (TaskOption("bleu_tokenize", str, "jieba", "BLEU tokens: jieba words or sacrebleu's zh tokenizer",
                          BLEU_TOKENIZERS),
               TaskOption("regenerate", bool, False, "answer again with the model even where the data already "
                          "holds predictions (prediction/predict fields)"))

    def load(self, path: Path) -> Dataset:
        return load_qa(path, need_reference=True)

    def _given(self, example: Example) -> str | None:
        return None if self.config["regenerate"] else example.fields.get("prediction")

    def needs_model(self, examples: list[Example]) -> bool:
        return any(self._given(ex) is None for ex in examples)

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        todo = [ex for ex in batch if self._given(ex) is None]
        rows = dict(zip((ex.id for ex in todo), super().predict(todo, ctx), strict=True)) if todo else {}
        for ex in batch:
            if ex.id not in rows:
                row = base_row(ex, ex.question, self._given(ex))
                row.update(self.score_example(ex, scored_text(row), ctx))
                rows[ex.id] = row
        return [rows[ex.id] for ex in batch]

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        return sentence_scores(prediction, example.reference or "", self.config["bleu_tokenize"])

    def aggregate(self, rows: list[dict]) -> dict:
        scores: dict[str, Any] = {"n": len(rows)}
        scores.update(text_overlap_scores(rows, self.config["bleu_tokenize"]))
        scores.update(length_stats([scored_text(r) for r in rows], "prediction"))
        scores.update(length_stats([r["reference"] or "" for r in rows], "reference"))
        if scores.get("reference_len_mean"):
            scores["length_ratio"] = round(scores["prediction_len_mean"] / scores["reference_len_mean"], 4)
        return {"scores": scores}
