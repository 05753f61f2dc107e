"""``classify``: medical intent classification (KUAKE-QIC, CMID, PromptCBLUE's cls/matching records).

Each record becomes a prompt that shows the text and the label set (the shape's ``prompt``; PromptCBLUE's
``input`` already holds both). Two scoring methods, as for ``mcq``:

* ``loglik`` (default): every label text is scored as the continuation of the prompt (rendered with the
  engine's template, or plain); the label with the highest log-likelihood per character wins (longer
  labels are not penalised for their length, as lm-evaluation-harness's ``acc_norm``);
* ``generate``: the question is answered through the Answerer and the label is read from the reply: the
  reply itself, or the one label it names (a label inside another named label does not count); a reply
  naming none or several is counted as unparsed (``unparsed_rate``, ``n_unparsed``), never guessed.

Scores: accuracy and macro-F1 (over the labels that are gold or predicted), overall and per subject
(PromptCBLUE: per ``task_dataset``); per-label precision/recall/F1 in the details.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

from qihuang.eval.base import Dataset, Example, RunContext, Task, TaskOption, base_row
from qihuang.eval.metrics import norm, pct
from qihuang.eval.select import SELECT_OPTIONS, SHAPE_OPTION, ShapedLoad, group_by_subject
from qihuang.eval.shapes import RecordError, Shape, field_value, read_shaped, subject_value, text_value
from qihuang.eval.tasks.mcq import choice_loglik, choice_scores


def _label_of(row: dict, shape: Shape) -> str:
    value = field_value(row, shape.label)
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError(f"field {shape.label[0]!r}: {len(value)} labels; only single-label records are scored")
        value = value[0]
    label = "" if value is None else str(value).strip()
    if not label:
        raise RecordError(f"field {shape.label[0]!r}: missing or empty label")
    return label


def _labels_of(row: dict, shape: Shape) -> list[str]:
    if shape.labels:
        return list(shape.labels)
    raw = row.get(shape.labels_key)
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) and x.strip() for x in raw):
        raise RecordError(f"field {shape.labels_key!r}: expected a non-empty list of labels")
    labels = list(dict.fromkeys(x.strip() for x in raw))
    if shape.none_label and shape.none_label not in labels:
        labels.append(shape.none_label)
    return labels


def parse_record(row: dict, shape: Shape, *, file: Path, line: int, key: str) -> Example:
    """One record of ``shape`` -> Example (``fields``: ``labels``, ``label``); RecordError names the field."""
    text = text_value(row, shape.text)
    if not text:
        raise RecordError(f"field {shape.text[0]!r}: missing or empty text")
    label, labels = _label_of(row, shape), _labels_of(row, shape)
    if label not in labels:
        raise RecordError(f"field {shape.label[0]!r}: {label!r} is not one of the labels ({'，'.join(labels)})")
    prompt = shape.prompt.format(text=text, labels="，".join(labels))
    return Example(id=text_value(row, shape.id) or key, question=prompt, subject=subject_value(row, shape.subject),
                   source=str(file), line=line, fields={"labels": labels, "label": label})


def load_labelled(path: Path, shape: str | None = None) -> tuple[Dataset, dict[str, int]]:
    """Records of a file or directory; malformed ones are skipped, and records that belong to another task
    (a shape's ``keep``/``drop``: PromptCBLUE's generation records) are counted by why they were left."""
    return read_shaped(path, "classify", shape,
                       lambda row, sh, file, line, key: [parse_record(row, sh, file=file, line=line, key=key)])


def match_label(reply: str, labels: list[str]) -> str | None:
    """The label a free-text reply names: the reply itself, or the one label it contains (labels inside
    another contained label do not count); None when it names none or several."""
    r = norm(unicodedata.normalize("NFKC", reply or ""))
    if not r:
        return None
    normed = {lab: norm(lab) for lab in labels}
    exact = [lab for lab, n in normed.items() if n and n == r]
    if exact:
        return exact[0]
    found = [lab for lab, n in normed.items() if n and n in r]
    outer = [lab for lab in found if not any(o != lab and normed[lab] in normed[o] for o in found)]
    return outer[0] if len(outer) == 1 else None


def f1_scores(rows: list[dict]) -> tuple[float | None, dict[str, dict]]:
    """Macro-F1 (0-100) over the labels that are gold or predicted, and per-label P/R/F1 (scikit-learn's,
    a label never predicted or never gold scoring 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = sorted({r["gold"] for r in rows} | {r["pred"] for r in rows if r["pred"] is not None})
    if not labels:
        return None, {}
    unmatched = "\0"  # an answer that matched no label: wrong for every label, counted for none
    p, rec, f, n = precision_recall_fscore_support([r["gold"] for r in rows],
                                                   [unmatched if r["pred"] is None else r["pred"] for r in rows],
                                                   labels=labels, zero_division=0)
    per = {lab: {"n": int(n[i]), "precision": round(100 * float(p[i]), 2), "recall": round(100 * float(rec[i]), 2),
                 "f1": round(100 * float(f[i]), 2)} for i, lab in enumerate(labels)}
    return round(100 * float(f.mean()), 2), per


class ClassifyTask(ShapedLoad, Task):
    """Accuracy and macro-F1 of intent classification, overall and per subject."""

    reader = staticmethod(load_labelled)
    name = "classify"
    description = "intent classification (KUAKE-QIC, CMID, PromptCBLUE cls): label log-likelihood or generation"
    headline = ("accuracy", "macro_f1")
    options = (
        TaskOption("method", str, "loglik", "how to pick a label: loglik (engine) or generate (Answerer)",
                   ("loglik", "generate")),
        TaskOption("prompt_format", str, "template", "loglik context: the model's prompt template or plain text",
                   ("template", "plain")),
        SHAPE_OPTION,
        *SELECT_OPTIONS,
    )

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        if self.config["method"] == "generate":
            return super().predict(batch, ctx)
        engine = ctx.engine
        contexts = [self._context(ex, engine) for ex in batch]
        rows = []
        for ex, scores in zip(batch, choice_loglik(engine, contexts, [ex.fields["labels"] for ex in batch]),
                              strict=True):
            labels = ex.fields["labels"]
            per_char = {lab: float(s) / max(1, len(lab)) for lab, s in zip(labels, scores, strict=True)}
            picked = max(labels, key=lambda lab: per_char[lab])
            row = base_row(ex, ex.question, picked)
            row["loglik_per_char"] = {k: round(v, 4) for k, v in per_char.items()}
            row.update(self._grade(ex, picked))
            rows.append(row)
        return rows

    def _context(self, ex: Example, engine: Any) -> str:
        template = getattr(engine, "template", None)
        if self.config["prompt_format"] == "template" and template is not None:
            return template.render(getattr(engine, "tokenizer", None), [{"role": "user", "content": ex.question}],
                                   add_generation_prompt=True)
        return ex.question

    def _grade(self, ex: Example, picked: str | None) -> dict:
        return {"gold": ex.fields["label"], "pred": picked, "correct": picked == ex.fields["label"]}

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        return self._grade(example, match_label(prediction, example.fields["labels"]))

    def aggregate(self, rows: list[dict]) -> dict:
        macro, per_label = f1_scores(rows)
        scores = {**choice_scores(rows, self.config["method"]), "macro_f1": macro}
        per_subject = {s: {"n": len(v), "accuracy": pct(r["correct"] for r in v), "macro_f1": f1_scores(v)[0]}
                       for s, v in group_by_subject(rows).items()}
        return {"scores": scores, "notes": self.notes,
                "details": {"by_subject": per_subject, "by_label": per_label, "method": self.config["method"]}}
