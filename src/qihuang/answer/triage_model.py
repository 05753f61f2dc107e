"""A learned backstop for red-flag triage: character n-grams + logistic regression, calibrated to the
share of red flags that real questions have.

Hand-written patterns catch the wording they were written for and miss new wording (see
``benchmarks/triage/README.md``), so triage also asks small classifiers. They are trained on
``resources/triage_examples.jsonl``: the parts of qihuang's own triage question sets that were tuned on
(never a held-out part) and ordinary questions written for it in many styles (chronic complaints, baby
care, cosmetic, pregnancy food, drug and cost questions) — most real questions are not emergencies, and a
model trained on half red flags sees one in every symptom word. Examples are weighted so that red flags
make up ``red_share`` of the weight (``model.red_share`` in ``red_flags.yaml``), so the probabilities are
calibrated to that base rate. Three logistic regressions share one character 1-3-gram TF-IDF
(:mod:`qihuang.textclf`): red flag vs none, emergency vs the rest, and suicidal intent (rows with
``"topic": "self_harm"``) vs the rest. They read what the question says now (``Reading.current_text``:
negated clauses and past or long-standing stretches removed), in training as in use. Trained once per
process on first use (about a second); refusals stay rule-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qihuang.errors import ConfigError
from qihuang.paths import resource
from qihuang.textclf import TextClassifier, fit

LABELS = ("none", "urgent", "emergency")
SELF_HARM = "self_harm"


@dataclass(frozen=True)
class Examples:
    """The training questions: texts (earlier user turns joined with the question), labels, and whether
    each says suicidal intent (``topic`` self_harm)."""

    texts: list[str]
    labels: list[str]
    self_harm: list[bool]


def read_examples(path: str | Path | None = None) -> Examples:
    """The training file (default: the packaged ``triage_examples.jsonl``); errors name the line."""
    path = Path(path) if path else resource("triage_examples.jsonl")
    texts, labels, self_harm = [], [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append("\n".join([*row.get("history", []), row["question"]]))
            labels.append(row["label"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{i}: expected {{'question', 'label'[, 'history', 'topic']}}: {exc}") from None
        if labels[-1] not in LABELS:
            raise ConfigError(f"{path}:{i}: field 'label' must be none, urgent or emergency")
        self_harm.append(row.get("topic") == SELF_HARM)
    return Examples(texts, labels, self_harm)


def weights(labels: list[str], red_share: float) -> list[float]:
    """Per-example weights that give red flags (``urgent``/``emergency``) ``red_share`` of the total."""
    n_red = sum(label != "none" for label in labels)
    n_none = len(labels) - n_red
    if not n_red or not n_none:
        raise ConfigError("the triage examples need both red flags and 'none' questions")
    w_red, w_none = red_share / n_red, (1 - red_share) / n_none
    scale = len(labels)
    return [scale * (w_red if label != "none" else w_none) for label in labels]


@dataclass
class TriageModel:
    """A text classifier (:mod:`qihuang.textclf`) with the heads ``red`` (``urgent`` or ``emergency`` vs
    ``none``), ``emergency`` (vs the rest: a dog bite is a red flag but an urgent one) and, when the examples
    mark any, ``self_harm`` (suicidal intent vs the rest). Scored from the fitted weights, without
    scikit-learn."""

    classifier: TextClassifier

    def probabilities(self, text: str) -> tuple[float, float]:
        """(P(red flag), P(emergency)) for prepared ``text`` (``Reading.current_text``)."""
        red, emergency = self.classifier.probabilities(text)[:2].tolist()
        return red, emergency

    def self_harm_probability(self, text: str) -> float:
        """P(suicidal intent) for prepared ``text`` (0.0 when the model has no self-harm head)."""
        if SELF_HARM not in self.classifier.heads:
            return 0.0
        return float(self.classifier.probabilities(text)[self.classifier.heads.index(SELF_HARM)])


def build(examples: Examples, c: float = 16.0, red_share: float = 0.1) -> TriageModel:
    """The fitted model on already prepared texts, weighted so red flags carry ``red_share``."""
    heads = {"red": [label != "none" for label in examples.labels],
             "emergency": [label == "emergency" for label in examples.labels]}
    if any(examples.self_harm):
        heads[SELF_HARM] = examples.self_harm
    return TriageModel(fit(examples.texts, heads, c=c, min_df=2, sample_weight=weights(examples.labels, red_share)))


def subset(examples: Examples, index) -> Examples:
    """The examples at ``index`` (for cross-validation)."""
    return Examples([examples.texts[i] for i in index], [examples.labels[i] for i in index],
                    [examples.self_harm[i] for i in index])


def prepared_examples(path: str | Path | None = None) -> Examples:
    """The training examples as the backstop reads them (current text only); empty ones dropped."""
    from qihuang.answer.triage import read

    raw = read_examples(path)
    keep = [(read(t).current_text(), label, sh) for t, label, sh in zip(raw.texts, raw.labels, raw.self_harm)]
    keep = [row for row in keep if row[0].strip()]
    return Examples([t for t, _, _ in keep], [label for _, label, _ in keep], [sh for _, _, sh in keep])


@lru_cache(maxsize=2)
def default_model(c: float = 16.0, red_share: float = 0.1) -> TriageModel:
    """The model trained on the packaged examples (cached per process)."""
    return build(prepared_examples(), c=c, red_share=red_share)
