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
        self._pairs: set[str] = set()  # every two adjacent characters of a key
        for key, name in keys.items():
            if not min_length <= len(key) <= max_length:
                continue
            self._lengths.add(len(key))
            self._pairs.update(key[j:j + 2] for j in range(len(key) - 1))
            for i in range(len(key)):
                self._masked.setdefault(key[:i] + _WILD + key[i + 1:], []).append((key, name))

    def _runs(self, norm: str) -> list[int]:
        """Per position p, how many characters from p on read as a piece of some key: every two adjacent
        ones are adjacent in a key (at least 1: one character is always a piece)."""
        runs = [1] * (len(norm) + 1)
        runs[len(norm)] = 0
        for p in range(len(norm) - 2, -1, -1):
            if norm[p:p + 2] in self._pairs:
                runs[p] = runs[p + 1] + 1
        return runs

    def find(self, norm: str) -> list[tuple[str, int, int]]:
        """(name, start, end) of every window of normalized ``norm`` that is a key with one character
        replaced by a homophone; longest first, then leftmost.

        A window matches a key only if the characters left and right of the replaced one are pieces of
        that key, so only windows whose two sides read as key pieces (:meth:`_runs`) are looked up."""
        if not self._lengths:
            return []
        low, high, size = min(self._lengths), max(self._lengths), len(norm)
        runs = self._runs(norm)
        hits: dict[str, tuple[int, int, int, int]] = {}  # name -> (-length, start, replaced, order)
        order = 0
        for start in range(size - low + 1):
            left = runs[start]  # characters before the replaced one must be one piece
            for i in range(min(high, size - start)):
                if i > left:
                    break
                rest = start + i + 1  # characters after it, one piece too
                longest = min(high, size - start, i + 1 + (runs[rest] if rest < size else 0))
                for n in range(max(low, i + 1), longest + 1):
                    if n not in self._lengths:
                        continue
                    window = norm[start:start + n]
                    for key, name in self._masked.get(window[:i] + _WILD + window[i + 1:], ()):
                        if homophones(window[i], key[i]):
                            order += 1
                            found = (-n, start, i, order)
                            if name not in hits or found < hits[name]:
                                hits[name] = found
        return [(name, s, s - n) for name, (n, s, _i, _o) in sorted(hits.items(), key=lambda kv: kv[1])]
