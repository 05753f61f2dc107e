"""An in-memory view of the knowledge base for data building: facts grouped by attribute and ranked.

Answers show a handful of values out of lists that can be hundreds long (a drug's adverse reactions,
a disease's related drugs). The ranking puts first the values of an attribute's primary relation
(``药物治疗`` before ``相关药物``), then the values that the KB cites most often for that attribute
across all entities (``恶心`` before a rare finding); ties keep the KB's order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter

from qihuang.kb.types import Fact

SKIPPED_ATTRIBUTES = frozenset({"other"})  # unmapped raw relations: no meaningful question
RANKED_ABOVE = 4  # shorter lists are shown whole: their order is left as the KB gives it
_VALUE = attrgetter("value")


@dataclass(slots=True)
class EntityView:
    """One subject entity: its facts per canonical attribute, best values first."""

    name: str
    type: str
    aliases: list[str]
    attrs: dict[str, list[Fact]]

    def values(self, attribute: str) -> list[str]:
        return [f.value for f in self.attrs.get(attribute, ())]


def load_view(kb, attributes: Iterable[str] | None = None, progress: bool = False) -> list[EntityView]:
    """All subject entities of ``kb`` with facts in ``attributes`` (None: every canonical attribute),
    in KB order, values ranked. Entities without such facts are left out."""
    wanted = set(attributes) if attributes is not None else None
    views: list[EntityView] = []
    seen_values: dict[str, list[str]] = {}
    entities = kb.iter_entities()
    if progress:
        from tqdm import tqdm

        entities = tqdm(entities, total=kb.stats().get("entities"), desc="reading KB", unit=" entities",
                        mininterval=0.5)
    for ent in entities:
        attrs: dict[str, list[Fact]] = {}
        for f in ent.facts:
            a = f.attribute
            if a in SKIPPED_ATTRIBUTES or (wanted is not None and a not in wanted):
                continue
            bucket = attrs.get(a)
            if bucket is None:
                attrs[a] = [f]
            else:
                bucket.append(f)
        if attrs:
            views.append(EntityView(ent.name, ent.type, list(ent.aliases), attrs))
            for a, facts in attrs.items():
                bucket = seen_values.get(a)
                if bucket is None:
                    bucket = seen_values[a] = []
                bucket.extend(map(_VALUE, facts))
    freq = {a: Counter(values) for a, values in seen_values.items()}
    seen_values.clear()
    _rank(views, freq, _relation_rank(kb))
    return views


def _relation_rank(kb) -> dict[str, int]:
    schema = getattr(kb, "schema", None)
    rank = getattr(schema, "relation_rank", None)
    if rank:
        return dict(rank)
    from qihuang.kb.schema import load_schema

    return {rel: i for attr in load_schema().attributes.values() for i, rel in enumerate(attr.relations)}


def _rank(views: list[EntityView], freq: dict[str, Counter], rel_rank: dict[str, int]) -> None:
    for view in views:
        for a, facts in view.attrs.items():
            if len(facts) > RANKED_ABOVE:
                fa = freq[a]
                if len({f.relation for f in facts}) == 1:
                    facts.sort(key=lambda f: -fa[f.value])
                else:
                    facts.sort(key=lambda f: (rel_rank.get(f.relation, 99), -fa[f.value]))
