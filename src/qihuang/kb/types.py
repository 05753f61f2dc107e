"""Plain data types returned by the knowledge-base API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


VIAS = ("direct", "reverse", "symptom", "two_hop", "lexical", "history", "department")


def via_note(via: str, anchor: str, relation: str) -> str:
    """How a fact was reached, in words shown with it (citations, knowledge block); "" for direct."""
    if via == "reverse":
        return f"反查：{anchor} ← {relation}"
    if via == "symptom":
        return "候选疾病，可能相关，非诊断"  # the evidence is the candidate's own symptom line
    if via == "two_hop":
        return f"由 {anchor} 转查"
    if via == "lexical":
        return "词面检索匹配，可能不相关"
    if via == "history":
        return f"上文提到的 {anchor}" if anchor else "上文提到的"
    if via == "department":  # the relation says what it rests on: KB wording, symptoms, patient group
        return f"医院科室建议，依据：{anchor}；非诊断" if anchor else "医院科室建议，非诊断"
    return ""


@dataclass(frozen=True)
class Fact:
    """One triple, with the canonical attribute its raw relation maps to.

    ``via`` says how retrieval reached it: ``direct`` (a fact of an entity the question names),
    ``reverse`` (the named entity is the triple's value: (偏头痛, 药物治疗, 布洛芬) for "布洛芬能治什么病"),
    ``symptom`` (evidence or an attribute of a candidate disease for described symptoms), ``two_hop``
    (a fact of a drug of the named disease), ``lexical`` (BM25 fallback) or ``history`` (an entity of an
    earlier turn). ``anchor`` is the question's entity it was reached from (the drug or symptom named,
    for reverse; the disease, for two_hop, or the drug named when its product answers; the symptoms
    joined by "、", for symptom).
    :meth:`triple` is always the KB triple as stored."""

    entity: str
    attribute: str  # canonical key, e.g. "drugs" (see resources/kb_schema.yaml)
    relation: str  # raw relation name as in the source, e.g. "药物治疗"
    value: str
    via: str = "direct"
    anchor: str = ""

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
    """What retrieval found for a question.

    ``candidates`` (symptom descriptions only): ranked candidate diseases, each
    ``{"disease", "score", "evidence": [symptoms], "negated": [symptoms], "confident": bool}``, never a
    diagnosis. ``abstained``: nothing was retrieved. ``missing``: (entity, attribute) pairs the question
    asks that the KB does not hold; the entity's default facts are retrieved instead, and answers say
    which part the KB does not cover."""

    text: str
    entities: list[Mention]
    attributes: list[str]
    facts: list[Fact]
    candidates: list[dict] = field(default_factory=list)
    abstained: bool = False
    # asked attributes a named entity has no fact for: [(entity, attribute)]; its other facts stand in
    missing: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"text": self.text, "entities": [m.to_dict() for m in self.entities],
                "attributes": self.attributes, "facts": [f.to_dict() for f in self.facts],
                "candidates": self.candidates, "abstained": self.abstained,
                "missing": [list(x) for x in self.missing]}
