"""A learned detector of the asked attribute, for wordings the cue lexicon does not list.

Trained on the data-building question phrasings (``resources/phrasings.yaml``: every patient, clinician
and follow-up wording of every attribute, with the entity masked) plus the overview wordings of
``lexicon.yaml`` (``intent.none``: questions that ask nothing specific), as a character 1-3-gram TF-IDF
and one logistic regression per attribute (:mod:`qihuang.textclf`: one-vs-rest, liblinear, balanced class
weights; the overview wordings are a label of their own). It is trained at first use and cached under
``$QIHUANG_HOME/cache`` keyed by a hash of its training inputs and format (a second process loads it in
milliseconds); scoring is done with the learned weights directly (numpy), tens of microseconds per question.

How :meth:`qihuang.kb.link.Linker.detect_attribute_groups` combines it with the cues: cues win when
any fires; otherwise the (at most two) attributes the detector gives at least ``intent.threshold``
probability form one group of alternatives, most probable first (the first one the entity has is meant),
unless the overview label is at least as probable as the best of them.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

from qihuang import textclf
from qihuang.fileio import atomic_write_bytes
from qihuang.kb.normalize import normalize

MASK = "□"  # stands for the entity mention, in training and in use
NONE = "_none"  # the label of overview wordings: asks for no particular attribute
CACHE_FORMAT = 2  # the fields of IntentDetector: part of the cache key, so an older pickle is never loaded
_MEMO: dict[str, "IntentDetector"] = {}


def mask_mentions(text: str, mentions) -> str:
    """Normalized ``text`` with every mention replaced by one :data:`MASK` character."""
    norm = normalize(text)
    out, pos = [], 0
    for m in sorted(mentions or (), key=lambda m: m.start):
        if m.start < pos:
            continue
        out.append(norm[pos:m.start])
        out.append(MASK)
        pos = m.end
    out.append(norm[pos:])
    return "".join(out)


def training_examples(book=None, none: tuple[str, ...] | None = None) -> list[tuple[str, str | None]]:
    """(masked question, attribute or None) pairs from the phrasebook and the overview wordings."""
    from qihuang.phrasebook import load_phrasebook
    from qihuang.kb.lexicon import load_lexicon

    book = book or load_phrasebook()
    none = load_lexicon().intent.none if none is None else none
    out: list[tuple[str, str | None]] = []
    for phr in [*book.attributes.values(), *book.by_type.values()]:
        for pattern in (*phr.patient, *phr.clinician, *phr.followup):
            out.append((normalize(pattern.format(entity=MASK, label=phr.label)), phr.key))
    out += [(normalize(p.format(entity=MASK)), None) for p in none]
    return sorted(set(out), key=lambda x: (x[1] or "", x[0]))


@dataclass
class IntentDetector:
    """A text classifier with one head per attribute (and :data:`NONE`), and the probability threshold."""

    model: textclf.TextClassifier
    threshold: float

    @property
    def labels(self) -> tuple[str, ...]:
        """The attributes (and :data:`NONE`) it scores, in the order of its heads."""
        return self.model.heads

    @classmethod
    def train(cls, examples: list[tuple[str, str | None]], threshold: float, c: float = 10.0) -> "IntentDetector":
        """Fit on (text, attribute or None) pairs (scikit-learn; a second or two for the shipped set)."""
        labels = [a or NONE for _, a in examples]
        heads = {label: [x == label for x in labels] for label in sorted(set(labels))}
        return cls(textclf.fit([t for t, _ in examples], heads, c=c, class_weight="balanced"), threshold)

    @classmethod
    def default(cls) -> "IntentDetector":
        """The detector for the shipped phrasings: from memory, else the cache file, else trained now."""
        from importlib.metadata import version

        import joblib

        from qihuang.kb.lexicon import load_lexicon
        from qihuang.paths import home

        cfg = load_lexicon().intent
        examples = training_examples()
        inputs = [CACHE_FORMAT, textclf.FORMAT, examples, cfg.c, version("scikit-learn")]
        key = hashlib.sha256(json.dumps(inputs, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
        if key in _MEMO:
            return _MEMO[key].with_threshold(cfg.threshold)
        path = home() / "cache" / f"intent-{key}.joblib"
        detector = None
        if path.exists():
            try:
                detector = joblib.load(path)
            except Exception:  # noqa: BLE001 - a damaged cache is rebuilt
                detector = None
        if not isinstance(detector, cls):
            detector = cls.train(examples, cfg.threshold, cfg.c)
            buffer = io.BytesIO()
            joblib.dump(detector, buffer)
            atomic_write_bytes(path, buffer.getvalue())
        _MEMO[key] = detector
        return detector.with_threshold(cfg.threshold)

    def with_threshold(self, threshold: float) -> "IntentDetector":
        if threshold == self.threshold:
            return self
        return IntentDetector(self.model, threshold)

    def probabilities(self, masked: str) -> dict[str, float]:
        """Probability of each attribute for an already masked, normalized question."""
        return dict(zip(self.model.heads, self.model.probabilities(masked).tolist()))

    def predict(self, masked: str, top: int = 2) -> list[tuple[str, float]]:
        """Attributes at or above the threshold, most probable first (at most ``top``); nothing when the
        overview label is at least as probable as the best attribute."""
        probs = self.probabilities(masked)
        none = probs.pop(NONE, 0.0)
        found = sorted(((a, p) for a, p in probs.items() if p >= self.threshold), key=lambda x: -x[1])[:top]
        return [] if not found or none >= found[0][1] else found
