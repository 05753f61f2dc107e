"""Scenario questions, the other way round: a few symptoms -> the KB diseases that share most of them.

"一位患者出现了X、Y和Z，可能是什么病？应该挂什么科？" is built from one disease's symptoms; the answer
names, in hedged language, the diseases whose KB symptoms overlap most with the described ones
(the source disease always among them) and the department(s) the KB gives for them.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from qihuang.datagen.kbview import EntityView
from qihuang.datagen.phrasings import clean_value, is_clause, join_values
from qihuang.kb.types import Fact
from qihuang.phrasebook import Phrasebook

_SEP = re.compile(r"[；;、，,/]")
_ODD = re.compile(r"[A-Za-z0-9<>＜＞≥≤%/=（）()\[\]]")


@dataclass(frozen=True)
class Scenario:
    question: str
    answer: str
    knowledge: list[list[str]]
    diseases: list[str]  # named in the answer, best first
    symptoms: list[str]  # described in the question


def usable_symptom(value: str) -> bool:
    """Short, plain symptom terms only (no lab values, codes or whole sentences) go into questions."""
    return 2 <= len(value) <= 10 and not is_clause(value) and _ODD.search(value) is None


class SymptomIndex:
    """Diseases by (cleaned) symptom, built once from the view."""

    def __init__(self, views: list[EntityView], disease_type: str = "disease", common: int = 200):
        self.common = common  # symptoms of more diseases than this tell little
        self._pools: dict[int, tuple[list[str], list[str]]] = {}
        self._sets: dict[str, frozenset[int]] = {}
        self.names: list[str] = []
        self.symptoms: list[dict[str, Fact]] = []
        self.departments: list[list[Fact]] = []
        self.postings: dict[str, list[int]] = {}
        self.position: dict[str, int] = {}
        for view in views:
            facts = view.attrs.get("symptoms")
            if view.type != disease_type or not facts:
                continue
            idx = len(self.names)
            syms: dict[str, Fact] = {}
            for f in facts:
                v = clean_value(f.value)
                if v and v not in syms:
                    syms[v] = f
                    self.postings.setdefault(v, []).append(idx)
            self.names.append(view.name)
            self.symptoms.append(syms)
            self.departments.append(view.attrs.get("department", []))
            self.position[view.name] = idx
        by_size = sorted(range(len(self.names)), key=lambda d: (len(self.symptoms[d]), self.names[d]))
        self._order = [0] * len(by_size)
        for rank, d in enumerate(by_size):
            self._order[d] = rank

    def _members(self, symptom: str) -> set[int] | frozenset[int]:
        found = self._sets.get(symptom)
        if found is None:
            found = self._sets[symptom] = frozenset(self.postings[symptom])
        return found

    def pools(self, disease: int) -> tuple[list[str], list[str]]:
        """The disease's usable symptoms, rarest first, and those of them shared with 2..``common``
        diseases (cached)."""
        found = self._pools.get(disease)
        if found is None:
            # a "symptom" that is itself a disease of the KB (心肌病, 气胸) would give the answer away
            pool = sorted((s for s in self.symptoms[disease] if usable_symptom(s) and s not in self.position),
                          key=lambda s: (self.df(s), s))
            shared = [s for s in pool if 2 <= self.df(s) <= self.common]
            found = self._pools[disease] = (pool, shared)
        return found

    def __len__(self) -> int:
        return len(self.names)

    def df(self, symptom: str) -> int:
        """In how many diseases a symptom occurs."""
        return len(self.postings.get(symptom, ()))

    def rank(self, symptoms: list[str], allowed: Callable[[str], bool] | None = None,
             limit: int | None = None) -> list[tuple[int, int]]:
        """(disease index, overlap) for the diseases sharing at least two of ``symptoms`` (or one, when
        none shares two): most overlap first, then the larger share of the disease's own symptoms,
        then name. ``allowed`` filters disease names; ``limit`` keeps the first few."""
        posts = sorted((s for s in symptoms if s in self.postings), key=self.df)
        if not posts:
            return []
        counts: Counter[int] = Counter()
        for s in posts[:-1]:  # a disease sharing two or more symptoms is in one of the shorter lists
            counts.update(self.postings[s])
        largest = self._members(posts[-1])
        for d in largest.intersection(counts):
            counts[d] += 1
        strong = [d for d, c in counts.items() if c >= 2]
        if not strong:  # only single-symptom matches: every disease of every list counts
            counts = Counter(d for s in posts for d in self.postings[s])
            strong = list(counts)
        # most overlap first; ties: the larger share of the disease's own symptoms (fewer symptoms), then name
        strong.sort(key=self._order.__getitem__)
        strong.sort(key=counts.__getitem__, reverse=True)
        out: list[tuple[int, int]] = []
        for d in strong:
            if allowed is None or allowed(self.names[d]):
                out.append((d, counts[d]))
                if limit is not None and len(out) >= limit:
                    break
        return out


def pick_symptoms(index: SymptomIndex, disease: int, rng: random.Random, lo: int, hi: int) -> list[str] | None:
    """A few of the disease's symptoms, preferring ones shared with other diseases but not the most
    common ones (those tell little); None when the disease has too few usable symptoms."""
    pool, shared = index.pools(disease)
    if len(pool) < lo:
        return None
    k = rng.randint(lo, min(hi, len(pool)))
    base = shared if len(shared) >= k else pool
    window = base[:max(2 * k, len(base) // 2)]
    return rng.sample(window, k)


def make_scenario(view: EntityView, index: SymptomIndex, rng: random.Random, book: Phrasebook,
                  allowed: Callable[[str], bool] | None = None) -> Scenario | None:
    """A scenario question and hedged answer from ``view``'s symptoms, or None if it has too few.

    ``allowed`` restricts which other diseases the answer may name (used to keep held-out entities
    out of training examples)."""
    src = index.position.get(view.name)
    if src is None:
        return None
    spec = book.scenario
    chosen = pick_symptoms(index, src, rng, int(spec.get("min_symptoms", 2)), int(spec.get("max_symptoms", 4)))
    if not chosen:
        return None
    most = int(spec.get("max_diseases", 3))
    ranked = index.rank(chosen, allowed, limit=most)
    top = ranked[0][1] if ranked else 0
    named = [d for d, c in ranked if c >= 2 or c == top]
    if src not in named:  # the source disease shares every described symptom: it always belongs
        named = named[:-1] + [src] if len(named) >= most else named + [src]
    knowledge: list[list[str]] = []
    parts = []
    for d in named:
        matched = [s for s in chosen if s in index.symptoms[d]]
        knowledge.extend(index.symptoms[d][s].triple() for s in matched)
        template = spec["one_candidate"] if len(named) == 1 else spec["candidate"]
        parts.append(template.format(disease=index.names[d], matched=join_values(matched, "and")))
    symptoms_text = join_values(chosen, "and")
    style = "patient" if rng.random() < 0.5 else "clinician"
    question = _choice(spec[style], rng).format(symptoms=symptoms_text)
    answer = _choice(spec["intro"], rng).format(symptoms=symptoms_text) + "；".join(parts) + "。"
    depts = _departments(index, named, knowledge)
    if depts:
        answer += _choice(spec["department"], rng).format(departments=join_values(depts, "or"))
    else:
        answer += _choice(spec["no_department"], rng)
    answer += _choice(spec["hedge"], rng)
    return Scenario(question, answer, knowledge, [index.names[d] for d in named], chosen)


def _departments(index: SymptomIndex, named: list[int], knowledge: list[list[str]], limit: int = 2) -> list[str]:
    out: list[str] = []
    for d in named:
        for f in index.departments[d]:
            names = [n for n in (clean_value(p) for p in _SEP.split(f.value)) if n and n not in out]
            if names:
                out.extend(names)
                knowledge.append(f.triple())
            if len(out) >= limit:
                return out[:limit]
    return out


def _choice(items, rng: random.Random):
    return items[int(rng.random() * len(items))]
