"""Names written with one typing error: a window of the question that differs from a KB name in one
character, where the two characters sound alike (高学压 -> 高血压, 阿莫西林交囊 -> 阿莫西林胶囊).

Chinese is typed by pinyin, so a wrong character is nearly always a homophone of the right one (tones
aside); a different-sounding character in the same place is another word (诺和泰 is no 诺和力, 司美格 no
贝美格). Only names of at least ``min_length`` characters are matched with a substitution: in shorter ones
one character is half the name. Homophones come from ``pypinyin`` (every reading of a character, no tone);
without it only exact windows match.
"""

from __future__ import annotations

from functools import lru_cache

_WILD = "\0"


@lru_cache(maxsize=65536)
def readings(char: str) -> frozenset[str]:
    """Toneless pinyin readings of one character (empty for non-Chinese characters or without pypinyin)."""
    if not "\u4e00" <= char <= "\u9fff":
        return frozenset()
    try:
        from pypinyin import Style, pinyin
    except ImportError:  # pragma: no cover - pypinyin is a dependency; degrade to exact matching
        return frozenset()
    return frozenset(pinyin(char, style=Style.NORMAL, heteronym=True)[0])


def homophones(a: str, b: str) -> bool:
    """Two different characters that share a reading."""
    return a != b and not readings(a).isdisjoint(readings(b))


class TypoIndex:
    """One-substitution index over name keys: each key with one position wildcarded -> the names it spells."""

    def __init__(self, keys: dict[str, str], min_length: int = 3, max_length: int = 24):
        self.min_length, self.max_length = min_length, max_length
        self._masked: dict[str, list[tuple[str, str]]] = {}  # masked key -> [(key, name)]
        self._lengths: set[int] = set()
        for key, name in keys.items():
            if not min_length <= len(key) <= max_length:
                continue
            self._lengths.add(len(key))
            for i in range(len(key)):
                self._masked.setdefault(key[:i] + _WILD + key[i + 1:], []).append((key, name))

    def find(self, norm: str) -> list[tuple[str, int, int]]:
        """(name, start, end) of every window of normalized ``norm`` that is a key with one character
        replaced by a homophone; longest first, then leftmost."""
        hits: dict[str, tuple[int, int, int]] = {}
        for n in sorted(self._lengths, reverse=True):
            for start in range(len(norm) - n + 1):
                window = norm[start:start + n]
                for i in range(n):
                    for key, name in self._masked.get(window[:i] + _WILD + window[i + 1:], ()):
                        if homophones(window[i], key[i]) and name not in hits:
                            hits[name] = (-n, start, start + n)
        return [(name, s, e) for name, (_n, s, e) in sorted(hits.items(), key=lambda kv: kv[1])]
