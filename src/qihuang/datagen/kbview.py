"""An in-memory view of the knowledge base for data building: facts grouped by attribute.

Answers show a handful of values out of lists that can be hundreds long (a drug's adverse reactions,
a disease's related drugs). The KB lists each attribute's values in one order everywhere (its primary
relation first, ``药物治疗`` before ``相关药物``, then the values the KB cites most often for that
attribute, ``恶心`` before a rare finding), so the values an answer shows are the ones grounding
puts in the prompt at inference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qihuang.kb.types import Fact

SKIPPED_ATTRIBUTES = frozenset({"other"})  # unmapped raw relations: no meaningful question


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
    in KB order, values in the KB's ranked order. Entities without such facts are left out."""
    wanted = set(attributes) if attributes is not None else None
    views: list[EntityView] = []
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
    return views
