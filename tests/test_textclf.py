"""The shared text classifier (textclf.py): fitted with scikit-learn, scored by hand with the same arithmetic."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from qihuang.errors import ConfigError
from qihuang.textclf import TextClassifier, fit, ngrams

TEXTS = ["头痛三天了", "头痛吃什么药", "胸口痛  出冷汗", "胸痛喘不上气", "孩子发烧咳嗽", "孩子咳嗽吃什么药",
         "胸口压着痛", "喘不上气 嘴唇发紫", "皮肤有点痒", "脸上长痘痘", "被狗咬了一口", "手指被划破了"]
RED = [False, False, True, True, False, False, True, True, False, False, True, False]
SKIN = [False, False, False, False, False, False, False, False, True, True, False, True]
UNSEEN = ["胸痛 出汗", "孩子头痛", "完全无关的一句话", "x", "", "胸口   痛痛痛"]


@pytest.mark.parametrize("text", ["头痛", "a  b\t\tc", "", "x", "胸口   痛痛痛"])
@pytest.mark.parametrize("ngram", [(1, 3), (2, 4)])
def test_ngrams_are_the_ones_scikit_learn_counts(text, ngram):
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer = TfidfVectorizer(analyzer="char", ngram_range=ngram, lowercase=False).build_analyzer()
    assert ngrams(text, *ngram) == analyzer(text)


@pytest.mark.parametrize("min_df, weighted, class_weight", [(1, False, "balanced"), (2, True, None)])
def test_scoring_matches_scikit_learn(min_df, weighted, class_weight):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    w = [3.0 if r else 1.0 for r in RED] if weighted else None
    clf = fit(TEXTS, {"red": RED, "skin": SKIN}, c=4.0, min_df=min_df, sample_weight=w, class_weight=class_weight)
    assert clf.heads == ("red", "skin") and clf.coef.shape == (len(clf.vocabulary), 2)
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=False, min_df=min_df)
    x = vec.fit_transform(TEXTS)
    models = [LogisticRegression(C=4.0, solver="liblinear", class_weight=class_weight).fit(x, y, sample_weight=w)
              for y in (RED, SKIN)]
    for text in UNSEEN + TEXTS:
        xt = vec.transform([text])
        expected = [m.predict_proba(xt)[0][list(m.classes_).index(True)] for m in models]
        assert np.allclose(clf.probabilities(text), expected, atol=1e-9, rtol=0), text


def test_extreme_scores_give_probabilities_without_overflow():
    clf = TextClassifier({"痛": 0}, np.ones(1), np.zeros((1, 2)), np.array([800.0, -800.0]), ("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert clf.probabilities("痛").tolist() == [1.0, 0.0]


@pytest.mark.parametrize("heads, message", [
    ({}, "at least one head"), ({"red": [True] * len(TEXTS)}, "head 'red'"), ({"skin": SKIN[:3]}, "head 'skin'"),
])
def test_bad_heads_are_named(heads, message):
    with pytest.raises(ConfigError, match=message):
        fit(TEXTS, heads, c=1.0)
