"""The linking lexicon (``resources/lexicon.yaml``): colloquial names, drug-form words, negation cues and
the noise rule's thresholds, validated once with errors that name the file and field."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qihuang.errors import ConfigError
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


class Negation(_Strict):
    """Negation cues and what limits their scope."""

    cues: tuple[str, ...]
    not_negating: tuple[str, ...] = ()
    breaks: tuple[str, ...] = ()
    max_gap: int = Field(8, ge=0)

    @field_validator("cues", "not_negating", "breaks", mode="before")
    @classmethod
    def _norm(cls, value: list[str] | None) -> tuple[str, ...]:
        return _words(list(value or []))


class NoiseRule(_Strict):
    """Thresholds of :meth:`qihuang.kb.KnowledgeBase.noise_names` (documented in lexicon.yaml)."""

    min_support: int = Field(3, ge=1)
    min_kb_triples: int = Field(100_000, ge=0)
    min_word_freq: int = Field(100, ge=1)
    max_specificity: float = Field(1.5, gt=0)


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
    return parse_lexicon(yaml.safe_load(path.read_text(encoding="utf-8")), path)
