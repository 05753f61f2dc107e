"""A learned backstop for red-flag triage: character n-grams + logistic regression.

Hand-written patterns catch the wording they were written for and miss new wording (see
``benchmarks/triage/README.md``), so triage also asks a small classifier trained on qihuang's own
labelled questions (``resources/triage_examples.jsonl``: the parts of the triage question set that
were tuned on; the current held-out part is never in it). It fires when the probability of a red
flag reaches the threshold in ``red_flags.yaml`` (``model.threshold``, chosen by cross-validation on
the training questions alone, see ``benchmarks/triage_model_cv.py``); it tells a red flag from none,
not which kind, so its level is ``emergency`` (over-triage is the safe error for a backstop). Negated clauses are removed first and general questions are skipped, as
for the rules. Trained once per process on first use (well under a second); refusals stay rule-only.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from qihuang.errors import ConfigError
from qihuang.paths import resource

_NEGATED_CLAUSE = re.compile(r"^(也|并|都|还)?(没有|没|无|未|否认|并无|不是|已经不|不再)")
_CLAUSE = re.compile(r"[^,，。.;；!！?？\n]+")


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
        if labels[-1] not in ("none", "urgent", "emergency"):
            raise ConfigError(f"{path}:{i}: field 'label' must be none, urgent or emergency")
    return texts, labels


def strip_negated(text: str) -> str:
    """``text`` without the clauses that open with a negation ("没有胸痛，只是咳嗽" -> "只是咳嗽")."""
    return "，".join(c for c in _CLAUSE.findall(text) if not _NEGATED_CLAUSE.match(c.strip()))


def build(texts: list[str], labels: list[str], c: float = 4.0):
    """A fitted scikit-learn pipeline (char 1-3 grams, TF-IDF, class-balanced logistic regression),
    red flag (``urgent``/``emergency`` labels) vs ``none``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1),
                          LogisticRegression(C=c, class_weight="balanced", solver="liblinear", random_state=0))
    return model.fit([strip_negated(t) for t in texts], [label != "none" for label in labels])


@lru_cache(maxsize=2)
def default_model(path: str | None = None, c: float = 4.0):
    """The model trained on the packaged examples (cached per process)."""
    return build(*read_examples(path), c=c)


def red_flag_probability(model, text: str) -> float:
    """P(red flag) for normalized ``text``."""
    return float(model.predict_proba([strip_negated(text)])[0][list(model.classes_).index(True)])
