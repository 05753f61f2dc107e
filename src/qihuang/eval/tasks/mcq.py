"""``mcq``: Chinese multiple-choice medical exams in their published shapes (CMExam, CMB-Exam, MMedBench,
MedQA-MCMLE, MedMCQA, CNMLE-style ``opa``..``ope``, CMMLU, C-Eval, generic JSON lines; see
``resources/eval_shapes.yaml``).

Two scoring methods:

* ``loglik`` (default): for each option letter, ``engine.loglikelihood(context, letter)``; the
  prediction is the most likely letter. The context is the question with its options, rendered
  with the engine's prompt template (``prompt_format=template``) or as plain text
  (``prompt_format=plain``). Items with several correct letters are skipped (reported) in
  this mode, since one letter cannot express them.
* ``generate``: the question is answered through the Answerer (as ``qihuang infer`` would) and
  the letter(s) are extracted from the reply (:func:`qihuang.eval.metrics.extract_choice`);
  an item is correct when the extracted set equals the gold set; a reply no letter can be read
  from is counted as unparsed (``unparsed_rate``, ``n_unparsed``), never guessed.

Few-shot (``shots=K``): K solved examples from ``fewshot_data`` (a dev file or directory) or,
without it, from the same data excluding the item itself; examples of the same subject first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption, base_row
from qihuang.eval.metrics import extract_choice, pct
from qihuang.eval.select import SELECT_OPTIONS, SHAPE_OPTION, group_by_subject, select
from qihuang.eval.tasks.mcq_formats import load_exam

INSTRUCTION = "以下是医学考试中的{kind}选择题，请选出正确答案，只需给出选项字母。"


def question_block(ex: Example, *, with_instruction: bool = True) -> str:
    """The question with its lettered options, as shown to the model."""
    kind = "多项" if len(ex.fields["answer"]) > 1 else "单项"
    lines = [INSTRUCTION.format(kind=kind)] if with_instruction else []
    lines.append(ex.question)
    lines += [f"{letter}. {text}" for letter, text in ex.fields["options"].items()]
    lines.append("答案：")
    return "\n".join(lines)


def choice_loglik(engine: Any, contexts: list[str], choices: list[list[str]]) -> list[list[float]]:
    """For each context, the engine's log-likelihood of each of its choices as the continuation (one call)."""
    requests = [(c, choice) for c, options in zip(contexts, choices, strict=True) for choice in options]
    scores = list(engine.loglikelihood(requests))
    if len(scores) != len(requests):
        raise RuntimeError(f"engine.loglikelihood returned {len(scores)} scores for {len(requests)} requests")
    out, i = [], 0
    for options in choices:
        out.append([float(x) for x in scores[i:i + len(options)]])
        i += len(options)
    return out


def choice_scores(rows: list[dict], method: str) -> dict[str, Any]:
    """n and accuracy of graded rows (``correct``, ``pred``); with ``generate``, the replies no answer could
    be read from (``pred`` None), counted wrong: ``n_unparsed`` and ``unparsed_rate``."""
    scores: dict[str, Any] = {"n": len(rows), "accuracy": pct(r["correct"] for r in rows)}
    if method == "generate":
        scores["unparsed_rate"] = pct(r["pred"] is None for r in rows)
        scores["n_unparsed"] = sum(r["pred"] is None for r in rows)
    return scores


class MCQTask(Task):
    """Accuracy on multiple-choice exams, overall and per subject."""

    name = "mcq"
    description = "multiple-choice exams: option log-likelihood or generation + letter extraction"
    headline = ("accuracy",)
    options = (
        TaskOption("method", str, "loglik", "how to pick an option: loglik (engine) or generate (Answerer)",
                   ("loglik", "generate")),
        TaskOption("shots", int, 0, "number of solved examples shown before each question (few-shot)"),
        TaskOption("fewshot_data", str, None, "file or directory the few-shot examples come from "
                                              "(default: the evaluated data, excluding the item)"),
        TaskOption("subject_field", str, None, "column/key holding the subject (default: 'subject', "
                                               "else the file name for CMMLU/C-Eval)"),
        TaskOption("prompt_format", str, "template", "loglik context: the model's prompt template or plain text",
                   ("template", "plain")),
        SHAPE_OPTION,
        TaskOption("answers", str, None, "file of {id, answer} records joined to the questions by id (CMB-test "
                                         "keeps its answers apart)"),
        *SELECT_OPTIONS,
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        if self.config["shots"] < 0:
            from qihuang.errors import ConfigError

            raise ConfigError("task option 'shots' must be >= 0")
        self._pool: list[Example] = []

    def load(self, path: Path) -> Dataset:
        data = self._load(path, self.config["answers"])
        if self.config["method"] == "loglik":
            keep = []
            for ex in data.examples:
                if len(ex.fields["answer"]) > 1:
                    data.skipped.append(Skipped(ex.source, ex.line, "several correct letters: "
                                                "score it with method=generate"))
                else:
                    keep.append(ex)
            data.examples = keep
        return select(data, self.config)  # sampled after the unscorable items are left out

    def _load(self, path: Path, answers: str | None = None) -> Dataset:
        return load_exam(path, self.config["subject_field"], self.config["shape"],
                         Path(answers) if answers else None)

    def prepare(self, dataset: Dataset, ctx: RunContext) -> None:
        if not self.config["shots"]:
            return
        if self.config["fewshot_data"]:
            self._pool = self._load(Path(self.config["fewshot_data"])).examples
        else:
            self._pool = list(dataset.examples)

    def fewshot(self, ex: Example) -> list[Example]:
        """The solved examples shown before ``ex`` (same subject first, never ``ex`` itself)."""
        k = self.config["shots"]
        if not k:
            return []
        others = [p for p in self._pool if not (p.id == ex.id and p.source == ex.source)]
        same = [p for p in others if p.subject == ex.subject]
        return (same + [p for p in others if p.subject != ex.subject])[:k]

    # ------------------------------------------------------------ prediction

    def prompt(self, example: Example) -> str:
        return question_block(example)

    def history(self, example: Example) -> list[list[str]]:
        """Few-shot examples as earlier turns (method=generate)."""
        return [[question_block(s), s.fields["answer"]] for s in self.fewshot(example)]

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        if self.config["method"] == "generate":
            return super().predict(batch, ctx)
        return self._predict_loglik(batch, ctx)

    def context(self, ex: Example, engine: Any) -> str:
        """The loglik context for ``ex``: few-shot turns then the question, ready for the letter."""
        shots = self.fewshot(ex)
        template = getattr(engine, "template", None)
        if self.config["prompt_format"] == "template" and template is not None:
            messages = []
            for s in shots:
                messages += [{"role": "user", "content": question_block(s)},
                             {"role": "assistant", "content": s.fields["answer"]}]
            messages.append({"role": "user", "content": question_block(ex)})
            return template.render(getattr(engine, "tokenizer", None), messages, add_generation_prompt=True)
        parts = [question_block(s, with_instruction=i == 0) + s.fields["answer"] for i, s in enumerate(shots)]
        parts.append(question_block(ex, with_instruction=not shots))
        return "\n\n".join(parts)

    def _predict_loglik(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        engine = ctx.engine
        contexts = [self.context(ex, engine) for ex in batch]
        rows = []
        for ex, scores in zip(batch, choice_loglik(engine, contexts, [list(ex.fields["options"]) for ex in batch]),
                              strict=True):
            letters = list(ex.fields["options"])
            ll = dict(zip(letters, scores, strict=True))
            picked = max(letters, key=lambda k: ll[k])
            row = base_row(ex, question_block(ex), picked)
            row["loglik"] = {k: round(float(v), 4) for k, v in ll.items()}
            row.update(self._grade(ex, picked))
            rows.append(row)
        return rows

    # ------------------------------------------------------------ scoring

    def _grade(self, ex: Example, picked: str | None) -> dict:
        return {"gold": ex.fields["answer"], "pred": picked, "correct": picked == ex.fields["answer"]}

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        return self._grade(example, extract_choice(prediction, example.fields["options"]))

    def aggregate(self, rows: list[dict]) -> dict:
        scores = choice_scores(rows, self.config["method"])
        per_subject = {s: {"n": len(v), "accuracy": pct(r["correct"] for r in v)}
                       for s, v in group_by_subject(rows).items()}
        if len(per_subject) > 1:
            scores["accuracy_macro"] = round(sum(v["accuracy"] for v in per_subject.values()) / len(per_subject), 2)
        return {"scores": scores, "details": {"by_subject": per_subject, "method": self.config["method"],
                                              "shots": self.config["shots"]}}
