"""``triage``: red-flag recall and false-alarm rate of the triage rules (no model needed).

Data: JSON lines (or a JSON array / directory of them), one question per record:

* ``question`` (or ``input``/``instruction``): the user's message;
* ``label`` (or ``level``): the lowest acceptable level, ``none``, ``urgent``, ``emergency`` or ``refuse``;
* ``presentation`` (optional): the emergency presentation it is about (benign look-alikes carry the
  presentation they resemble), for the per-presentation figures;
* ``history`` (optional): earlier user turns, oldest first (strings, or ``[question, answer]`` pairs);
* ``split`` (optional): e.g. ``dev`` / ``heldout``; ``--split`` keeps one, figures are also given per split;
* ``category`` (optional): what kind of question it is (``self_harm``, ``past_event``, ``chronic``...), for
  the per-category figures.

Scoring: a question labelled ``urgent``/``emergency`` is caught when triage returns a red flag at least
that severe (a refusal does not count); one labelled ``refuse`` is caught when it is refused. A
``none`` question is a false alarm when anything fires. ``recall`` = caught / labelled red flags,
``false_alarm_rate`` = false alarms / ``none`` questions, overall, per presentation, per split and per
category. ``emergency`` (in ``details``): precision and recall of the level ``emergency`` itself (a question
labelled ``emergency`` against one that gets it; ``refuse`` labels left out), the figure real questions are
judged by: an emergency banner on an ordinary question teaches people to ignore it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from qihuang.answer.triage import LEVELS, RuleSet, load_rules, triage, warm
from qihuang.eval.base import Dataset, Example, RunContext, Skipped, Task, TaskOption
from qihuang.eval.dataio import data_files, first, iter_rows

_SEVERITY = {name: i for i, name in enumerate(LEVELS)}


class _Bad(ValueError):
    pass


def _history(raw: Any) -> list[str]:
    if raw is None or raw == "":
        return []
    if not isinstance(raw, list):
        raise _Bad("field 'history': expected a list of earlier user turns")
    turns = []
    for turn in raw:
        if isinstance(turn, (list, tuple)) and turn and isinstance(turn[0], str):
            turns.append(turn[0])
        elif isinstance(turn, str):
            turns.append(turn)
        else:
            raise _Bad("field 'history': each turn must be a string or a [question, answer] pair")
    return turns


def _example(row: dict, file: Path, line: int, key: str | None = None) -> Example:
    question = first(row, "question", "input", "instruction")
    if not isinstance(question, str) or not question.strip():
        raise _Bad("field 'question': missing or empty")
    label = first(row, "label", "level")
    if label not in LEVELS:
        raise _Bad(f"field 'label': expected one of {list(LEVELS)}, got {label!r}")
    fields = {"label": label, "turns": _history(row.get("history")),
              "presentation": str(row.get("presentation") or "unspecified"), "split": row.get("split"),
              "category": row.get("category")}
    return Example(id=str(row.get("id") or key or f"{file.name}:{line}"), question=question, reference=label,
                   subject=fields["presentation"], source=str(file), line=line, fields=fields)


def caught(label: str, level: str) -> bool:
    """Whether predicting ``level`` for a question labelled ``label`` (not ``none``) catches it."""
    if label == "refuse":
        return level == "refuse"
    return level != "refuse" and _SEVERITY[level] >= _SEVERITY[label]


def emergency_figures(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Precision and recall of the level ``emergency`` over (label, level) pairs (``refuse`` labels left out)."""
    pairs = [(label, level) for label, level in pairs if label != "refuse"]
    tp = sum(label == "emergency" and level == "emergency" for label, level in pairs)
    raised = sum(level == "emergency" for _, level in pairs)
    gold = sum(label == "emergency" for label, _ in pairs)
    return {"raised": raised, "labelled": gold, "both": tp,
            "precision": round(100 * tp / raised, 2) if raised else None,
            "recall": round(100 * tp / gold, 2) if gold else None}


def _rates(rows: list[dict]) -> dict[str, Any]:
    red = [r for r in rows if r["label"] != "none"]
    benign = [r for r in rows if r["label"] == "none"]
    missed = sum(not r["caught"] for r in red)
    alarms = sum(r["false_alarm"] for r in benign)
    return {"n_red_flags": len(red), "missed": missed,
            "recall": round(100 * (len(red) - missed) / len(red), 2) if red else None,
            "n_benign": len(benign), "false_alarms": alarms,
            "false_alarm_rate": round(100 * alarms / len(benign), 2) if benign else None}


class TriageTask(Task):
    """Recall of red flags and false-alarm rate on benign look-alikes, per presentation."""

    name = "triage"
    description = "red-flag recall and false-alarm rate of the triage rules, per presentation (no model)"
    headline = ("recall", "false_alarm_rate", "missed", "false_alarms")
    options = (TaskOption("split", str, None, "keep only the questions whose 'split' field is this value"),
               TaskOption("rules", str, None, "red-flag rule file (default: the packaged red_flags.yaml)"))

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._rules: RuleSet | None = load_rules(self.config["rules"]) if self.config["rules"] else None

    def load(self, path: Path) -> Dataset:
        examples, skipped = [], []
        for file in data_files(Path(path), (".jsonl", ".json")):
            for line, row, error, key in iter_rows(file):
                try:
                    if error:
                        raise _Bad(error)
                    ex = _example(row, file, line, key)
                except _Bad as exc:
                    skipped.append(Skipped(str(file), line, str(exc)))
                    continue
                if self.config["split"] is None or ex.fields["split"] == self.config["split"]:
                    examples.append(ex)
        return Dataset(examples, skipped)

    def needs_model(self, examples: list[Example]) -> bool:
        return False

    def prepare(self, dataset: Dataset, ctx: RunContext) -> None:
        warm(self._rules)  # train the learned backstop before timing (questions_per_s)

    def predict(self, batch: list[Example], ctx: RunContext) -> list[dict]:
        rows = []
        for ex in batch:
            t0 = time.perf_counter()
            tri = triage(ex.question, self._rules, history=ex.fields["turns"])
            row = {"id": ex.id, "question": ex.question, "prediction": tri.message, "reference": ex.reference,
                   "history": ex.fields["turns"], "level": tri.level, "matched": tri.matched,
                   "seconds": time.perf_counter() - t0}
            row.update(self.score_example(ex, tri.level, ctx))
            rows.append(row)
        return rows

    def score_example(self, example: Example, prediction: str, ctx: RunContext) -> dict:
        label = example.fields["label"]
        out = {"label": label, "presentation": example.fields["presentation"], "split": example.fields["split"],
               "category": example.fields["category"]}
        if label == "none":
            out.update(caught=None, false_alarm=prediction != "none")
        else:
            out.update(caught=caught(label, prediction), false_alarm=None)
        return out

    def aggregate(self, rows: list[dict]) -> dict:
        scores: dict[str, Any] = {"n": len(rows), **_rates(rows)}
        seconds = sum(r.get("seconds", 0.0) for r in rows)
        if seconds > 0:
            scores["questions_per_s"] = round(len(rows) / seconds, 1)
        groups: dict[str, dict[str, list[dict]]] = {key: defaultdict(list) for key in ("presentation", "split",
                                                                                        "category")}
        for r in rows:
            for key, g in groups.items():
                if r.get(key):
                    g[r[key]].append(r)
        details = {f"by_{key}": {name: _rates(rs) for name, rs in sorted(g.items())} for key, g in groups.items()}
        details["emergency"] = emergency_figures([(r["label"], r["level"]) for r in rows if "level" in r])
        details["missed"] = [{"id": r["id"], "question": r["question"], "label": r["label"], "level": r["level"]}
                             for r in rows if r["caught"] is False]
        details["false_alarms"] = [{"id": r["id"], "question": r["question"], "level": r["level"],
                                    "matched": r["matched"]} for r in rows if r["false_alarm"]]
        notes = [f"{len(details['missed'])} red flag(s) missed, {len(details['false_alarms'])} false alarm(s)"]
        return {"scores": scores, "details": details, "notes": notes}
