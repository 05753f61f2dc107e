"""Canonical attributes, entity types and question cues, loaded from ``resources/kb_schema.yaml``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from qihuang.paths import resource

OTHER = "other"


@dataclass(frozen=True)
class Attribute:
    key: str
    label: str
    relations: tuple[str, ...]
    object_type: str | None
    cues: tuple[str, ...]


@dataclass(frozen=True)
class Schema:
    attributes: dict[str, Attribute]
    relation_to_attribute: dict[str, str]
    type_rules: tuple[tuple[str, frozenset[str]], ...]
    default_attributes: dict[str, tuple[str, ...]]
    relation_rank: dict[str, int]
    link_stopwords: frozenset[str]

    def attribute_of(self, relation: str) -> str:
        """Canonical attribute key of a raw relation name ("other" when unmapped)."""
        return self.relation_to_attribute.get(relation.strip(), OTHER)

    def label(self, key: str) -> str:
        attr = self.attributes.get(key)
        return attr.label if attr else "其他"

    def infer_type(self, relations: set[str]) -> str:
        """Entity type from the raw relations a subject has (first matching rule wins)."""
        for type_name, indicators in self.type_rules:
            if relations & indicators:
                return type_name
        return OTHER

    def defaults_for(self, entity_type: str) -> tuple[str, ...]:
        return self.default_attributes.get(entity_type) or self.default_attributes.get(OTHER, ())


@lru_cache(maxsize=1)
def load_schema() -> Schema:
    """Parse the shipped schema once."""
    raw = yaml.safe_load(resource("kb_schema.yaml").read_text(encoding="utf-8"))
    attributes: dict[str, Attribute] = {}
    rel_map: dict[str, str] = {}
    for key, spec in raw["attributes"].items():
        attr = Attribute(key, spec["label"], tuple(spec.get("relations", [])), spec.get("object_type"),
                         tuple(spec.get("cues", [])))
        attributes[key] = attr
        for rel in attr.relations:
            rel_map.setdefault(rel, key)
    rules = tuple((t, frozenset(rels)) for t, rels in raw["types"].items())
    defaults = {t: tuple(v) for t, v in raw.get("default_attributes", {}).items()}
    rank = {rel: i for attr in attributes.values() for i, rel in enumerate(attr.relations)}
    cues = {c for attr in attributes.values() for c in attr.cues}
    stop = frozenset(raw.get("link_stopwords", [])) | cues
    return Schema(attributes, rel_map, rules, defaults, rank, stop)


ATTRIBUTES: dict[str, str] = {k: a.label for k, a in load_schema().attributes.items()}
ALIAS = "alias"
