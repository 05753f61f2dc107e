"""The learned attribute detector (kb/intent.py) and how the linker combines it with the cues."""

from __future__ import annotations

import numpy as np
import pytest

from kb_fixture import make_tiny_kb
from qihuang.kb import intent as intent_mod
from qihuang.kb.intent import MASK, IntentDetector, mask_mentions, training_examples
from qihuang.kb.link import Linker

SMALL = [  # a few phrasings, so that unit tests train in milliseconds
    (f"{MASK}有什么症状？", "symptoms"), (f"{MASK}会有哪些表现", "symptoms"), (f"得了{MASK}身上会怎样", "symptoms"),
    (f"{MASK}挂什么科", "department"), (f"{MASK}去哪个科室看", "department"), (f"看{MASK}找哪个科", "department"),
    (f"{MASK}吃什么药", "drugs"), (f"{MASK}用什么药治", "drugs"), (f"治{MASK}的药有哪些", "drugs"),
    (f"介绍一下{MASK}", None), (f"{MASK}是什么", None), (f"说说{MASK}", None),
]


def test_scoring_matches_scikit_learn():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    det = IntentDetector.train(SMALL, threshold=0.5)
    texts = [t for t, _ in SMALL]
    y = MultiLabelBinarizer().fit_transform([[a or intent_mod.NONE] for _, a in SMALL])
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, lowercase=False)
    model = OneVsRestClassifier(LogisticRegression(C=10.0, solver="liblinear", class_weight="balanced"))
    model.fit(vec.fit_transform(texts), y)
    for text in [f"{MASK}会有啥表现", f"得了{MASK}该去哪个科", "完全无关的一句话"]:
        ours = det.probabilities(text)
        theirs = model.predict_proba(vec.transform([text]))[0]
        assert np.allclose([ours[label] for label in det.labels], theirs, atol=1e-9)


def test_predict_thresholds_and_overview():
    det = IntentDetector.train(SMALL, threshold=0.5)
    assert det.predict(f"{MASK}一般都有什么表现啊")[0][0] == "symptoms"
    assert det.predict(f"得了{MASK}该去哪个科室")[0][0] == "department"
    assert det.predict(f"介绍一下{MASK}吧") == []  # the overview label wins
    assert det.with_threshold(0.999).predict(f"{MASK}一般都有什么表现啊") == []


def test_training_examples_mask_the_entity():
    examples = training_examples()
    assert len(examples) > 300
    assert all(MASK in t or a is not None for t, a in examples)  # overview wordings name the entity
    assert not any("{entity}" in t for t, _ in examples)
    assert {a for _, a in examples} >= {"symptoms", "drugs", "indications", "adverse_reactions", None}


def test_default_is_cached_under_qihuang_home(qihuang_home, monkeypatch):
    monkeypatch.setattr(intent_mod, "_MEMO", {})
    first = IntentDetector.default()
    cached = list((qihuang_home / "cache").glob("intent-*.joblib"))
    assert len(cached) == 1
    monkeypatch.setattr(intent_mod, "_MEMO", {})
    monkeypatch.setattr(IntentDetector, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    again = IntentDetector.default()
    assert again.labels == first.labels and np.array_equal(again.model.coef, first.model.coef)


@pytest.mark.parametrize("bump", ["detector", "classifier"])
def test_a_new_format_never_loads_an_older_cache(qihuang_home, monkeypatch, bump):
    monkeypatch.setattr(intent_mod, "_MEMO", {})
    small = IntentDetector.train(SMALL, threshold=0.5)
    monkeypatch.setattr(IntentDetector, "train", classmethod(lambda *a, **k: small))
    IntentDetector.default()
    monkeypatch.setattr(intent_mod, "_MEMO", {})
    if bump == "detector":
        monkeypatch.setattr(intent_mod, "CACHE_FORMAT", intent_mod.CACHE_FORMAT + 1)
    else:
        monkeypatch.setattr(intent_mod.textclf, "FORMAT", intent_mod.textclf.FORMAT + 1)
    trained = []
    monkeypatch.setattr(IntentDetector, "train", classmethod(lambda *a, **k: trained.append(1) or small))
    IntentDetector.default()
    assert trained == [1] and len(list((qihuang_home / "cache").glob("intent-*.joblib"))) == 2


@pytest.fixture(scope="module")
def kb(tiny_db):
    kb = make_tiny_kb(tiny_db)
    kb._linker = Linker.build(kb, intent=IntentDetector.train(SMALL, threshold=0.3))
    yield kb
    kb.close()


def test_cues_win_and_the_detector_fills_in(kb):
    # a cue fires: the detector is not asked (挂什么科 -> department, whatever the detector would say)
    assert kb.detect_attributes("高血压挂什么科") == ["department"]
    # no cue: the detector answers (a wording in none of the cue lists)
    text = "高血压身上会有哪些感受"
    assert kb.linker._cue_groups(text, kb.find_entities(text)) == []
    assert kb.detect_attributes(text)[0] == "symptoms"
    assert {f.attribute for f in kb.link(text).facts} == {"symptoms"}
    # no entity, or an overview wording: nothing is asked, the defaults apply
    assert kb.detect_attributes("今天身上会有哪些感受") == []
    assert kb.link("说说糖尿病").attributes == []


def test_mask_mentions(kb):
    text = "偏頭痛和高血压有什么症状"
    assert mask_mentions(text, kb.find_entities(text)) == f"{MASK}和{MASK}有什么症状"
