"""Red-flag triage: checked on every question before the model generates anything.

The rules are data (``resources/red_flags.yaml``, built from the CEDIS presenting-complaint list
used with the Canadian Triage and Acuity Scale, see the file's header): regular expressions grouped
per emergency presentation, each with a level. ``triage(text)`` returns the most severe level that
fired, the ids of the rules that fired and the message to put in front of the answer whatever the
model says:

- ``emergency``: call 120 / go to the emergency department now;
- ``urgent``: see a doctor in person soon (same day);
- ``refuse``: a clearly harmful request (lethal dosing, harming someone, suicide methods,
  making illicit drugs): nothing is generated, the message is the whole answer.

How a question is read (``answer/triage_context.py``): a match counts only when it is not negated (the
one negation lexicon, ``resources/lexicon.yaml``, shared with linking and verification: "没有胸痛、出汗",
"不胸闷不出汗也不喘"), not governed by a prevention word ("怎么教孩子防溺水"), current (not "五年前被狗咬过",
"上个月…早就好了"; for a complaint also not "气喘，已经持续了近两年" unless a present cue such as 今天/突然
starts a new stretch), and in a sentence that describes someone rather than asks in general ("被蛇咬了应该
怎么急救" is general, "我爸刚才被蛇咬了" an emergency). Each rule says how it reads time (``time``:
``complaint``, ``event`` or ``timeless`` — suicidal intent is never discounted). Refusals, and rules marked
``always``, ignore the general-question test.

- **Known misspellings** (``typos`` in the file: homophones such as 农要 → 农药, variant characters
  such as 睪 → 睾) are corrected before matching.
- **A learned backstop** (``answer/triage_model.py``) catches wording no pattern knows: it is asked
  only when no rule fired (its suicidal-intent head also under an urgent rule). It reads the
  question's current text (negated clauses and past or long-standing stretches removed), is calibrated
  to a realistic share of red flags, and raises ``urgent`` from the file's ``model.urgent`` probability
  and ``emergency`` only when its second model's P(emergency) also reaches ``model.emergency`` (very
  high): alone it cannot put an emergency banner on an ordinary question. Its suicidal-intent head
  raises ``emergency`` with the crisis advice from ``model.self_harm``: there a false alarm is acceptable,
  a miss is not.
- **Earlier turns count.** ``triage(text, history=[...])`` reads the earlier user turns with the
  current one (each turn its own sentences), so a red flag told two turns ago still leads the answer.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from qihuang.answer.triage_context import (TIME_CLASSES, Context, Reading, TimeCues,
                                           default_negation, parse_context, parse_time)
from qihuang.errors import ConfigError
from qihuang.fileio import compile_pattern, read_yaml
from qihuang.kb.lexicon import Negation
from qihuang.kb.normalize import normalize
from qihuang.paths import resource

LEVELS = ("none", "urgent", "emergency", "refuse")
"""Triage levels, least to most severe."""

_SEVERITY = {name: i for i, name in enumerate(LEVELS)}
BACKSTOP = "learned_backstop"
"""Rule id of the learned backstop in ``Triage.matched``."""
LEARNED_SELF_HARM = "learned_self_harm"
"""Rule id of the learned suicidal-intent detector in ``Triage.matched``."""


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
    """One red flag: every group needs a counted match; ``unless`` vetoes the rule.

    ``always``: fire even in a general question (refusals always do); ``in_hypothetical``: fire even in a
    hypothetical sentence ("如果我消失了…"). ``time``: how the rule reads time (``triage_context.TIME_CLASSES``)."""

    id: str
    level: str
    label: str
    advice: str
    groups: tuple[tuple[re.Pattern, ...], ...]
    unless: tuple[re.Pattern, ...] = ()
    source: str = ""
    always: bool = False
    time: str = "complaint"
    in_hypothetical: bool = False


@dataclass(frozen=True)
class Backstop:
    """The ``model`` section: the learned backstop's thresholds (it raises ``urgent`` from P(red flag)
    >= ``urgent``, ``emergency`` only when also P(emergency) >= ``emergency``; suicidal intent, with the
    crisis advice, from P(self-harm) >= ``self_harm``), the regularization ``c``, the share of red flags
    ``red_share`` it is calibrated to, and the labels and advice it shows."""

    urgent: float
    emergency: float
    self_harm: float
    c: float
    red_share: float
    label: str
    advice: str
    self_harm_label: str
    self_harm_advice: str

    def rule(self, level: str) -> Rule:
        return Rule(BACKSTOP, level, self.label, self.advice, (), source="triage_model")

    def self_harm_rule(self) -> Rule:
        return Rule(LEARNED_SELF_HARM, "emergency", self.self_harm_label, self.self_harm_advice, (),
                    source="triage_model", time="timeless")


@dataclass(frozen=True)
class RuleSet:
    """The parsed rule file (negation comes from the shared lexicon)."""

    rules: tuple[Rule, ...]
    messages: dict[str, str]
    negation: Negation | None
    context: Context | None = None
    source: str = ""
    typos: dict[str, str] = field(default_factory=dict)
    typo_pattern: re.Pattern | None = None
    backstop: Backstop | None = None
    time: TimeCues = field(default_factory=TimeCues)

    def fix_typos(self, text: str) -> str:
        """``text`` with the file's known misspellings (homophones, variant characters) corrected."""
        if self.typo_pattern is None:
            return text
        return self.typo_pattern.sub(lambda m: self.typos[m.group(0)], text)

    def read(self, text: str) -> Reading:
        """``text`` (normalized, typos fixed) ready to be asked about matches."""
        return Reading(text, self.context, self.time, self.negation)


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
    for key, kind in (("source", str), ("always", bool), ("time", str), ("in_hypothetical", bool)):
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{where}: field {key!r} must be a {kind.__name__}")
    time = raw.get("time", "timeless" if raw["level"] == "refuse" else "complaint")
    if time not in TIME_CLASSES:
        raise ConfigError(f"{where}: field 'time' must be one of {TIME_CLASSES}, got {time!r}")
    groups = tuple(tuple(compile_pattern(p, where) for p in g) for g in raw_groups)
    unless = tuple(compile_pattern(p, where) for p in raw.get("unless") or [])
    return Rule(raw["id"], raw["level"], raw["label"], raw["advice"], groups, unless,
                raw.get("source", ""), raw.get("always", False), time, raw.get("in_hypothetical", False))


def _parse_typos(raw, path: Path) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                            for k, v in raw.items()):
        raise ConfigError(f"{path}: field 'typos' must map misspellings to corrections (non-empty strings)")
    return {normalize(k): normalize(v) for k, v in raw.items()}


_MODEL_NUMBERS = ("urgent", "emergency", "self_harm", "c", "red_share")
_MODEL_TEXTS = ("label", "advice", "self_harm_label", "self_harm_advice")


def _parse_model(raw, path: Path) -> Backstop | None:
    """The ``model`` section (see :class:`Backstop`)."""
    if raw is None:
        return None
    where = f"{path}: model"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with {list(_MODEL_NUMBERS + _MODEL_TEXTS)}")
    unknown = set(raw) - set(_MODEL_NUMBERS + _MODEL_TEXTS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    for key in _MODEL_TEXTS:
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: field {key!r} is required (a string)")
    for key in _MODEL_NUMBERS:
        value = raw.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{where}: field {key!r} must be a positive number")
        if key != "c" and value > 1:
            raise ConfigError(f"{where}: field {key!r} must be at most 1")
    return Backstop(*(float(raw[k]) for k in _MODEL_NUMBERS), *(raw[k] for k in _MODEL_TEXTS))


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Parse and validate a red-flag rule file (default: the packaged ``red_flags.yaml``)."""
    path = Path(path) if path else resource("red_flags.yaml")
    data = read_yaml(path, "red-flag rules")
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list")
    if "negation" in data:
        raise ConfigError(f"{path}: field 'negation' is no longer read: negation cues live in the 'negation' "
                          "section of resources/lexicon.yaml (one lexicon for linking, verification and triage)")
    messages = data.get("levels") or {}
    missing = [lv for lv in LEVELS[1:] if not isinstance(messages.get(lv), str)]
    if missing:
        raise ConfigError(f"{path}: field 'levels' needs a message for {missing}")
    rules = tuple(_parse_rule(r, i, path) for i, r in enumerate(data["rules"]))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1} | ({BACKSTOP} & set(ids)))
    if dupes:
        raise ConfigError(f"{path}: duplicate or reserved rule ids {dupes}")
    typos = _parse_typos(data.get("typos"), path)
    typo_pattern = re.compile("|".join(map(re.escape, sorted(typos, key=len, reverse=True)))) if typos else None
    return RuleSet(rules, messages, default_negation(), parse_context(data.get("context"), path),
                   str(data.get("source", "")), typos, typo_pattern, _parse_model(data.get("model"), path),
                   parse_time(data.get("time"), path))


@lru_cache(maxsize=4)
def _default_rules(path: str | None) -> RuleSet:
    return load_rules(path)


def default_rules() -> RuleSet:
    """The packaged rule file, parsed once."""
    return _default_rules(None)


def _fires(rule: Rule, t: Reading) -> bool:
    if any(p.search(t.text) for p in rule.unless):
        return False
    positions: list[int] = []
    for group in rule.groups:
        hits = [m.start() for p in group for m in p.finditer(t.text) if t.counts(m.start(), m.end(), rule.time)]
        if not hits:
            return False
        positions += hits
    if rule.level == "refuse" or rule.always:
        return True
    return not all(t.general(p, hypothetical=not rule.in_hypothetical) for p in positions)


def backstop_probabilities(t: Reading, rules: RuleSet) -> tuple[float, float, float] | None:
    """(P(red flag), P(emergency), P(suicidal intent)) of the learned backstop for what ``t`` says now;
    None when it is not asked (no ``model`` section, only general sentences, nothing current left)."""
    if rules.backstop is None or t.all_general():
        return None
    current = t.current_text()
    if not current.strip():
        return None
    from qihuang.answer.triage_model import default_model

    model = default_model(rules.backstop.c, rules.backstop.red_share)
    return (*model.probabilities(current), model.self_harm_probability(current))


def _learned(t: Reading, rules: RuleSet, gap: bool) -> list[Rule]:
    """The learned rules that fire: suicidal intent (always asked below an emergency rule: a miss is the
    worst error there), and, only where no rule fired (``gap``), the backstop at ``emergency`` when both
    P(red flag) and P(emergency) reach their thresholds, at ``urgent`` when only P(red flag) does."""
    probs = backstop_probabilities(t, rules)
    if probs is None:
        return []
    red, emergency, self_harm = probs
    out = [rules.backstop.self_harm_rule()] if self_harm >= rules.backstop.self_harm else []
    if gap and red >= rules.backstop.urgent:
        out.append(rules.backstop.rule("emergency" if emergency >= rules.backstop.emergency else "urgent"))
    return out


def _message(level: str, fired: list[Rule], rules: RuleSet) -> str:
    top = [r for r in fired if r.level == level]
    labels = "、".join(dict.fromkeys(r.label for r in top))
    head = rules.messages[level].format(labels=labels)
    # advice of the red flags at the top level; a refusal also carries emergency advice
    # (e.g. the suicide-crisis lines when someone asks for a lethal dose)
    keep = ("emergency",) if level == "refuse" else (level,)
    advice = [r.advice for r in fired if r.level in keep]
    return "\n".join([head, *dict.fromkeys(advice)])


def read(text: str, rules: RuleSet | None = None, history: list[str] | None = None) -> Reading:
    """The question (with its earlier user turns, each its own sentences) as triage reads it."""
    rules = rules or default_rules()
    turns = [t for t in (history or []) if isinstance(t, str) and t.strip()] + [text or ""]
    return rules.read(rules.fix_typos("\n".join(normalize(x) for x in turns)))


def triage(text: str, rules: RuleSet | None = None, history: list[str] | None = None) -> Triage:
    """Check ``text`` against the red-flag rules and the learned backstop; the most severe level wins.

    ``history``: the earlier *user* turns of the conversation, oldest first; a red flag in any of
    them still counts (each turn is read as its own sentences, negation never crosses turns)."""
    rules = rules or default_rules()
    t = read(text, rules, history)
    fired = [r for r in rules.rules if _fires(r, t)]
    if not any(r.level in ("emergency", "refuse") for r in fired):  # the backstop never lowers a rule
        fired += _learned(t, rules, gap=not fired)
    if not fired:
        return Triage()
    level = max((r.level for r in fired), key=_SEVERITY.__getitem__)
    return Triage(level=level, message=_message(level, fired, rules), matched=[r.id for r in fired])


def warm(rules: RuleSet | None = None) -> None:
    """Compile the rules and train the learned backstop now (a server calls this at start-up, so the
    first question does not wait for it)."""
    rules = rules or default_rules()
    if rules.backstop is not None:
        from qihuang.answer.triage_model import default_model

        default_model(rules.backstop.c, rules.backstop.red_share)
