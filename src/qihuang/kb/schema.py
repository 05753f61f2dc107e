"""Canonical attributes, entity types and question cues, loaded from ``resources/kb_schema.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import yaml

from qihuang.errors import ConfigError
from qihuang.paths import resource

OTHER = "other"


@dataclass(frozen=True)
class Attribute:
    key: str
    label: str
    relations: tuple[str, ...]
    object_type: str | None
    cues: tuple[str, ...]
    yields_to: tuple[str, ...] = ()  # dropped from a question that also asks for one of these


@dataclass(frozen=True)
class Schema:
    attributes: dict[str, Attribute]
    relation_to_attribute: dict[str, str]
    type_rules: tuple[tuple[str, frozenset[str]], ...]
    default_attributes: dict[str, tuple[str, ...]]
    relation_rank: dict[str, int]
    link_stopwords: frozenset[str]
    shared_cues: dict[str, tuple[str, ...]] = field(default_factory=dict)

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
                         tuple(spec.get("cues", [])), tuple(spec.get("yields_to", [])))
        attributes[key] = attr
        for rel in attr.relations:
            rel_map.setdefault(rel, key)
    rules = tuple((t, frozenset(rels)) for t, rels in raw["types"].items())
    defaults = {t: tuple(v) for t, v in raw.get("default_attributes", {}).items()}
    rank = {rel: i for attr in attributes.values() for i, rel in enumerate(attr.relations)}
    shared = {cue: tuple(attrs) for cue, attrs in (raw.get("shared_cues") or {}).items()}
    for where, keys in [(f"shared_cues.{c}", a) for c, a in shared.items()] + \
            [(f"attributes.{a.key}.yields_to", a.yields_to) for a in attributes.values()]:
        unknown = [k for k in keys if k not in attributes]
        if unknown:
            raise ConfigError(f"kb_schema.yaml: {where}: unknown attributes {unknown}")
    cues = {c for attr in attributes.values() for c in attr.cues} | set(shared)
    stop = frozenset(raw.get("link_stopwords", [])) | cues
    return Schema(attributes, rel_map, rules, defaults, rank, stop, shared)


ATTRIBUTES: dict[str, str] = {k: a.label for k, a in load_schema().attributes.items()}
ALIAS = "alias"
