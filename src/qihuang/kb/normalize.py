"""Text normalization for matching: full/half width (NFKC), traditional → simplified, lower case.

Normalization is done character by character so that every normalized character maps back
to exactly one character of the original text (offsets stay valid).
"""

from __future__ import annotations

import unicodedata

from opencc import OpenCC

_T2S = OpenCC("t2s")
_CACHE: dict[str, str] = {}


def norm_char(ch: str) -> str:
    """Normalized form of one character (a single character, or '' when it normalizes away)."""
    out = _CACHE.get(ch)
    if out is None:
        n = unicodedata.normalize("NFKC", ch)
        if len(n) != 1:  # keep a 1:1 mapping: characters that expand keep their own form
            n = ch
        n = _T2S.convert(n)
        if len(n) != 1:
            n = ch
        out = _CACHE[ch] = n.lower()
    return out


def normalize(text: str) -> str:
    """Normalized text of the same length as ``text`` (the last few thousand texts are remembered: one
    question is normalized by several steps of retrieval)."""
    out = _RECENT.get(text)
    if out is None:
        out = "".join([norm_char(c) for c in text])
        if len(_RECENT) >= _RECENT_MAX:
            _RECENT.clear()
        _RECENT[text] = out
    return out


_RECENT: dict[str, str] = {}
_RECENT_MAX = 4096


_PUNCT_CATEGORIES = ("P", "S", "Z")


def normalize_loose(text: str) -> str:
    """Normalized text with punctuation, symbols and spaces removed (for value matching)."""
    return "".join(c for c in normalize(text) if not unicodedata.category(c).startswith(_PUNCT_CATEGORIES))
