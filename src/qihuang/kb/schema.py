"""Canonical attributes, entity types and question cues, loaded from ``resources/kb_schema.yaml``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from qihuang.errors import ConfigError
from qihuang.fileio import compile_pattern, read_yaml
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
    # attribute of a subject -> what a triple of it answers about its value (reverse lookups)
    inverse: dict[str, str] = field(default_factory=dict)
    # ways of asking that ask several attributes at once: (compiled pattern, attributes, described, only_with,
    # not_with), see kb_schema.yaml; ``described``: only a question describing symptoms asks this way;
    # ``only_with``: attribute -> entity types, asked only when the question names an entity of one of them;
    # ``not_with``: attribute -> entity types, not asked when the question names one (有效吗 of a drug for a disease)
    question_forms: tuple[tuple[re.Pattern, tuple[str, ...], bool, dict[str, frozenset[str]],
                                dict[str, frozenset[str]]], ...] = ()
    # what a question marks as a question (a clause without any of these describes, it does not ask)
    asking: re.Pattern | None = None
    # wording that names a cause as part of a description, not a question about it (X引起的Y)
    descriptive: re.Pattern | None = None

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

    def reverse_sources(self, wanted: str) -> tuple[str, ...]:
        """Attributes whose triples, read backwards, answer ``wanted`` about their value."""
        return tuple(src for src, dst in self.inverse.items() if dst == wanted)

    def defaults_for(self, entity_type: str) -> tuple[str, ...]:
        return self.default_attributes.get(entity_type) or self.default_attributes.get(OTHER, ())


def _parse_inverse(raw, attributes: dict[str, Attribute]) -> dict[str, str]:
    """The ``inverse:`` section: a mapping of known attribute keys to known attribute keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"kb_schema.yaml: inverse: must be a mapping of attribute: attribute, got {raw!r}")
    for src, dst in raw.items():
        for where, key in ((f"inverse.{src}", src), (f"inverse.{src} (value)", dst)):
            if not isinstance(key, str) or key not in attributes:
                raise ConfigError(f"kb_schema.yaml: {where}: unknown attribute {key!r}")
    return dict(raw)


_FORM_KEYS = {"pattern", "attributes", "described", "only_with", "not_with"}


def _parse_forms(raw, attributes: dict[str, Attribute]) -> tuple[tuple[re.Pattern, tuple[str, ...], bool, dict], ...]:
    """The ``question_forms:`` section: a list of {pattern, attributes[, described][, only_with][, not_with]}."""
    if not isinstance(raw, list):
        raise ConfigError(f"kb_schema.yaml: question_forms: must be a list of {{pattern, attributes}}, got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        where = f"kb_schema.yaml: question_forms[{i}]"
        if not isinstance(item, dict) or not {"pattern", "attributes"} <= set(item) <= _FORM_KEYS:
            raise ConfigError(f"{where}: expected the keys 'pattern', 'attributes' and optionally 'described', "
                              f"'only_with' and 'not_with', got {item!r}")
        if not isinstance(item.get("described", False), bool):
            raise ConfigError(f"{where}: described: true or false, got {item['described']!r}")
        attrs = item["attributes"]
        if not isinstance(attrs, list) or not attrs or any(a not in attributes for a in attrs):
            raise ConfigError(f"{where}: attributes: a non-empty list of known attributes, got {attrs!r}")
        by_type = {}
        for key in ("only_with", "not_with"):
            given = item.get(key) or {}
            if not isinstance(given, dict) or any(a not in attrs or not isinstance(t, list) or not t for a, t in given.items()):
                raise ConfigError(f"{where}: {key}: a mapping of its attributes to lists of entity types, got {given!r}")
            by_type[key] = {a: frozenset(t) for a, t in given.items()}
        out.append((compile_pattern(item["pattern"], f"{where}: pattern"), tuple(attrs), item.get("described", False),
                    by_type["only_with"], by_type["not_with"]))
    return tuple(out)


@lru_cache(maxsize=1)
def load_schema() -> Schema:
    """Parse the shipped schema once."""
    raw = read_yaml(resource("kb_schema.yaml"), "the KB schema")
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
    inverse = _parse_inverse(raw.get("inverse") or {}, attributes)
    cues = {c for attr in attributes.values() for c in attr.cues} | set(shared)
    stop = frozenset(raw.get("link_stopwords", [])) | cues
    forms = _parse_forms(raw.get("question_forms") or [], attributes)
    asking = compile_pattern(raw["asking"], "kb_schema.yaml: asking") if raw.get("asking") else None
    descriptive = compile_pattern(raw["descriptive"], "kb_schema.yaml: descriptive") if raw.get("descriptive") else None
    return Schema(attributes, rel_map, rules, defaults, rank, stop, shared, inverse, forms, asking, descriptive)


ATTRIBUTES: dict[str, str] = {k: a.label for k, a in load_schema().attributes.items()}
ALIAS = "alias"
