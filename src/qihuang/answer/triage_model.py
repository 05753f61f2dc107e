"""A learned backstop for red-flag triage: character n-grams + logistic regression, calibrated to the
share of red flags that real questions have.

Hand-written patterns catch the wording they were written for and miss new wording (see
``benchmarks/triage/README.md``), so triage also asks a small classifier. It is trained on
``resources/triage_examples.jsonl``: the parts of qihuang's own triage question sets that were tuned on
(never a held-out part) and ordinary questions written for it in many styles (chronic complaints, baby
care, cosmetic, pregnancy food, drug and cost questions) — most real questions are not emergencies, and a
model trained on half red flags sees one in every symptom word. Examples are weighted so that red flags
make up ``red_share`` of the weight (``model.red_share`` in ``red_flags.yaml``), so its probability is
calibrated to that base rate. It reads what the question says now (``Reading.current_text``: negated
clauses and past or long-standing stretches removed), in training as in use. Trained once per process on
first use (about a second); refusals stay rule-only.
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


def read_examples(path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """Texts (earlier user turns joined with the question) and labels of the training file."""
    path = Path(path) if path else resource("triage_examples.jsonl")
    texts, labels = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            texts.append("\n".join([*row.get("history", []), row["question"]]))
            labels.append(row["label"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{i}: expected {{'question', 'label'[, 'history']}}: {exc}") from None
        if labels[-1] not in LABELS:
            raise ConfigError(f"{path}:{i}: field 'label' must be none, urgent or emergency")
    return texts, labels


def weights(labels: list[str], red_share: float) -> list[float]:
    """Per-example weights that give red flags (``urgent``/``emergency``) ``red_share`` of the total."""
    n_red = sum(label != "none" for label in labels)
    n_none = len(labels) - n_red
    if not n_red or not n_none:
        raise ConfigError("the triage examples need both red flags and 'none' questions")
    w_red, w_none = red_share / n_red, (1 - red_share) / n_none
    scale = len(labels)
    return [scale * (w_red if label != "none" else w_none) for label in labels]


_SPACES = re.compile(r"\s\s+")


@dataclass
class TriageModel:
    """Character 1-3-gram TF-IDF and two logistic regressions on it: red flag (``urgent`` or
    ``emergency``) vs ``none``, and ``emergency`` vs the rest (so a question like a dog bite, a red flag but
    an urgent one, can score high on the first and low on the second).

    Scoring one question is done here from the fitted weights (the same arithmetic as scikit-learn's
    ``transform`` and ``predict_proba``, a test checks it), about a hundred times faster for one short text."""

    vectorizer: object
    red: object
    emergency: object

    def __post_init__(self):
        idf = self.vectorizer.idf_
        red, em = self.red.coef_[0], self.emergency.coef_[0]
        self._terms = {t: (idf[i], red[i], em[i]) for t, i in self.vectorizer.vocabulary_.items()}
        self._bias = (float(self.red.intercept_[0]), float(self.emergency.intercept_[0]))
        self._sign = (1.0 if self.red.classes_[1] else -1.0, 1.0 if self.emergency.classes_[1] else -1.0)
        lo, hi = self.vectorizer.ngram_range
        self._sizes = range(lo, hi + 1)

    def probabilities(self, text: str) -> tuple[float, float]:
        """(P(red flag), P(emergency)) for prepared ``text`` (``Reading.current_text``)."""
        text = _SPACES.sub(" ", text)
        counts: dict[str, int] = {}
        for n in self._sizes:
            for i in range(len(text) - n + 1):
                gram = text[i:i + n]
                if gram in self._terms:
                    counts[gram] = counts.get(gram, 0) + 1
        values = [(1.0 + math.log(c)) * self._terms[g][0] for g, c in counts.items()]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        red = sum(v * self._terms[g][1] for v, g in zip(values, counts)) / norm + self._bias[0]
        em = sum(v * self._terms[g][2] for v, g in zip(values, counts)) / norm + self._bias[1]
        return _sigmoid(self._sign[0] * red), _sigmoid(self._sign[1] * em)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def build(texts: list[str], labels: list[str], c: float = 16.0, red_share: float = 0.1) -> TriageModel:
    """The fitted model on already prepared texts, weighted so red flags carry ``red_share``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2)
    x = vectorizer.fit_transform(texts)
    w = weights(labels, red_share)
    fit = lambda y: LogisticRegression(C=c, solver="liblinear", random_state=0).fit(x, y, sample_weight=w)  # noqa: E731
    return TriageModel(vectorizer, fit([label != "none" for label in labels]),
                       fit([label == "emergency" for label in labels]))


def prepared_examples(path: str | Path | None = None) -> tuple[list[str], list[str]]:
    """The training examples as the backstop reads them (current text only); empty ones dropped."""
    from qihuang.answer.triage import read

    pairs = [(read(text).current_text(), label) for text, label in zip(*read_examples(path))]
    pairs = [(t, label) for t, label in pairs if t.strip()]
    return [t for t, _ in pairs], [label for _, label in pairs]


@lru_cache(maxsize=2)
def default_model(c: float = 16.0, red_share: float = 0.1):
    """The model trained on the packaged examples (cached per process)."""
    return build(*prepared_examples(), c=c, red_share=red_share)
