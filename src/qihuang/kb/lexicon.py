"""The linking lexicon (``resources/lexicon.yaml``): colloquial names, drug-form words, negation cues and
the noise rule's thresholds, validated once with errors that name the file and field."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qihuang.errors import ConfigError
from qihuang.fileio import read_yaml
from qihuang.kb.normalize import normalize
from qihuang.paths import resource


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _words(items: list[str]) -> tuple[str, ...]:
    out = tuple(normalize(w.strip()) for w in items)
    if any(not w for w in out):
        raise ValueError("empty word")
    return out


class DrugForms(_Strict):
    """Words that make a drug name a product; what is left is the substance (the stem)."""

    min_stem: int = Field(3, ge=2)
    salt_prefixes: tuple[str, ...] = ()
    salt_suffixes: tuple[str, ...] = ()
    form_prefixes: tuple[str, ...] = ()
    form_suffixes: tuple[str, ...] = ()

    @field_validator("salt_prefixes", "salt_suffixes", "form_prefixes", "form_suffixes", mode="before")
    @classmethod
    def _norm(cls, value: list[str] | None) -> tuple[str, ...]:
        return _words(list(value or []))

    def stem(self, name: str) -> str:
        """``name`` without its form and salt words (longest first, repeatedly), or ``name`` itself when
        the stem would be shorter than ``min_stem``."""
        current = name
        changed = True
        while changed:
            changed = False
            for suffix in sorted(self.form_suffixes + self.salt_suffixes, key=len, reverse=True):
                if current.endswith(suffix) and len(current) - len(suffix) >= self.min_stem:
                    current, changed = current[:-len(suffix)], True
                    break
            for prefix in sorted(self.salt_prefixes + self.form_prefixes, key=len, reverse=True):
                if current.startswith(prefix) and len(current) - len(prefix) >= self.min_stem:
                    current, changed = current[len(prefix):], True
                    break
        return current

    def affixes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(prefixes, suffixes) that may stand next to a drug name in text, longest first."""
        return (tuple(sorted(self.salt_prefixes + self.form_prefixes, key=len, reverse=True)),
                tuple(sorted(self.form_suffixes + self.salt_suffixes, key=len, reverse=True)))


class AnswerNegation(_Strict):
    """Cues and cue-followers that negate only in an answer's text ("不建议服用X", "禁止X", "并非X"):
    in a question "不能走路" or "特别疼" describe a symptom."""

    cues: tuple[str, ...] = ()
    after_cue: tuple[str, ...] = ()

    @field_validator("cues", "after_cue", mode="before")
    @classmethod
    def _norm(cls, value: list[str] | None) -> tuple[str, ...]:
        return _words(list(value or []))


class Negation(_Strict):
    """Negation cues and what limits their scope: one lexicon for linking (``kb/link.py``), verification
    (``answer/verify.py``) and triage (``answer/triage.py``, ``answer/triage_model.py``).

    ``cues`` negate what follows them; ``not_negating`` are words that contain a cue but negate nothing
    (有没有, 不舒服); ``breaks`` end a cue's scope; ``max_gap`` bounds the distance (linker) or the length of
    one list item (:meth:`negates`); ``after_cue`` may stand between a cue and what it negates (没有*出现*X);
    ``joiners`` join a list that one cue covers (没有X、Y和Z; 不X不Y也不Z gives each item its own cue);
    ``answer`` adds cues valid only in answer text."""

    cues: tuple[str, ...]
    not_negating: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()
    max_gap: int = Field(8, ge=0)
    after_cue: tuple[str, ...] = ()
    joiners: tuple[str, ...] = ()
    answer: AnswerNegation = AnswerNegation()

    @field_validator("cues", "not_negating", "breaks", "after_cue", "joiners", mode="before")
    @classmethod
    def _norm(cls, value: list[str] | None) -> tuple[str, ...]:
        return _words(list(value or []))

    def negates(self, head: str, answer: bool = False) -> bool:
        """Whether a cue at the end of ``head`` (normalized text of one clause, up to a term) negates the
        term: the cue, at most two ``after_cue`` words, then only list items ended by a joiner, no break
        word; a cue inside a ``not_negating`` word counts only when nothing but ``after_cue`` words
        follow it (不出 is not negating in 说不出话, but 不出汗 is negated)."""
        return _scope(self, answer).negates(head)

    def opens(self, clause: str, answer: bool = False) -> bool:
        """Whether ``clause`` opens with a cue (after 也/并/都/还/既), so the whole clause is negated."""
        return _scope(self, answer).opens(clause)


class _Scope:
    """:meth:`Negation.negates` compiled."""

    def __init__(self, neg: Negation, answer: bool):
        alt = lambda words: "|".join(map(re.escape, sorted(set(words), key=len, reverse=True)))  # noqa: E731
        cues = neg.cues + (neg.answer.cues if answer else ())
        after = neg.after_cue + (neg.answer.after_cue if answer else ())
        self.cue = re.compile(alt(cues))
        self.after_only = re.compile(f"(?:{alt(after)}){{0,2}}" if after else "")
        joiners = alt(neg.joiners) if neg.joiners else "(?!)"
        # after the last joiner, up to two characters of the last item may precede the term (没有胸痛和出冷*汗*)
        item = f"(?:.{{1,{max(neg.max_gap, 1)}}}?(?:{joiners}))+.{{0,2}}"
        self.listed = re.compile(f"(?:{alt(after)}){{0,2}}{item}" if after else item)
        self.other = re.compile(alt(neg.not_negating)) if neg.not_negating else None
        self.breaks = re.compile(alt(neg.breaks)) if neg.breaks else None
        self.opener = re.compile(f"^(?:也|并|都|还|既)?(?:{alt(cues)})")

    def _shadowed(self, text: str, start: int, own_end: int | None = None) -> bool:
        """Whether a not-negating word covers the cue at ``start`` (one that starts with the cue and
        ends by ``own_end`` is the cue and its followers themselves, and does not count)."""
        if self.other is None:
            return False
        return any(m.start() <= start < m.end() and not (own_end is not None and m.start() == start
                                                          and m.end() <= own_end)
                   for m in self.other.finditer(text, max(0, start - 4), start + 6))

    def negates(self, head: str) -> bool:
        for m in reversed(list(self._cues(head))):
            tail = head[m.end():]
            if self.breaks is not None and self.breaks.search(tail):
                continue
            if self.after_only.fullmatch(tail):
                if not self._shadowed(head, m.start(), len(head)):
                    return True
            elif self.listed.fullmatch(tail) and not self._shadowed(head, m.start()):
                return True
        return False

    def _cues(self, text: str):
        pos = 0
        while (m := self.cue.search(text, pos)) is not None:
            yield m
            pos = m.start() + 1

    def opens(self, clause: str) -> bool:
        m = self.opener.match(clause)
        return m is not None and not self._shadowed(clause, m.end() - 1)


@lru_cache(maxsize=8)
def _scope(neg: Negation, answer: bool) -> _Scope:
    return _Scope(neg, answer)


class NoiseRule(_Strict):
    """Thresholds of :meth:`qihuang.kb.KnowledgeBase.noise_names` (documented in lexicon.yaml)."""

    min_support: int = Field(3, ge=1)
    min_kb_triples: int = Field(100_000, ge=0)
    min_word_freq: int = Field(100, ge=1)
    max_specificity: float = Field(1.5, gt=0)
    rare_kept: str = ""  # a rare name matching this regular expression reads as a medical name: not noise

    @field_validator("rare_kept")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class IntentConfig(_Strict):
    """The learned attribute detector (kb/intent.py): overview wordings that ask nothing specific
    (``{entity}`` marks the mention), the probability an attribute needs, the regularization, and the
    share of a type's entries that must have an attribute for it to be the type's (reported attributes)."""

    none: tuple[str, ...] = ()
    threshold: float = Field(0.5, gt=0, lt=1)
    c: float = Field(10.0, gt=0)
    type_min_share: float = Field(0.002, ge=0, lt=1)

    @field_validator("none", mode="before")
    @classmethod
    def _entity(cls, value: list[str] | None) -> tuple[str, ...]:
        items = tuple(value or [])
        bad = [t for t in items if not isinstance(t, str) or "{entity}" not in t]
        if bad:
            raise ValueError(f"{bad[0]!r}: needs {{entity}}")
        return items


class Lexicon(_Strict):
    """The parsed lexicon; surfaces and words are normalized (width, traditional, case)."""

    colloquial: dict[str, str] = {}
    drug_forms: DrugForms = DrugForms()
    negation: Negation
    noise: NoiseRule = NoiseRule()
    intent: IntentConfig = IntentConfig()

    @field_validator("colloquial", mode="before")
    @classmethod
    def _colloquial(cls, value: dict) -> dict[str, str]:
        out: dict[str, str] = {}
        for surface, target in (value or {}).items():
            if not isinstance(surface, str) or not isinstance(target, str) or not surface.strip() or not target.strip():
                raise ValueError(f"{surface!r}: {target!r}: surface and target must be non-empty strings")
            key = normalize(surface.strip())
            if len(key) < 2:
                raise ValueError(f"{surface!r}: a surface needs at least 2 characters")
            if key == normalize(target.strip()):
                raise ValueError(f"{surface!r}: maps to itself")
            out[key] = target.strip()
        return out


def parse_lexicon(raw: object, path: str | Path = "lexicon.yaml") -> Lexicon:
    """Validate a parsed lexicon mapping; errors name the file and the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return Lexicon.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None


@lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """The shipped lexicon, parsed once."""
    path = resource("lexicon.yaml")
    return parse_lexicon(read_yaml(path, "the linking lexicon"), path)
