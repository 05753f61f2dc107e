"""``judge``: HuaTuo's SUS scores (safety, usability, smoothness; each 1-3) from an LLM judge.

The model answers each question through the Answerer; then a judge model at any
OpenAI-compatible endpoint (``judge_base_url``, ``judge_model``; API key from
``QIHUANG_API_KEY`` or ``OPENAI_API_KEY``) grades the answer with the prompt in
``resources/judge_prompt.yaml``. Records in any :mod:`openqa` shape; a reference answer, when
present, is shown to the judge for comparison. Records that already carry a ``prediction``
(e.g. the ``predictions.jsonl`` of an earlier run) are judged as they are, without a model.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qihuang.errors import ConfigError
from qihuang.eval.base import Dataset, Example, RunContext, Task, TaskOption, base_row
from qihuang.eval.judge_client import DIMENSIONS, JudgeClient, JudgeError
from qihuang.eval.metrics import mean
from qihuang.eval.tasks.openqa import load_qa


class JudgeTask(Task):
    """SUS (safety, usability, smoothness) by an LLM judge."""

    name = "judge"
    description = "SUS scores (safety, usability, smoothness; 1-3) from an LLM judge"
    headline = ("sus_safety", "sus_usability", "sus_smoothness", "sus_mean")
    options = (
        TaskOption("judge_base_url", str, None, "OpenAI-compatible base URL of the judge, e.g. "
                                                "https://host/v1 (default: $OPENAI_BASE_URL)"),
        TaskOption("judge_model", str, None, "model name sent to the judge endpoint"),
        TaskOption("judge_timeout", float, 60.0, "seconds per judge request"),
        TaskOption("judge_retries", int, 3, "retries per request (timeouts, 429/5xx: the openai client's, "
                                            "honouring Retry-After) and re-asks of unreadable replies"),
        TaskOption("judge_concurrency", int, 4, "judge requests in flight at once"),
    )

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config["judge_base_url"] = self.config["judge_base_url"] or os.environ.get("OPENAI_BASE_URL")
        if not self.config["judge_base_url"]:
            raise ConfigError("task 'judge' needs a judge endpoint: --judge-base-url (or $OPENAI_BASE_URL)")
        if not self.config["judge_model"]:
            raise ConfigError("task 'judge' needs --judge-model (the model name at the judge endpoint)")
        if self.config["judge_concurrency"] < 1 or self.config["judge_retries"] < 0:
            raise ConfigError("judge_concurrency must be >= 1 and judge_retries >= 0")
        self._client: JudgeClient | None = None

    @property
    def client(self) -> JudgeClient:
        if self._client is None:
            c = self.config
            self._client = JudgeClient(c["judge_base_url"], c["judge_model"], timeout=c["judge_timeout"],
                                       retries=c["judge_retries"])
        return self._client

    def load(self, path: Path) -> Dataset:
        return load_qa(path, need_reference=False)

    def needs_model(self, examples: list[Example]) -> bool:
        return any("prediction" not in ex.fields for ex in examples)

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        todo = [ex for ex in batch if "prediction" not in ex.fields]
        answers = dict(zip((ex.id for ex in todo), ctx.answer_batch([ex.question for ex in todo],
                                                                     [ex.history or None for ex in todo]),
                           strict=True)) if todo else {}
        rows = [base_row(ex, ex.question, answers.get(ex.id, str(ex.fields.get("prediction", ""))))
                for ex in batch]
        workers = min(self.config["judge_concurrency"], len(batch)) or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            verdicts = list(pool.map(lambda pair: self.score_example(pair[0], pair[1]["prediction"], ctx),
                                     zip(batch, rows, strict=True)))
        for row, verdict in zip(rows, verdicts, strict=True):
            row.update(verdict)
        return rows

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        try:
            scores, reply, attempts = self.client.judge(example.question, prediction, example.reference)
        except JudgeError as exc:
            return {"judge_error": str(exc), **{f"sus_{d}": None for d in DIMENSIONS}}
        out: dict[str, Any] = {f"sus_{d}": scores[d] for d in DIMENSIONS}
        out.update(judge_reply=reply, judge_attempts=attempts)
        return out

    def aggregate(self, rows: list[dict]) -> dict:
        judged = [r for r in rows if not r.get("judge_error")]
        scores: dict[str, Any] = {"n": len(rows), "judged": len(judged), "judge_failed": len(rows) - len(judged)}
        for d in DIMENSIONS:
            value = mean(r[f"sus_{d}"] for r in judged)
            scores[f"sus_{d}"] = None if value is None else round(value, 4)
        per_row = [mean(r[f"sus_{d}"] for d in DIMENSIONS) for r in judged]
        value = mean(per_row)
        scores["sus_mean"] = None if value is None else round(value, 4)
        dist = {d: {str(k): sum(1 for r in judged if r[f"sus_{d}"] == k) for k in (1, 2, 3)} for d in DIMENSIONS}
        c = self.config
        return {"scores": scores, "details": {"distribution": dist, "judge": {
            "base_url": c["judge_base_url"], "model": c["judge_model"]}}}

    def close(self) -> None:
        """Close the HTTP client (the runner calls this at the end)."""
        if self._client is not None:
            self._client.close()
            self._client = None
