"""A learned backstop for red-flag triage: character n-grams + logistic regression, calibrated to the
share of red flags that real questions have.

Hand-written patterns catch the wording they were written for and miss new wording (see
``benchmarks/triage/README.md``), so triage also asks small classifiers. They are trained on
``resources/triage_examples.jsonl``: the parts of qihuang's own triage question sets that were tuned on
(never a held-out part) and ordinary questions written for it in many styles (chronic complaints, baby
care, cosmetic, pregnancy food, drug and cost questions) — most real questions are not emergencies, and a
model trained on half red flags sees one in every symptom word. Examples are weighted so that red flags
make up ``red_share`` of the weight (``model.red_share`` in ``red_flags.yaml``), so the probabilities are
calibrated to that base rate. Three logistic regressions share one character 1-3-gram TF-IDF: red flag
vs none, emergency vs the rest, and suicidal intent (rows with ``"topic": "self_harm"``) vs the rest. They
read what the question says now (``Reading.current_text``: negated clauses and past or long-standing
stretches removed), in training as in use. Trained once per process on first use (about a second);
refusals stay rule-only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qihuang.errors import ConfigError
from qihuang.paths import resource

LABELS = ("none", "urgent", "emergency")
SELF_HARM = "self_harm"
_SPACES = re.compile(r"\s\s+")


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
    """Character 1-3-gram TF-IDF and logistic regressions on it: red flag (``urgent`` or ``emergency``) vs
    ``none``; ``emergency`` vs the rest (a dog bite is a red flag but an urgent one); suicidal intent vs the
    rest (None when the examples mark none).

    Scoring one question is done here from the fitted weights (the same arithmetic as scikit-learn's
    ``transform`` and ``predict_proba``, a test checks it), about a hundred times faster for one short text."""

    vectorizer: object
    red: object
    emergency: object
    self_harm: object | None = None

    def __post_init__(self):
        idf = self.vectorizer.idf_
        heads = [m for m in (self.red, self.emergency, self.self_harm) if m is not None]
        coefs = [m.coef_[0] for m in heads]
        self._terms = {t: (idf[i], *(c[i] for c in coefs)) for t, i in self.vectorizer.vocabulary_.items()}
        self._bias = [float(m.intercept_[0]) for m in heads]
        self._sign = [1.0 if m.classes_[1] else -1.0 for m in heads]
        lo, hi = self.vectorizer.ngram_range
        self._sizes = range(lo, hi + 1)

    def _probabilities(self, text: str) -> list[float]:
        text = _SPACES.sub(" ", text)
        counts: dict[str, int] = {}
        for n in self._sizes:
            for i in range(len(text) - n + 1):
                gram = text[i:i + n]
                if gram in self._terms:
                    counts[gram] = counts.get(gram, 0) + 1
        values = [(1.0 + math.log(c)) * self._terms[g][0] for g, c in counts.items()]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        out = []
        for k, (bias, sign) in enumerate(zip(self._bias, self._sign), 1):
            score = sum(v * self._terms[g][k] for v, g in zip(values, counts)) / norm + bias
            out.append(_sigmoid(sign * score))
        return out

    def probabilities(self, text: str) -> tuple[float, float]:
        """(P(red flag), P(emergency)) for prepared ``text`` (``Reading.current_text``)."""
        red, emergency = self._probabilities(text)[:2]
        return red, emergency

    def self_harm_probability(self, text: str) -> float:
        """P(suicidal intent) for prepared ``text`` (0.0 when the model has no self-harm head)."""
        return self._probabilities(text)[2] if self.self_harm is not None else 0.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def build(examples: Examples, c: float = 16.0, red_share: float = 0.1) -> TriageModel:
    """The fitted model on already prepared texts, weighted so red flags carry ``red_share``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x = vectorizer.fit_transform(examples.texts)
    w = weights(examples.labels, red_share)
    fit = lambda y: LogisticRegression(C=c, solver="liblinear", random_state=0).fit(x, y, sample_weight=w)  # noqa: E731
    self_harm = fit(examples.self_harm) if any(examples.self_harm) else None
    return TriageModel(vectorizer, fit([label != "none" for label in examples.labels]),
                       fit([label == "emergency" for label in examples.labels]), self_harm)


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
