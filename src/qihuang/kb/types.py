"""Plain data types returned by the knowledge-base API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Fact:
    """One triple, with the canonical attribute its raw relation maps to."""

    entity: str
    attribute: str  # canonical key, e.g. "drugs" (see resources/kb_schema.yaml)
    relation: str  # raw relation name as in the source, e.g. "药物治疗"
    value: str

    def triple(self) -> list[str]:
        return [self.entity, self.relation, self.value]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Mention:
    """An entity found in text; ``start``/``end`` index the original string."""

    name: str  # canonical entity name in the KB
    surface: str  # the text as written (may be an alias, other width or traditional form)
    start: int
    end: int
    type: str
    via_alias: bool = False  # found through an alias, a colloquial name or a drug-form stem, not the name
    negated: bool = False  # a negation cue scopes over it in its clause (没有发烧, 否认高血压)
    forms: tuple[str, ...] = ()  # other KB nodes the surface equally names: the written value node when a
    # colloquial name or a subject took over (发烧 for 发热), the same drug in other forms or as a bare value

    def to_dict(self) -> dict:
        d = asdict(self)
        d["forms"] = list(self.forms)
        return d


@dataclass
class Entity:
    name: str
    type: str
    aliases: list[str] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)

    def by_attribute(self) -> dict[str, list[Fact]]:
        out: dict[str, list[Fact]] = {}
        for f in self.facts:
            out.setdefault(f.attribute, []).append(f)
        return out

    def values(self, attribute: str) -> list[str]:
        return [f.value for f in self.facts if f.attribute == attribute]

    def to_dict(self) -> dict:
        by_rel: dict[str, list[str]] = {}
        for f in self.facts:
            by_rel.setdefault(f.relation, []).append(f.value)
        by_attr = {k: [f.value for f in v] for k, v in self.by_attribute().items()}
        return {"name": self.name, "type": self.type, "aliases": self.aliases,
                "relations": by_rel, "attributes": by_attr}


@dataclass
class LinkResult:
    text: str
    entities: list[Mention]
    attributes: list[str]
    facts: list[Fact]

    def to_dict(self) -> dict:
        return {"text": self.text, "entities": [m.to_dict() for m in self.entities],
                "attributes": self.attributes, "facts": [f.to_dict() for f in self.facts]}
