"""Knowledge grounding: link a question to KB facts, bound them, and cite them.

``ground(kb, question)`` links entities and asked attributes (``kb.link``), keeps a bounded
number of facts (small models have little room: by default at most 3 entities, 3 attributes
per entity, 12 values per attribute, 36 facts in all) and groups them into citations. The
facts go into the prompt through the template's knowledge block
(:func:`qihuang.data.prompts.format_knowledge`); the citations go back with the answer.

Facts reached indirectly say so in both (``Fact.via``): a reverse lookup cites
``偏头痛 · 药物治疗：布洛芬 (反查：布洛芬 ← 药物治疗)``, a candidate disease of described symptoms is
marked 候选疾病，可能相关，非诊断, a two-hop fact names the drug it was reached through. The bounds
apply per group: a reverse lookup's subjects are one group (the value the question named).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from qihuang.kb.types import Fact, via_note

ALIAS = "alias"


@dataclass
class Citation:
    """Values of one entity's attribute (under one raw relation) that were put in the prompt."""

    entity: str
    attribute: str
    relation: str
    values: list[str] = field(default_factory=list)
    via: str = "direct"  # how the facts were reached (see qihuang.kb.types.Fact)
    anchor: str = ""  # the question's entity they were reached from

    def to_dict(self) -> dict:
        return asdict(self) | {"note": self.note()}

    def note(self) -> str:
        """The direction or hedge of indirect facts ("" for direct ones)."""
        return via_note(self.via, self.anchor, self.relation)

    def text(self) -> str:
        """One human-readable line, e.g. ``偏头痛 · 药物治疗：布洛芬、对乙酰氨基酚``, with the note of
        indirect facts: ``偏头痛 · 药物治疗：布洛芬 (反查：布洛芬 ← 药物治疗)``."""
        note = self.note()
        return f"{self.entity} · {self.relation}：{'、'.join(self.values)}" + (f" ({note})" if note else "")


@dataclass(frozen=True)
class GroundingLimits:
    """Bounds on what goes into the prompt."""

    max_entities: int = 3
    max_attributes: int = 3
    max_values: int = 8  # as many as a `qihuang data build` answer lists, so grounded SFT sees the same blocks
    max_facts: int = 24


@dataclass
class Grounding:
    """The facts selected for a question and their citations."""

    facts: list[Fact]
    citations: list[Citation]
    entities: list[str]
    attributes: list[str]
    candidates: list[dict] = field(default_factory=list)  # symptom descriptions: candidate diseases, hedged
    missing: list[tuple[str, str]] = field(default_factory=list)  # (entity, attribute) asked, not in the KB

    @property
    def grounded(self) -> bool:
        return bool(self.facts)

    def coverage_note(self, label=None) -> str:
        """One sentence naming what the question asks that the KB does not hold ("" when it holds all):
        知识库未收录：跟腱断裂的注意事项（以下为其已收录的其他信息）。 ``label`` maps an attribute key to its
        Chinese label (default: the shipped schema's)."""
        if not self.missing:
            return ""
        if label is None:
            from qihuang.kb.schema import load_schema

            label = load_schema().label
        parts = "、".join(dict.fromkeys(f"{e}的{label(a)}" for e, a in self.missing))
        shown = {f.entity for f in self.facts}
        tail = "（以下为其已收录的其他信息）" if any(e in shown for e, _a in self.missing) else ""
        return f"知识库未收录：{parts}{tail}。"

    @classmethod
    def empty(cls) -> Grounding:
        return cls([], [], [], [])


def _group(fact: Fact) -> str:
    """The unit the bounds count: the entity, for a reverse lookup the value the question named, and the
    question's hospital departments together, whatever each rests on."""
    if fact.via == "department":
        return "\0department"
    return fact.anchor if fact.via == "reverse" and fact.anchor else fact.entity


def _select(facts: list[Fact], groups: list[str], limits: GroundingLimits) -> list[Fact]:
    """Keep facts of the first groups, the first attributes of each, the first values of each."""
    kept: list[Fact] = []
    attrs_seen: dict[str, list[str]] = {}
    values_seen: dict[tuple[str, str], int] = {}
    allowed = set(groups[: limits.max_entities])
    for fact in facts:
        group = _group(fact)
        if group not in allowed:
            continue
        attrs = attrs_seen.setdefault(group, [])
        if fact.attribute not in attrs:
            if len(attrs) >= limits.max_attributes:
                continue
            attrs.append(fact.attribute)
        key = (group, fact.attribute)
        if values_seen.get(key, 0) >= limits.max_values:
            continue
        values_seen[key] = values_seen.get(key, 0) + 1
        kept.append(fact)
        if len(kept) >= limits.max_facts:
            break
    return kept


def citations_of(facts: list[Fact]) -> list[Citation]:
    """Group facts by (entity, attribute, relation, via, anchor), in first-seen order, values deduplicated."""
    grouped: dict[tuple[str, ...], Citation] = {}
    for f in facts:
        key = (f.entity, f.attribute, f.relation, f.via, f.anchor)
        cite = grouped.setdefault(key, Citation(f.entity, f.attribute, f.relation, via=f.via, anchor=f.anchor))
        if f.value not in cite.values:
            cite.values.append(f.value)
    return list(grouped.values())


def _order_by_question(facts: list[Fact], attributes: list[str], inverse: dict[str, str] | None = None) -> list[Fact]:
    """Put the attributes the question asks about first (stable otherwise); a reverse fact counts as the
    attribute it answers about its value ((布洛芬片, 适应症, 头痛) answers the drugs of 头痛)."""
    rank = {a: i for i, a in enumerate(attributes)}
    inverse = inverse or {}

    def answers(f: Fact) -> str:
        return inverse.get(f.attribute, f.attribute) if f.via == "reverse" else f.attribute

    return sorted(facts, key=lambda f: rank.get(answers(f), len(rank)))


def _distinct(facts: list[Fact]) -> list[Fact]:
    """One fact per (entity, attribute, value): two relations of one attribute (病因, 常见病因) often
    list the same values, which would show twice in the knowledge block."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for f in facts:
        key = (f.entity, f.attribute, f.value)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def ground(kb, question: str, limits: GroundingLimits | None = None,
           history: list[str] | None = None) -> Grounding:
    """Link ``question`` against ``kb`` (``kb.link``, with ``history``: earlier user turns, oldest first)
    and return the bounded facts and their citations.

    Nothing retrieved (no entity, or linked entities without facts) gives an empty grounding.
    """
    if kb is None or not question.strip():
        return Grounding.empty()
    limits = limits or GroundingLimits()
    link = kb.link(question, max_values=limits.max_values, history=history)
    entities = list(dict.fromkeys(m.name for m in link.entities))
    facts = _distinct([f for f in link.facts if f.attribute != ALIAS])
    if ALIAS in link.attributes:  # "X有什么别称": the aliases, not the default attributes
        aliases = [f for e in entities[: limits.max_entities] for f in kb.facts(e, [ALIAS], limits.max_values)]
        only_alias = all(a == ALIAS for a in link.attributes)
        facts = aliases + ([] if only_alias and aliases else facts)
    groups = list(dict.fromkeys(_group(f) for f in facts))
    group_rank = {g: i for i, g in enumerate(groups)}
    inverse = getattr(getattr(kb, "schema", None), "inverse", None)
    ordered = sorted(_order_by_question(facts, link.attributes, inverse), key=lambda f: group_rank[_group(f)])
    kept = _select(ordered, groups, limits)
    used = list(dict.fromkeys(f.entity for f in kept))
    shown = {f.entity for f in kept if f.via == "symptom"}
    candidates = [c for c in link.candidates if c["disease"] in shown] + \
        [c for c in link.candidates if c["disease"] not in shown]
    return Grounding(kept, citations_of(kept), used, list(link.attributes), candidates, list(link.missing))
