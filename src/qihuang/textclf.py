"""Small text classifiers: character n-gram TF-IDF and logistic-regression heads, scored by hand.

Both learned helpers of question understanding use it: the attribute detector (``kb/intent.py``: one
head per attribute) and the triage backstop (``answer/triage_model.py``: red flag, emergency, suicidal
intent). :func:`fit` trains with scikit-learn (sublinear tf, smooth idf, l2 norm; one liblinear
logistic regression per head); the result is a plain :class:`TextClassifier` of arrays that scores one
text without scikit-learn, with the same arithmetic as ``TfidfVectorizer.transform`` and
``predict_proba`` (a test checks it), tens of microseconds per question::

    clf = fit(texts, {"red": is_red, "emergency": is_emergency}, c=16.0, min_df=2, sample_weight=w)
    clf.probabilities("我喘不上气")  # array([P(red), P(emergency)])

Texts are read as given (no lower-casing: the callers normalize before fitting and before scoring).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import add

import numpy as np

from qihuang.errors import ConfigError

FORMAT = 1  # the fields of TextClassifier: part of the key of any cache that pickles one
_SPACES = re.compile(r"\s\s+")  # scikit-learn's character analyzer folds runs of white space the same way


@dataclass
class TextClassifier:
    """Character n-gram TF-IDF weights and one linear head per label (P(head) = sigmoid(x·coef + intercept))."""

    vocabulary: dict[str, int]  # n-gram -> feature index
    idf: np.ndarray  # (n_features,)
    coef: np.ndarray  # (n_features, n_heads)
    intercept: np.ndarray  # (n_heads,)
    heads: tuple[str, ...]
    ngram: tuple[int, int] = (1, 3)

    def probabilities(self, text: str) -> np.ndarray:
        """P(head) for each head, in the order of :attr:`heads`."""
        counts: dict[int, int] = {}  # feature index -> term frequency
        for j in map(self.vocabulary.get, ngrams(text, *self.ngram)):
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        scores = self.intercept.copy()
        if counts:
            idx = np.fromiter(counts, dtype=np.intp, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            w = (1.0 + np.log(tf)) * self.idf[idx]  # sublinear tf times idf, then l2-normalized
            scores += (w / math.sqrt(float(w @ w))) @ self.coef[idx]
        return 0.5 * (1.0 + np.tanh(0.5 * scores))  # the logistic sigmoid, without overflow


def ngrams(text: str, lo: int, hi: int) -> list[str]:
    """The character n-grams of ``text`` for ``lo <= n <= hi`` that scikit-learn's ``char`` analyzer counts (runs
    of white space read as one space)."""
    text = _SPACES.sub(" ", text)
    out: list[str] = []
    grams = list(text)  # the 1-grams; each pass appends the next character to every gram
    for n in range(1, hi + 1):
        if n > 1:
            grams = list(map(add, grams, text[n - 1:]))
        if n >= lo:
            out += grams
    return out


def fit(texts: Sequence[str], heads: Mapping[str, Sequence[bool]], *, c: float, min_df: int = 1,
        sample_weight: Sequence[float] | None = None, class_weight: str | None = None,
        ngram: tuple[int, int] = (1, 3)) -> TextClassifier:
    """Fit the TF-IDF on ``texts`` and one logistic regression (inverse regularization ``c``, liblinear) per
    head of ``heads`` (name -> whether each text is a positive example). ``min_df``: n-grams seen in fewer
    texts are dropped; ``sample_weight``: per-text weights; ``class_weight``: scikit-learn's (``"balanced"``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if not heads:
        raise ConfigError("a text classifier needs at least one head")
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=ngram, sublinear_tf=True, lowercase=False,
                                 min_df=min_df)
    x = vectorizer.fit_transform(texts)
    coefs, intercepts = [], []
    for name, labels in heads.items():
        y = np.asarray(labels, dtype=bool)
        if len(y) != len(texts) or y.all() or not y.any():
            raise ConfigError(f"head {name!r}: needs one label per text ({len(texts)}), some true and some false")
        model = LogisticRegression(C=c, solver="liblinear", class_weight=class_weight, random_state=0)
        model.fit(x, y, sample_weight=sample_weight)
        coefs.append(model.coef_[0])  # classes_ are [False, True]: the weights of True
        intercepts.append(model.intercept_[0])
    vocabulary = {term: int(j) for term, j in vectorizer.vocabulary_.items()}
    return TextClassifier(vocabulary, vectorizer.idf_.astype(np.float64), np.stack(coefs, axis=1),
                          np.array(intercepts, dtype=np.float64), tuple(heads), ngram)
