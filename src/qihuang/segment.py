"""Chinese word segmentation (jieba), shared by answer verification and the evaluation's text metrics."""

from __future__ import annotations

import logging
from functools import lru_cache


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def segment(text: str) -> list[str]:
    """jieba tokens of ``text`` without whitespace tokens."""
    return [t for t in _jieba().lcut(text or "") if t.strip()]


def word_boundaries(text: str) -> set[int]:
    """Offsets in ``text`` where a jieba word starts or ends."""
    cuts = {0, len(text)}
    for _word, start, end in _jieba().tokenize(text):
        cuts.update((start, end))
    return cuts
