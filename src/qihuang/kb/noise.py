"""Which KB names are generic words, not entities: one rule for linking and for answer verification.

A name is noise when it is a link stopword (``kb_schema.yaml``), or when it is only ever a value (no
entry of its own) and is not the target of a colloquial name (``lexicon.yaml``), and either

* **rare**: fewer than ``noise.min_support`` triples cite it, in a KB of at least ``noise.min_kb_triples``
  triples (CMeKG: 结合, 常见的, 有疼痛, 哮喘等, 理解, 可有, 诊断, 持续性 — extraction fragments and
  ordinary words cited once or twice); in a small KB every name is cited once or twice, so support is
  not evidence there. A rare name that reads as a medical name (``noise.rare_kept``: 肺结节, ADHD) stays; or
* **generic**: general Chinese uses it often (jieba dictionary frequency ≥ ``noise.min_word_freq``) and
  the KB cites it at most ``noise.max_specificity`` times as often as general text does, both as shares
  of their size (感觉: 11 of 967k triples vs 7,767 of 60M words, 0.09×; 咳嗽: 2,648 vs 1,235, 133×).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from qihuang.kb.lexicon import NoiseRule, load_lexicon


def word_frequencies(words: Iterable[str]) -> tuple[dict[str, int], int]:
    """jieba dictionary frequency of each of ``words`` that it lists, and the dictionary's total."""
    return _frequencies(frozenset(words))


@lru_cache(maxsize=4)
def _frequencies(wanted: frozenset[str]) -> tuple[dict[str, int], int]:
    import jieba

    found: dict[str, int] = {}
    total = 0
    with jieba.dt.get_dict_file() as fh:
        for raw in fh:
            parts = raw.decode("utf-8").split(" ")
            if len(parts) < 2:
                continue
            freq = int(parts[1])
            total += freq
            if parts[0] in wanted:
                found[parts[0]] = freq
    return found, total


def value_support(conn) -> dict[str, int]:
    """How many triples cite each value."""
    return dict(conn.execute("SELECT value, count(*) FROM triples GROUP BY value"))


def protected_names(conn) -> frozenset[str]:
    """KB names that colloquial surfaces point to: vetted as medical names, never noise."""
    targets = set(load_lexicon().colloquial.values())
    present = set()
    for name in targets:
        if conn.execute("SELECT 1 FROM entities WHERE name = ?", (name,)).fetchone():
            present.add(name)
    return frozenset(present)


def generic_names(value_only: set[str], support: dict[str, int], n_triples: int,
                  rule: NoiseRule) -> set[str]:
    """Value-only names that the KB cites no more often than general Chinese uses them."""
    freqs, total = word_frequencies(value_only)
    out = set()
    for name, freq in freqs.items():
        if freq < rule.min_word_freq or len(name) < 2:
            continue
        specificity = (support.get(name, 0) / max(n_triples, 1)) / (freq / total)
        if specificity <= rule.max_specificity:
            out.add(name)
    return out


def compute_noise(conn, stopwords: Iterable[str], rare: frozenset[str], rule: NoiseRule | None = None,
                  support: dict[str, int] | None = None) -> frozenset[str]:
    """The noise names of the KB behind ``conn`` (see the module docstring); ``rare`` is
    ``rare_values(rule.min_support)``, used only when the KB is large enough."""
    rule = rule or load_lexicon().noise
    n_triples = conn.execute("SELECT count(*) FROM triples").fetchone()[0]
    value_only = {n for (n,) in conn.execute("SELECT name FROM entities WHERE is_subject = 0")}
    support = value_support(conn) if support is None else support
    noise = set(stopwords) | generic_names(value_only, support, n_triples, rule)
    if n_triples >= rule.min_kb_triples:
        kept = re.compile(rule.rare_kept) if rule.rare_kept else None
        noise |= {n for n in rare if not kept.search(n)} if kept else rare
    return frozenset(noise - protected_names(conn))
