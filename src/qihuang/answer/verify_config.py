"""``resources/verify.yaml``: the data of answer verification and the policies, with a validating loader."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import yaml

from qihuang.errors import ConfigError
from qihuang.kb.normalize import normalize
from qihuang.paths import resource


@dataclass(frozen=True)
class VerifyConfig:
    """``resources/verify.yaml``, validated."""

    also_presents: dict[str, tuple[str, ...]]
    list_item: re.Pattern
    emergency_withheld: tuple[str, ...]
    emergency_withheld_types: tuple[str, ...]
    messages: dict[str, str]
    cue_after_connectors: frozenset[str] = frozenset()
    not_claims: frozenset[str] = frozenset()
    name_fillers: tuple[str, ...] = ()
    value_fillers: tuple[str, ...] = ()
    value_prefixes: tuple[str, ...] = ()
    name_prefixes: tuple[str, ...] = ()


_FIELDS = frozenset({"also_presents", "cue_after_connectors", "not_claims", "name_fillers", "name_prefixes",
                     "value_fillers", "value_prefixes", "list_markers", "emergency_withheld",
                     "emergency_withheld_types", "messages"})
_MESSAGES = ("ungrounded_notice", "abstain", "abstain_what_unknown", "abstain_what_entities", "all_dropped",
             "regenerate_instruction", "warning")


def parse_config(raw: dict, where: str = "verify.yaml", attributes: set[str] | None = None) -> VerifyConfig:
    """Validate the parsed YAML (errors name the file and field)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    if "negation" in raw:  # an older verify.yaml: verification reads the one negation lexicon now
        raise ConfigError(f"{where}: field 'negation' is no longer read: negation words live in lexicon.yaml "
                          "(negation), shared by linking, triage and verification; remove it")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; known: {', '.join(sorted(_FIELDS))}")
    if attributes is None:
        from qihuang.kb.schema import load_schema

        attributes = set(load_schema().attributes)

    def strings(value, fld: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
            raise ConfigError(f"{where}: field {fld!r}: expected a non-empty list of strings")
        return tuple(value)

    also = raw.get("also_presents") or {}
    if not isinstance(also, dict):
        raise ConfigError(f"{where}: field 'also_presents': expected a mapping")
    for key, values in also.items():
        for name in (key, *strings(values, f"also_presents.{key}")):
            if name not in attributes:
                raise ConfigError(f"{where}: field 'also_presents.{key}': unknown attribute {name!r}")
    markers = strings(raw.get("list_markers"), "list_markers")
    try:
        list_item = re.compile(r"^\s*(?:" + "|".join(markers) + r")")
    except re.error as exc:
        raise ConfigError(f"{where}: field 'list_markers': bad pattern: {exc}") from None
    withheld = strings(raw.get("emergency_withheld"), "emergency_withheld")
    for name in withheld:
        if name not in attributes:
            raise ConfigError(f"{where}: field 'emergency_withheld': unknown attribute {name!r}")
    connectors = raw.get("cue_after_connectors")
    if not isinstance(connectors, str) or not connectors:
        raise ConfigError(f"{where}: field 'cue_after_connectors': expected a non-empty string")
    messages = raw.get("messages") or {}
    for key in _MESSAGES:
        if not isinstance(messages.get(key), str) or not messages[key].strip():
            raise ConfigError(f"{where}: field 'messages.{key}': expected a non-empty string")
    return VerifyConfig({k: tuple(v) for k, v in also.items()}, list_item, withheld,
                        strings(raw.get("emergency_withheld_types"), "emergency_withheld_types"),
                        {k: "".join(str(messages[k]).split()) for k in _MESSAGES}, frozenset(connectors),
                        frozenset(normalize(w) for w in strings(raw.get("not_claims"), "not_claims")),
                        tuple(sorted(strings(raw.get("name_fillers"), "name_fillers"), key=len, reverse=True)),
                        tuple(sorted(strings(raw.get("value_fillers"), "value_fillers"), key=len, reverse=True)),
                        tuple(sorted(strings(raw.get("value_prefixes"), "value_prefixes"), key=len, reverse=True)),
                        tuple(strings(raw.get("name_prefixes"), "name_prefixes")))


@lru_cache(maxsize=1)
def load_config() -> VerifyConfig:
    """The shipped ``resources/verify.yaml``."""
    path = resource("verify.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, str(path))
