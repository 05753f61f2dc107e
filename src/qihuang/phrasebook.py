"""The phrasebook: how questions ask about each attribute and how answers state its values.

``resources/phrasings.yaml`` is read by question understanding (the learned intent detector of
``kb/intent.py`` trains on its question wordings) and by data generation (``datagen/phrasings.py``
renders questions and answers from it), so its models, loader and validation live here, outside
both. Errors name the file and the field::

    load_phrasebook().get("drugs").patient[0]  # '{entity}吃什么药？'
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from qihuang.errors import ConfigError
from qihuang.fileio import read_yaml
from qihuang.paths import resource

JOINS = ("and", "or", "list", "clauses")
_PLACEHOLDERS = {"entity", "values", "count", "label"}


@dataclass(frozen=True)
class Phrasing:
    """Everything needed to ask about one attribute (for one entity type) and to answer it."""

    key: str
    label: str
    patient: tuple[str, ...]
    clinician: tuple[str, ...]
    followup: tuple[str, ...]
    answer: tuple[str, ...]
    answer_one: tuple[str, ...] = ()
    answer_clauses: tuple[str, ...] = ()
    clause_min_chars: int | None = None
    strip_prefixes: tuple[str, ...] = ()  # wording around a value that the answer patterns already say
    strip_suffixes: tuple[str, ...] = ()
    join: str = "and"
    max_values: int = 8
    safety: str | None = None  # key of safety_notes ("drug", "treatment"), None: no note
    value_sentences: dict[str, str] = field(default_factory=dict)
    qa: bool = True
    generic: bool = False  # built from the label because the attribute has no phrasings


@dataclass(frozen=True)
class Phrasebook:
    """The parsed ``phrasings.yaml``."""

    attributes: dict[str, Phrasing]
    by_type: dict[tuple[str, str], Phrasing]
    generic: dict[str, tuple[str, ...]]
    safety_notes: dict[str, tuple[str, ...]]
    scenario: dict
    dialogue: dict
    balanced_types: tuple[str, ...]
    etc: str = "等"
    clause_max_values: int = 4
    clause_min_chars: int = 14
    more_clauses: str = ""
    clause_answer: tuple[str, ...] = ()
    generated: dict[str, Phrasing] = field(default_factory=dict, compare=False, repr=False)

    def get(self, attribute: str, entity_type: str | None = None) -> Phrasing:
        """Phrasing for an attribute, the entity type's override first, else a generic one from its label."""
        if entity_type is not None:
            found = self.by_type.get((attribute, entity_type))
            if found is not None:
                return found
        found = self.attributes.get(attribute)
        if found is not None:
            return found
        return _generic_phrasing(self, attribute)


def _generic_phrasing(book: Phrasebook, attribute: str) -> Phrasing:
    found = book.generated.get(attribute)
    if found is None:
        label = _label(attribute)
        fill = {k: tuple(t.replace("{label}", label) for t in v) for k, v in book.generic.items()}
        found = Phrasing(attribute, label, fill["patient"], fill["clinician"], fill["followup"], fill["answer"],
                         join="list", qa=False, generic=True)
        book.generated[attribute] = found
    return found


def _label(attribute: str) -> str:
    from qihuang.kb.schema import ATTRIBUTES

    return ATTRIBUTES.get(attribute, attribute)


# --------------------------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------------------------
def _check_pattern(text: object, where: str, path: Path, required: set[str] = frozenset()) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{path}: {where}: expected a non-empty string, got {text!r}")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"{path}: {where}: bad pattern {text!r}: {exc}") from None
    allowed = _PLACEHOLDERS | {"symptoms", "disease", "matched", "departments"}
    if names - allowed:
        raise ConfigError(f"{path}: {where}: unknown placeholder(s) {sorted(names - allowed)} in {text!r}")
    if required - names:
        raise ConfigError(f"{path}: {where}: pattern {text!r} must contain {sorted(required - names)}")
    if "{values}等" in text:
        raise ConfigError(f"{path}: {where}: {text!r}: do not write 等 after {{values}} (cut lists already end in 等)")
    return text


def _strings(spec: dict, key: str, where: str, path: Path, required: set[str] = frozenset()) -> tuple[str, ...]:
    items = spec.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(f"{path}: {where}.{key}: expected a list")
    return tuple(_check_pattern(t, f"{where}.{key}[{i}]", path, required) for i, t in enumerate(items))


def _parse_phrasing(key: str, spec: dict, base: Phrasing | None, where: str, path: Path, max_values: int) -> Phrasing:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping")
    fields: dict = {}
    for name in ("patient", "clinician", "followup"):
        if name in spec:
            fields[name] = _strings(spec, name, where, path, {"entity"} if name != "followup" else set())
    for name in ("answer", "answer_one", "answer_clauses"):
        if name in spec:
            fields[name] = _strings(spec, name, where, path, {"values"})
    if "join" in spec:
        if spec["join"] not in JOINS:
            raise ConfigError(f"{path}: {where}.join: {spec['join']!r} is not one of {JOINS}")
        fields["join"] = spec["join"]
    if "safety" in spec:
        fields["safety"] = _safety_kind(spec["safety"], f"{where}.safety", path)
    for name, kind in (("max_values", int), ("clause_min_chars", int), ("qa", bool)):
        if name in spec:
            if not isinstance(spec[name], kind):
                raise ConfigError(f"{path}: {where}.{name}: expected {kind.__name__}, got {spec[name]!r}")
            fields[name] = spec[name]
    for name in ("strip_prefixes", "strip_suffixes"):
        if name in spec:
            items = spec[name]
            if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
                raise ConfigError(f"{path}: {where}.{name}: expected a list of non-empty strings")
            fields[name] = tuple(sorted(items, key=len, reverse=True))
    if "value_sentences" in spec:
        vs = spec["value_sentences"] or {}
        fields["value_sentences"] = {str(k): _check_pattern(v, f"{where}.value_sentences.{k}", path)
                                     for k, v in vs.items()}
    if base is not None:
        return replace(base, **fields)
    fields.setdefault("max_values", max_values)
    phr = Phrasing(key, _label(key), fields.pop("patient", ()), fields.pop("clinician", ()),
                   fields.pop("followup", ()), fields.pop("answer", ()), **fields)
    if len(phr.patient) + len(phr.clinician) < 2 or not phr.answer:
        raise ConfigError(f"{path}: {where}: needs at least 2 questions (patient + clinician) and 1 answer")
    return phr


def load_phrasebook(path: str | Path | None = None) -> Phrasebook:
    """Parse and validate a phrasings file (default: the shipped ``resources/phrasings.yaml``)."""
    return _load_cached(str(Path(path) if path else resource("phrasings.yaml")))


@lru_cache(maxsize=4)
def _load_cached(path_str: str) -> Phrasebook:
    path = Path(path_str)
    raw = read_yaml(path, "phrasings")
    if not isinstance(raw, dict) or not isinstance(raw.get("attributes"), dict):
        raise ConfigError(f"{path}: expected a mapping with an 'attributes' section")
    defaults = raw.get("defaults") or {}
    max_values = int(defaults.get("max_values", 8))
    attributes: dict[str, Phrasing] = {}
    by_type: dict[tuple[str, str], Phrasing] = {}
    for key, spec in raw["attributes"].items():
        overrides = (spec or {}).pop("by_type", None) or {}
        attributes[key] = base = _parse_phrasing(key, spec or {}, None, f"attributes.{key}", path, max_values)
        for etype, ospec in overrides.items():
            by_type[(key, etype)] = _parse_phrasing(key, ospec or {}, base, f"attributes.{key}.by_type.{etype}",
                                                    path, max_values)
    generic = raw.get("generic") or {}
    gen = {k: _strings(generic, k, "generic", path) for k in ("patient", "clinician", "followup", "answer")}
    if not all(gen.values()):
        raise ConfigError(f"{path}: generic: needs patient, clinician, followup and answer phrasings")
    notes = _safety_notes(raw.get("safety_notes"), path)
    for phr in [*attributes.values(), *by_type.values()]:
        if phr.safety is not None and phr.safety not in notes:
            raise ConfigError(f"{path}: attributes.{phr.key}.safety: no safety_notes.{phr.safety}")
    scenario, dialogue = raw.get("scenario") or {}, raw.get("dialogue") or {}
    _check_scenario(scenario, path)
    return Phrasebook(attributes, by_type, gen, notes, scenario, dialogue,
                      tuple((raw.get("balanced") or {}).get("entity_types") or ()),
                      etc=str(defaults.get("etc", "等")),
                      clause_max_values=int(defaults.get("clause_max_values", 4)),
                      clause_min_chars=int(defaults.get("clause_min_chars", 14)),
                      more_clauses=str(defaults.get("more_clauses", "")),
                      clause_answer=_strings(defaults, "clause_answer", "defaults", path, {"values"}))


def _safety_kind(value: object, where: str, path: Path) -> str | None:
    if value is True:
        return "drug"
    if value in (False, None, "none"):
        return None
    if isinstance(value, str):
        return value
    raise ConfigError(f"{path}: {where}: expected a safety_notes key or none, got {value!r}")


def _safety_notes(raw: object, path: Path) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: safety_notes: expected a mapping of kind -> list of notes")
    notes = {}
    for kind, items in raw.items():
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{path}: safety_notes.{kind}: expected a non-empty list")
        notes[str(kind)] = tuple(_check_pattern(t, f"safety_notes.{kind}[{i}]", path) for i, t in enumerate(items))
    return notes


def _check_scenario(spec: dict, path: Path) -> None:
    for key in ("patient", "clinician", "intro"):
        _strings(spec, key, "scenario", path, {"symptoms"})
    for key in ("department",):
        _strings(spec, key, "scenario", path, {"departments"})
    for key in ("no_department", "hedge"):
        _strings(spec, key, "scenario", path)
    for key in ("candidate", "one_candidate"):
        _check_pattern(spec.get(key), f"scenario.{key}", path, {"disease", "matched"})

