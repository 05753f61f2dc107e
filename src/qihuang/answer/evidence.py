"""What verification checks an answer against: the facts of its prompt and the cited entities' other KB
facts, indexed by normalized value (:class:`Evidence`, built once per answer plan by :func:`evidence_of`).

The index of one entity's KB facts depends on the KB alone, so it is built once per process and entity
(:class:`EntityIndexes`, the most recent :data:`ENTITIES_KEPT` entities of each KB, rebuilt when the KB's
connection has changed rows since): a request that cites an entity an earlier request cited reads its
index instead of fetching and normalizing hundreds of facts again. An answer's :class:`Evidence` puts the
indexes of its cited entities side by side (:class:`Context`) rather than merging them.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from qihuang.answer.verify_config import VerifyConfig, load_config
from qihuang.kb.normalize import normalize

ENTITIES_KEPT = 512  # entity indexes kept per KB (the largest CMeKG entity has a few thousand facts)
ALIAS = "alias"

Index = dict[str, dict[str, set[str]]]  # normalized value (and its forms) -> entity -> attributes


@lru_cache(maxsize=1 << 16)
def _value_forms(value: str, fillers: tuple[str, ...], prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """A fact value normalized, and without a trailing filler (过敏性肺炎等 -> 过敏性肺炎) or a leading one
    (用于吐血 -> 吐血). Cached: the same KB values come back in request after request."""
    value = normalize(value.strip())
    forms = [value] + [value[: -len(x)] for x in fillers if value.endswith(x) and len(value) - len(x) >= 2][:1]
    forms += [value[len(x):] for x in prefixes if value.startswith(x) and len(value) - len(x) >= 2][:1]
    return tuple(forms)


def fact_index(facts, fillers: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()) -> Index:
    """normalized value (and its forms, :func:`_value_forms`) -> entity -> attributes."""
    index: Index = {}
    fillers, prefixes = tuple(fillers), tuple(prefixes)
    for f in facts:
        for form in _value_forms(f.value, fillers, prefixes):
            index.setdefault(form, {}).setdefault(f.entity, set()).add(f.attribute)
    return index


class Context(Mapping):
    """The cited entities' other facts as one read-only :data:`Index`: each entity's own index
    (normalized value -> its attributes) is looked up in turn, none is copied into another."""

    def __init__(self, parts: dict[str, dict[str, frozenset[str]]]):
        self._parts = parts

    def get(self, form: str, default=None):
        return {e: index[form] for e, index in self._parts.items() if form in index} or default

    def __getitem__(self, form: str) -> dict[str, frozenset[str]]:
        found = self.get(form)
        if found is None:
            raise KeyError(form)
        return found

    def __contains__(self, form: object) -> bool:
        return any(form in index for index in self._parts.values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self):
        return set().union(*self._parts.values())

    def __len__(self) -> int:
        return len(self.keys())


class EntityIndexes:
    """Per KB, the index of each entity's KB facts (aliases left out): normalized value -> attributes."""

    def __init__(self, kept: int = ENTITIES_KEPT):
        self.kept = kept
        self._lock = threading.Lock()
        self._by_kb: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, kb, entity: str, config: VerifyConfig) -> dict[str, frozenset[str]]:
        changes = getattr(getattr(kb, "conn", None), "total_changes", None)  # rows the KB's connection changed
        version = (changes, config.value_fillers, config.value_prefixes)
        with self._lock:
            held = self._by_kb.get(kb)
            if held is None or held[0] != version:
                held = self._by_kb[kb] = (version, OrderedDict())
            memo = held[1]
            if entity in memo:
                memo.move_to_end(entity)
                return memo[entity]
        fillers, prefixes = tuple(config.value_fillers), tuple(config.value_prefixes)
        found: dict[str, set[str]] = {}
        for f in kb.facts(entity):
            if f.attribute != ALIAS and f.entity == entity:
                for form in _value_forms(f.value, fillers, prefixes):
                    attrs = found.get(form)
                    if attrs is None:
                        found[form] = {f.attribute}
                    else:
                        attrs.add(f.attribute)
        index = {form: frozenset(attrs) for form, attrs in found.items()}
        with self._lock:
            memo[entity] = index
            while len(memo) > self.kept:
                memo.popitem(last=False)
        return index


ENTITY_INDEXES = EntityIndexes()


@dataclass(frozen=True)
class Evidence:
    """What a text is verified against, indexed once (an answer plan keeps it for all its checks):
    ``index``: normalized value -> cited entity -> attributes of the facts in the prompt; ``context``:
    the same for the cited entities' other KB facts (naming one of those under the wrong attribute is
    wrong_attribute); ``values``: both indexes' values, longest first.

    ``memo`` remembers, for the texts checked against this evidence, what depends on the text alone:
    the cue groups of a masked stretch and the word boundaries of a sentence. The checks of one answer
    (its draft, the draft without its cut claims, a streamed answer's sentences, then the whole) read
    the same sentences again."""

    index: Index
    context: Mapping[str, Mapping[str, set[str] | frozenset[str]]]
    entities: frozenset[str]
    values: tuple[str, ...]
    index_values: tuple[str, ...]  # ``index``'s alone, longest first
    memo: dict = field(default_factory=dict, compare=False, repr=False)


def evidence_of(kb, facts, context=None, config: VerifyConfig | None = None) -> Evidence:
    """The :class:`Evidence` of ``facts``; ``context``: the cited entities' other facts (default: their
    KB facts, through :data:`ENTITY_INDEXES`)."""
    config = config or load_config()
    facts = list(facts or [])
    entities = frozenset(f.entity for f in facts)
    index = fact_index(facts, config.value_fillers, config.value_prefixes)
    if context is None:
        other = Context({e: ENTITY_INDEXES.get(kb, e, config) for e in dict.fromkeys(f.entity for f in facts)})
    else:
        other = fact_index([f for f in context if f.entity in entities and f.attribute != ALIAS],
                           config.value_fillers, config.value_prefixes)
    return Evidence(index, other, entities, tuple(sorted(set(index).union(other.keys()), key=len, reverse=True)),
                    tuple(sorted(index, key=len, reverse=True)))


def context_facts(kb, facts) -> list:
    """All KB facts of the entities ``facts`` cite (what :func:`~qihuang.answer.verify.verify` checks wrong
    attributes against)."""
    return [f for e in dict.fromkeys(f.entity for f in facts) for f in kb.facts(e)] if facts else []
