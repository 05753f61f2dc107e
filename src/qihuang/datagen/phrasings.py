"""Questions and answers rendered from the phrasebook (:mod:`qihuang.phrasebook`) and knowledge-base values.

The phrasings are package data (``resources/phrasings.yaml``, loaded and validated by
:mod:`qihuang.phrasebook`); this module turns them and KB values into questions and fluent Chinese
answers. The functions are reused by the preference-pair builder (a KB-faithful answer is
``answer_for(entity, attribute, values)``)::

    answer_for("偏头痛", "drugs", ["布洛芬", "对乙酰氨基酚"])
    # '偏头痛常用的治疗药物有布洛芬和对乙酰氨基酚。具体用药请遵医嘱，不要自行购药或随意增减剂量。'
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from qihuang.phrasebook import Phrasebook, Phrasing, load_phrasebook

STYLES = ("patient", "clinician")
_TRAILING = "。；;，,、 \t\r\n"
_TAG = re.compile(r"<sup>[^<]{0,40}</sup>|<[^<>]{0,40}>")  # footnote marks go with their text
_CLAUSE_PUNCT = re.compile(r"[，。；;,：:！？]")


# --------------------------------------------------------------------------------------------
# values -> text
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1 << 18)  # KB values repeat a lot ("恶心", "口服"): clean each once
def clean_value(value: str) -> str:
    """A KB value as shown in an answer: markup, trailing punctuation or "等" and a leading "用于" removed."""
    v = value.strip()
    if "<" in v:
        v = _TAG.sub("", v).strip()
    v = v.rstrip(_TRAILING)
    if len(v) > 2 and v.endswith("等"):
        v = v[:-1].rstrip(_TRAILING)
    if len(v) > 3 and v.startswith("用于"):  # "用于肺炎": the answer patterns say 用于 themselves
        v = v[2:]
    return v


@lru_cache(maxsize=1 << 16)
def _trim(value: str, prefixes: tuple[str, ...], suffixes: tuple[str, ...]) -> str:
    for p in prefixes:
        if value.startswith(p) and len(value) > len(p) + 1:
            value = value[len(p):]
            break
    for x in suffixes:
        if value.endswith(x) and len(value) > len(x) + 1:
            value = clean_value(value[: -len(x)])
            break
    return value


@lru_cache(maxsize=1 << 18)
def is_clause(value: str, min_chars: int = 14) -> bool:
    """Whether a value reads like a sentence (long, or punctuated inside) rather than a short term."""
    return len(value) >= min_chars or _CLAUSE_PUNCT.search(value) is not None


def join_values(values: list[str], join: str = "and", etc: str = "等", cut: bool = False) -> str:
    """Join cleaned values the Chinese way: ``A、B和C`` (and), ``A、B或C`` (or), ``A、B、C`` (list),
    ``A；B；C`` (clauses). With ``cut`` the list was shortened and ends in ``等``."""
    if not values:
        return ""
    if join == "clauses":
        return "；".join(v.replace("。", "，") for v in values)
    if len(values) == 1:
        return values[0]
    if cut:
        return "、".join(values) + etc
    if join == "list":
        return "、".join(values)
    word = "或" if join == "or" else "和"
    if any(word in v for v in values):  # "A、B和C和D" would be ambiguous
        word = "或者" if join == "or" else "以及"
    return "、".join(values[:-1]) + word + values[-1]


@dataclass(slots=True)  # made once per entity and attribute: a plain slots class is cheaper than frozen
class Prepared:
    """Values ready to be stated: what an answer shows, and which source values it uses."""

    shown: tuple[str, ...]
    used: tuple[int, ...]  # indexes into the source values, in shown order
    cut: bool
    join: str
    special: int | None = None  # index of a value answered by a whole sentence (value_sentences)
    special_value: str | None = None
    joined: str = ""  # the shown values joined as they appear in the answer

    def source_indexes(self) -> list[int]:
        """Indexes of all source values the answer states (the special one first)."""
        return ([self.special] if self.special is not None else []) + list(self.used)


def prepare_values(values: list[str], phrasing: Phrasing, book: Phrasebook,
                   max_values: int | None = None, exclude: str | None = None, more: bool = False) -> Prepared:
    """Clean, de-duplicate and cut ``values`` (the caller ranks them, best first); a value equal to
    ``exclude`` (the entity itself) is dropped; ``more``: the caller passed only the first values of
    a longer list. Only as many values as can be shown are cleaned, so long lists cost little."""
    special = special_value = None
    sentences = phrasing.value_sentences
    if sentences:
        for i, raw in enumerate(values):
            if clean_value(raw) in sentences:
                special, special_value = i, clean_value(raw)
                break
    limit = max_values or phrasing.max_values
    shown: list[str] = []
    used: list[int] = []
    seen: set[str] = set()
    stop = limit + 1  # one more than can be shown tells whether the list is cut
    trim = phrasing.strip_prefixes or phrasing.strip_suffixes
    for i, raw in enumerate(values):
        v = clean_value(raw)
        if trim:
            v = _trim(v, phrasing.strip_prefixes, phrasing.strip_suffixes)
        if not v or v in seen or v == exclude or (sentences and v in sentences):
            continue
        seen.add(v)
        shown.append(v)
        used.append(i)
        if len(used) == stop:
            break
    join = phrasing.join
    dropped = False
    if join != "clauses" and shown:
        min_chars = phrasing.clause_min_chars or book.clause_min_chars
        flags = [is_clause(v, min_chars) for v in shown]
        if sum(flags) * 2 > len(shown):
            join = "clauses"  # mostly sentences: state them one after another
        elif any(flags):  # mostly terms: a stray sentence would break the list, leave it out
            dropped = True
            used = [i for i, f in zip(used, flags) if not f]
            shown = [v for v, f in zip(shown, flags) if not f]
    if join == "clauses":
        limit = min(limit, book.clause_max_values)
    cut = len(shown) > limit or dropped or (more and bool(shown))
    shown = shown[:limit]
    return Prepared(tuple(shown), tuple(used[:limit]), cut, join, special, special_value,
                    join_values(shown, join, book.etc, cut))


def render_answer(entity: str, prepared: Prepared, phr: Phrasing, book: Phrasebook | None = None,
                  *, rng: random.Random | None = None, variant: int | None = None, safety: bool = True) -> str:
    """The answer sentence(s) for prepared values (pattern chosen by ``variant``, else ``rng``, else the first)."""
    book = book or load_phrasebook()
    parts: list[str] = []
    if prepared.special_value is not None:
        parts.append(phr.value_sentences[prepared.special_value].format(entity=entity))
    if prepared.shown:
        if prepared.join == "clauses" and phr.join != "clauses":  # sentences where terms were expected
            patterns = phr.answer_clauses or book.clause_answer or phr.answer
        elif len(prepared.shown) == 1 and phr.answer_one:
            patterns = phr.answer_one
        else:
            patterns = phr.answer
        text = _pick(patterns, rng, variant).format(entity=entity, values=prepared.joined,
                                                     count=len(prepared.shown), label=phr.label)
        if prepared.cut and prepared.join == "clauses" and book.more_clauses:
            text += book.more_clauses
        parts.append(text)
    if parts and safety and phr.safety is not None:
        parts.append(_pick(book.safety_notes[phr.safety], rng, variant))
    return "".join(parts)


def compose_answer(entity: str, attribute: str, values: list[str], *, entity_type: str | None = None,
                   rng: random.Random | None = None, variant: int | None = None, safety: bool = True,
                   max_values: int | None = None, book: Phrasebook | None = None) -> tuple[str, list[int]]:
    """Answer text and the indexes (into ``values``) of the values it states.

    ``variant`` picks an answer pattern by index (modulo), ``rng`` picks one at random, neither: the
    first. Drug and treatment attributes end with a short safety note when ``safety`` is true.
    """
    book = book or load_phrasebook()
    phr = book.get(attribute, entity_type)
    prepared = prepare_values(values, phr, book, max_values, exclude=entity)
    text = render_answer(entity, prepared, phr, book, rng=rng, variant=variant, safety=safety)
    return text, (prepared.source_indexes() if text else [])


def answer_for(entity: str, attribute: str, values: list[str], *, entity_type: str | None = None,
               rng: random.Random | None = None, variant: int | None = None, safety: bool = True,
               max_values: int | None = None) -> str:
    """A fluent Chinese answer naming ``entity`` and stating (at most ``max_values`` of) ``values``."""
    return compose_answer(entity, attribute, values, entity_type=entity_type, rng=rng, variant=variant,
                          safety=safety, max_values=max_values)[0]


def questions_for(entity: str, attribute: str, n: int = 1, *, entity_type: str | None = None,
                  rng: random.Random | None = None, styles: tuple[str, ...] = STYLES,
                  book: Phrasebook | None = None) -> list[str]:
    """``n`` different questions about ``entity``'s ``attribute``, alternating patient and clinician style."""
    book = book or load_phrasebook()
    phr = book.get(attribute, entity_type)
    pools = [getattr(phr, s) for s in styles if getattr(phr, s)]
    if not pools or n < 1:
        return []
    if rng is not None and len(pools) > 1 and rng.random() < 0.5:
        pools.reverse()
    if n <= len(pools):  # the common case: one question from each of the first n styles
        return [_sample(pool, 1, rng)[0].format(entity=entity, label=phr.label) for pool in pools[:n]]
    want = [n // len(pools) + (1 if i < n % len(pools) else 0) for i in range(len(pools))]
    for i, pool in enumerate(pools):  # a short pool leaves its share to the next
        extra = want[i] - len(pool)
        if extra > 0:
            want[i] = len(pool)
            if i + 1 < len(pools):
                want[i + 1] += extra
    picked = [_sample(pool, k, rng) for pool, k in zip(pools, want)]
    out: list[str] = []
    for k in range(max(want)):
        for chosen in picked:
            if k < len(chosen):
                out.append(chosen[k].format(entity=entity, label=phr.label))
    return out


def followup_for(attribute: str, *, entity_type: str | None = None, rng: random.Random | None = None,
                 book: Phrasebook | None = None) -> str:
    """A follow-up question (no entity name) for a later dialogue turn."""
    book = book or load_phrasebook()
    phr = book.get(attribute, entity_type)
    pool = phr.followup or tuple(t.replace("{label}", phr.label) for t in book.generic["followup"])
    return _pick(pool, rng, None).format(label=phr.label)


def _sample(pool: tuple[str, ...], k: int, rng: random.Random | None) -> list[str]:
    if rng is None:
        return list(pool[:k])
    if k == 1:  # the common case, without random.sample's overhead
        return [pool[int(rng.random() * len(pool))]]
    return rng.sample(pool, k)


def _pick(items: tuple[str, ...], rng: random.Random | None, variant: int | None) -> str:
    if variant is not None:
        return items[variant % len(items)]
    if rng is not None:
        return items[int(rng.random() * len(items))]
    return items[0]
