"""Red-flag triage: checked on every question before the model generates anything.

The rules are data (``resources/red_flags.yaml``): regular expressions grouped per red flag,
each with a level. ``triage(text)`` returns the most severe level that fired, the ids of the
rules that fired and the message to put in front of the answer whatever the model says:

- ``emergency``: call 120 / go to the emergency department now;
- ``urgent``: see a doctor in person soon (same day);
- ``refuse``: a clearly harmful request (lethal dosing, harming someone, suicide methods,
  making illicit drugs): nothing is generated, the message is the whole answer.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from qihuang.errors import ConfigError
from qihuang.kb.normalize import normalize
from qihuang.paths import resource

LEVELS = ("none", "urgent", "emergency", "refuse")
"""Triage levels, least to most severe."""

_SEVERITY = {name: i for i, name in enumerate(LEVELS)}
_CLAUSE_BREAK = re.compile(r"[，。,.;；!！?？\n]")


@dataclass
class Triage:
    """Result of triage: ``level`` (see ``LEVELS``), the ``message`` to show, ``matched`` rule ids."""

    level: str = "none"
    message: str = ""
    matched: list[str] = field(default_factory=list)

    @property
    def is_red_flag(self) -> bool:
        """True for ``urgent`` and ``emergency``."""
        return self.level in ("urgent", "emergency")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Rule:
    """One red flag: every group needs a (non-negated) match; ``unless`` vetoes the rule."""

    id: str
    level: str
    label: str
    advice: str
    groups: tuple[tuple[re.Pattern, ...], ...]
    unless: tuple[re.Pattern, ...] = ()


@dataclass(frozen=True)
class RuleSet:
    """The parsed rule file."""

    rules: tuple[Rule, ...]
    messages: dict[str, str]
    negation: re.Pattern | None


def _compile(pattern, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: a pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{where}: bad regular expression {pattern!r}: {exc}") from exc


def _parse_rule(raw: dict, index: int, path: Path) -> Rule:
    where = f"{path}: rules[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    for key in ("id", "level", "label", "advice"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: field {key!r} is required (a string)")
    where = f"{path}: rule {raw['id']!r}"
    if raw["level"] not in LEVELS[1:]:
        raise ConfigError(f"{where}: field 'level' must be one of {LEVELS[1:]}, got {raw['level']!r}")
    if ("any" in raw) == ("all" in raw):
        raise ConfigError(f"{where}: give exactly one of 'any' (list of patterns) or 'all' (list of groups)")
    raw_groups = [raw["any"]] if "any" in raw else raw["all"]
    if not isinstance(raw_groups, list) or not all(isinstance(g, list) and g for g in raw_groups):
        raise ConfigError(f"{where}: 'any' must be a list of patterns, 'all' a list of non-empty lists")
    groups = tuple(tuple(_compile(p, where) for p in g) for g in raw_groups)
    unless = tuple(_compile(p, where) for p in raw.get("unless") or [])
    return Rule(raw["id"], raw["level"], raw["label"], raw["advice"], groups, unless)


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Parse and validate a red-flag rule file (default: the packaged ``red_flags.yaml``)."""
    path = Path(path) if path else resource("red_flags.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read red-flag rules: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list")
    messages = data.get("levels") or {}
    missing = [lv for lv in LEVELS[1:] if not isinstance(messages.get(lv), str)]
    if missing:
        raise ConfigError(f"{path}: field 'levels' needs a message for {missing}")
    rules = tuple(_parse_rule(r, i, path) for i, r in enumerate(data["rules"]))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: duplicate rule ids")
    negation = _compile(data["negation"], f"{path}: negation") if data.get("negation") else None
    return RuleSet(rules, messages, negation)


@lru_cache(maxsize=4)
def _default_rules(path: str | None) -> RuleSet:
    return load_rules(path)


def _negated(text: str, start: int, negation: re.Pattern | None) -> bool:
    if negation is None:
        return False
    before = text[:start]
    clause = _CLAUSE_BREAK.split(before)[-1]
    return bool(negation.search(clause))


def _group_hit(text: str, group: tuple[re.Pattern, ...], negation: re.Pattern | None) -> bool:
    for pattern in group:
        for m in pattern.finditer(text):
            if not _negated(text, m.start(), negation):
                return True
    return False


def _fires(rule: Rule, text: str, negation: re.Pattern | None) -> bool:
    if any(p.search(text) for p in rule.unless):
        return False
    return all(_group_hit(text, g, negation) for g in rule.groups)


def _message(level: str, fired: list[Rule], rules: RuleSet) -> str:
    top = [r for r in fired if r.level == level]
    labels = "、".join(dict.fromkeys(r.label for r in top))
    head = rules.messages[level].format(labels=labels)
    # advice of the red flags at the top level; a refusal also carries emergency advice
    # (e.g. the suicide-crisis lines when someone asks for a lethal dose)
    keep = ("emergency",) if level == "refuse" else (level,)
    advice = [r.advice for r in fired if r.level in keep]
    return "\n".join([head, *dict.fromkeys(advice)])


def triage(text: str, rules: RuleSet | None = None) -> Triage:
    """Check ``text`` against the red-flag rules; the most severe level wins."""
    rules = rules or _default_rules(None)
    norm = normalize(text or "")
    fired = [r for r in rules.rules if _fires(r, norm, rules.negation)]
    if not fired:
        return Triage()
    level = max((r.level for r in fired), key=_SEVERITY.__getitem__)
    return Triage(level=level, message=_message(level, fired, rules), matched=[r.id for r in fired])
