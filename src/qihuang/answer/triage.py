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

How a match is read (the file's ``negation`` and ``context`` sections hold the cue words):

- **Negation has a scope.** A match is negated only when a negation cue stands right before it in
  the same clause, or before a list that ends with it ("没有胸痛和出汗": both negated). A clause
  ends at punctuation, so "没有力气，说话不清" still fires on 说话不清.
- **General questions are not red flags.** A match counts only when its sentence describes
  someone: a sentence with a knowledge cue ("有什么症状", "早期表现", "怎么急救", "什么原因") and
  no anchor (a person: 我/我爸/孩子/患者/他…; a time: 刚才/现在/突然/2小时…), or any hypothetical
  or preventive sentence ("如果/万一…", "怎么预防/防止…"), is a general question. "被蛇咬了应该怎么急救" is general,
  "我爸刚才被蛇咬了" is an emergency; "胸口疼得厉害怎么办" (no subject, no knowledge cue) fires,
  because patients often drop the subject. Refusals, and rules marked ``always``, ignore this.
- **Known misspellings** (``typos`` in the file: homophones such as 农要 → 农药, variant characters
  such as 睪 → 睾) are corrected before matching.
- **A learned backstop** (``answer/triage_model.py``) catches wording no pattern knows: when no
  red-flag rule fired, a classifier trained on qihuang's own labelled questions may still raise
  ``emergency`` (rule id ``learned_backstop``), with the threshold of the file's ``model``.
- **Earlier turns count.** ``triage(text, history=[...])`` reads the earlier user turns with the
  current one (each turn its own sentences), so a red flag told two turns ago still leads the answer.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path


from qihuang.errors import ConfigError
from qihuang.fileio import read_yaml
from qihuang.kb.normalize import normalize
from qihuang.paths import resource

LEVELS = ("none", "urgent", "emergency", "refuse")
"""Triage levels, least to most severe."""

_SEVERITY = {name: i for i, name in enumerate(LEVELS)}
_CLAUSE_BREAK = re.compile(r"[，。,.;；!！?？\n：:]")
_SENTENCE_BREAK = re.compile(r"[。.;；!！?？\n]")
_LIST_JOINERS = r"(?:、|和|或者|或|及|以及|与|跟|/|也)"


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
    """One red flag: every group needs a (non-negated) match; ``unless`` vetoes the rule.

    ``always``: fire even in a general question (refusals always do)."""

    id: str
    level: str
    label: str
    advice: str
    groups: tuple[tuple[re.Pattern, ...], ...]
    unless: tuple[re.Pattern, ...] = ()
    source: str = ""
    always: bool = False


@dataclass(frozen=True)
class Context:
    """Cues that tell a general question from a person describing what is happening."""

    general: re.Pattern
    anchors: re.Pattern
    always_general: re.Pattern | None = None
    meta: re.Pattern | None = None


@dataclass(frozen=True)
class RuleSet:
    """The parsed rule file. ``negation`` matches a negation cue (with its list) ending a clause prefix."""

    rules: tuple[Rule, ...]
    messages: dict[str, str]
    negation: re.Pattern | None
    context: Context | None = None
    source: str = ""
    typos: dict[str, str] = field(default_factory=dict)
    typo_pattern: re.Pattern | None = None
    backstop: Rule | None = None
    threshold: float = 1.0
    model_c: float = 1.0

    def fix_typos(self, text: str) -> str:
        """``text`` with the file's known misspellings (homophones, variant characters) corrected."""
        if self.typo_pattern is None:
            return text
        return self.typo_pattern.sub(lambda m: self.typos[m.group(0)], text)


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
    for key, kind in (("source", str), ("always", bool)):
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{where}: field {key!r} must be a {kind.__name__}")
    groups = tuple(tuple(_compile(p, where) for p in g) for g in raw_groups)
    unless = tuple(_compile(p, where) for p in raw.get("unless") or [])
    return Rule(raw["id"], raw["level"], raw["label"], raw["advice"], groups, unless,
                raw.get("source", ""), raw.get("always", False))


def _parse_negation(raw, path: Path) -> re.Pattern | None:
    if not raw:
        return None
    cue = _compile(raw, f"{path}: negation").pattern
    # a cue, optionally followed by list items it also covers ("没有胸痛、出汗或"), then the match
    return re.compile(f"(?:{cue})(?:[^，。,.;；!！?？\\n]{{1,8}}?{_LIST_JOINERS})*$")


def _parse_context(raw, path: Path) -> Context | None:
    if raw is None:
        return None
    where = f"{path}: context"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'general' and 'anchors'")
    for key in ("general", "anchors"):
        if key not in raw:
            raise ConfigError(f"{where}: field {key!r} is required (a regular expression)")
    unknown = set(raw) - {"general", "anchors", "always_general", "meta"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    opt = {k: _compile(raw[k], f"{where}.{k}") for k in ("always_general", "meta") if raw.get(k)}
    return Context(_compile(raw["general"], f"{where}.general"), _compile(raw["anchors"], f"{where}.anchors"), **opt)


def _parse_typos(raw, path: Path) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                            for k, v in raw.items()):
        raise ConfigError(f"{path}: field 'typos' must map misspellings to corrections (non-empty strings)")
    return {normalize(k): normalize(v) for k, v in raw.items()}


def _parse_model(raw, path: Path) -> tuple[Rule | None, float, float]:
    """The ``model`` section: the learned backstop's threshold, C, label and advice."""
    if raw is None:
        return None, 1.0, 1.0
    where = f"{path}: model"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with threshold, c, label, advice")
    for key in ("label", "advice"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{where}: field {key!r} is required (a string)")
    for key in ("threshold", "c"):
        if not isinstance(raw.get(key), (int, float)) or isinstance(raw.get(key), bool) or raw[key] <= 0:
            raise ConfigError(f"{where}: field {key!r} must be a positive number")
    if raw["threshold"] > 1:
        raise ConfigError(f"{where}: field 'threshold' must be at most 1")
    rule = Rule("learned_backstop", "emergency", raw["label"], raw["advice"], (), source="triage_model")
    return rule, float(raw["threshold"]), float(raw["c"])


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Parse and validate a red-flag rule file (default: the packaged ``red_flags.yaml``)."""
    path = Path(path) if path else resource("red_flags.yaml")
    data = read_yaml(path, "red-flag rules")
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list")
    messages = data.get("levels") or {}
    missing = [lv for lv in LEVELS[1:] if not isinstance(messages.get(lv), str)]
    if missing:
        raise ConfigError(f"{path}: field 'levels' needs a message for {missing}")
    rules = tuple(_parse_rule(r, i, path) for i, r in enumerate(data["rules"]))
    ids = [r.id for r in rules]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate rule ids {dupes}")
    typos = _parse_typos(data.get("typos"), path)
    typo_pattern = re.compile("|".join(map(re.escape, sorted(typos, key=len, reverse=True)))) if typos else None
    return RuleSet(rules, messages, _parse_negation(data.get("negation"), path),
                   _parse_context(data.get("context"), path), str(data.get("source", "")), typos, typo_pattern,
                   *_parse_model(data.get("model"), path))


@lru_cache(maxsize=4)
def _default_rules(path: str | None) -> RuleSet:
    return load_rules(path)


class _Text:
    """Normalized text with its clause and sentence boundaries (for negation and context)."""

    def __init__(self, text: str, rules: RuleSet):
        self.text, self.rules = text, rules
        self.clauses = [0] + [m.end() for m in _CLAUSE_BREAK.finditer(text)]
        self.sentences = [0] + [m.end() for m in _SENTENCE_BREAK.finditer(text)]
        self._general: dict[int, bool] = {}

    def negated(self, start: int) -> bool:
        if self.rules.negation is None:
            return False
        clause = self.clauses[bisect.bisect_right(self.clauses, start) - 1]
        return bool(self.rules.negation.search(self.text, clause, start))

    def general(self, pos: int) -> bool:
        """Whether the sentence at ``pos`` asks about a condition in general (see the module doc)."""
        ctx = self.rules.context
        if ctx is None:
            return False
        i = bisect.bisect_right(self.sentences, pos) - 1
        if i not in self._general:
            end = self.sentences[i + 1] if i + 1 < len(self.sentences) else len(self.text)
            sent = self.text[self.sentences[i]:end]
            if ctx.always_general is not None and ctx.always_general.search(sent):
                self._general[i] = True
            else:
                bare = ctx.meta.sub(" ", sent) if ctx.meta is not None else sent
                self._general[i] = bool(ctx.general.search(sent)) and not ctx.anchors.search(bare)
        return self._general[i]


def _hits(t: _Text, group: tuple[re.Pattern, ...]) -> list[int]:
    return [m.start() for p in group for m in p.finditer(t.text) if not t.negated(m.start())]


def _fires(rule: Rule, t: _Text) -> bool:
    if any(p.search(t.text) for p in rule.unless):
        return False
    positions: list[int] = []
    for group in rule.groups:
        hits = _hits(t, group)
        if not hits:
            return False
        positions += hits
    if rule.level == "refuse" or rule.always:
        return True
    return not all(t.general(p) for p in positions)


def _backstop(t: _Text, rules: RuleSet) -> Rule | None:
    """The learned backstop's rule (at its predicted level) when it fires on a non-general text."""
    if rules.backstop is None or all(t.general(p) for p in t.sentences if p < len(t.text)):
        return None
    from qihuang.answer.triage_model import default_model, red_flag_probability

    if red_flag_probability(default_model(None, rules.model_c), t.text) < rules.threshold:
        return None
    return rules.backstop


def _message(level: str, fired: list[Rule], rules: RuleSet) -> str:
    top = [r for r in fired if r.level == level]
    labels = "、".join(dict.fromkeys(r.label for r in top))
    head = rules.messages[level].format(labels=labels)
    # advice of the red flags at the top level; a refusal also carries emergency advice
    # (e.g. the suicide-crisis lines when someone asks for a lethal dose)
    keep = ("emergency",) if level == "refuse" else (level,)
    advice = [r.advice for r in fired if r.level in keep]
    return "\n".join([head, *dict.fromkeys(advice)])


def triage(text: str, rules: RuleSet | None = None, history: list[str] | None = None) -> Triage:
    """Check ``text`` against the red-flag rules; the most severe level wins.

    ``history``: the earlier *user* turns of the conversation, oldest first; a red flag in any of
    them still counts (each turn is read as its own sentences, negation never crosses turns)."""
    rules = rules or _default_rules(None)
    turns = [t for t in (history or []) if isinstance(t, str) and t.strip()] + [text or ""]
    t = _Text(rules.fix_typos("\n".join(normalize(x) for x in turns)), rules)
    fired = [r for r in rules.rules if _fires(r, t)]
    if not any(r.level != "refuse" for r in fired):
        backstop = _backstop(t, rules)
        fired += [backstop] if backstop is not None else []
    if not fired:
        return Triage()
    level = max((r.level for r in fired), key=_SEVERITY.__getitem__)
    return Triage(level=level, message=_message(level, fired, rules), matched=[r.id for r in fired])


def warm(rules: RuleSet | None = None) -> None:
    """Compile the rules and train the learned backstop now (a server calls this at start-up, so the
    first question does not wait for it)."""
    rules = rules or _default_rules(None)
    if rules.backstop is not None:
        from qihuang.answer.triage_model import default_model

        default_model(None, rules.model_c)
