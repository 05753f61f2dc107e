"""Hospital departments: the standard list, the KB's wording mapped onto it, a hospital's own list, and
who the patient is.

``resources/departments.yaml`` holds the data (validated here; errors name the file and the field):

- the standard departments a general hospital's triage desk uses, each with aliases and a ``parent``
  to fall back to when a hospital has no such department (变态反应科 -> 皮肤科 -> 全科医学科);
- ``kb_values``: every department wording of the KB (CMeKG: 心内科, 急诊室, GP, 骨科；肿瘤科 ...) mapped
  to standard departments (:meth:`DepartmentBook.map_value`);
- ``groups``: the patient groups read from a question (:func:`patient_groups`: a child, a newborn, a
  pregnant woman, a woman, a man, an elderly person) and the departments they call for.

A hospital's own list (:func:`read_hospital`) restricts the departments answers name to those it has,
through the ``parent`` chain. Ranking departments for a question lives in :mod:`qihuang.kb.department_rank`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from qihuang.flags import format_errors
from qihuang.errors import ConfigError, InputError
from qihuang.paths import resource

ROOT = "全科医学科"  # what "no more specific department is known" is called
FAMILIES = ("child", "obstetric", "female", "male")
GROUP_KEYS = ("child", "newborn", "pregnant", "female", "male", "elderly")  # the patient groups (``groups`` in departments.yaml)
# separators of combined KB values: "骨科；肿瘤科", "内科 — 神经内科", "儿科、皮肤科"
_PARTS = re.compile(r"\s*(?:[；;、，,/]|\s[—－-]+\s|—)\s*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Department(_Strict):
    """One standard hospital department."""

    name: str = Field(min_length=2)
    aliases: tuple[str, ...] = ()
    parent: str | None = None
    family: str | None = None

    @field_validator("family")
    @classmethod
    def _family(cls, value: str | None) -> str | None:
        if value is not None and value not in FAMILIES:
            raise ValueError(f"{value!r} is not one of {list(FAMILIES)}")
        return value


class Group(_Strict):
    """A patient group: the words and ages that say a question is about one, and its department."""

    words: tuple[str, ...] = ()
    max_age: int | None = Field(None, ge=0)
    min_age: int | None = Field(None, ge=0)
    max_age_days: int | None = Field(None, ge=0)
    department: str | None = None
    direct: tuple[str, ...] = ()


class Groups(_Strict):
    child: Group
    newborn: Group
    pregnant: Group
    female: Group
    male: Group
    elderly: Group

    @cached_property
    def word_pattern(self) -> re.Pattern | None:
        """Any word of any group (most questions name none: one search then answers for all groups)."""
        words = {w for key in GROUP_KEYS for w in getattr(self, key).words}
        return re.compile("|".join(map(re.escape, sorted(words, key=len, reverse=True)))) if words else None


class DepartmentBook(_Strict):
    """The parsed ``departments.yaml``."""

    departments: tuple[Department, ...]
    kb_values: dict[str, tuple[str, ...]] = {}
    broad_values: tuple[str, ...] = ()
    body_words: dict[str, tuple[str, ...]] = {}
    groups: Groups
    _by_name: dict[str, Department] = PrivateAttr(default_factory=dict)
    _aliases: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> DepartmentBook:
        names = [d.name for d in self.departments]
        if len(set(names)) != len(names):
            raise ValueError("departments: a name is listed twice")
        self._by_name = {d.name: d for d in self.departments}
        self._aliases = {a: d.name for d in self.departments for a in d.aliases}
        known = set(names)
        if ROOT not in known:
            raise ValueError(f"departments: {ROOT} (the root) is missing")
        spoken: dict[str, str] = {}
        for d in self.departments:
            if d.parent is not None and d.parent not in known:
                raise ValueError(f"departments: {d.name}: parent {d.parent!r} is not a listed department")
            for alias in d.aliases:
                if spoken.setdefault(alias, d.name) != d.name or alias in known:
                    raise ValueError(f"departments: {d.name}: alias {alias!r} names another department too")
            self._chain(d.name)  # no cycles
        for value, targets in self.kb_values.items():
            bad = [t for t in targets if t not in known]
            if bad:
                raise ValueError(f"kb_values: {value}: {bad[0]!r} is not a listed department")
        for word, targets in self.body_words.items():
            bad = [t for t in targets if t not in known]
            if len(word) != 2 or not targets or bad:
                raise ValueError(f"body_words: {word}: a two-character word and listed departments, got {list(targets)}")
        for value in self.broad_values:
            if not self._one(value):
                raise ValueError(f"broad_values: {value!r} maps to no department (list it in kb_values)")
        for key in ("child", "newborn", "pregnant", "elderly"):
            dept = getattr(self.groups, key).department
            if dept is not None and dept not in known:
                raise ValueError(f"groups: {key}: department {dept!r} is not a listed department")
        bad = [d for d in self.groups.child.direct if d not in known]
        if bad:
            raise ValueError(f"groups: child: direct: {bad[0]!r} is not a listed department")
        return self

    # -- lookups ------------------------------------------------------------------------------
    @cached_property
    def by_name(self) -> dict[str, Department]:
        # a plain attribute after the first read: pydantic serves private attributes through a slow __getattr__
        return self._by_name

    @cached_property
    def _families(self) -> dict[str, str]:
        return {d.name: d.family for d in self.departments}

    def _chain(self, name: str) -> list[str]:
        """``name`` and its parents up to the root."""
        by_name, out = self.by_name, [name]
        while by_name[out[-1]].parent is not None:
            out.append(by_name[out[-1]].parent)
            if len(out) > len(by_name):
                raise ValueError(f"departments: {name}: its parents form a cycle")
        return out

    def chain(self, name: str) -> list[str]:
        """``name`` and the departments it falls back to, nearest first, ending at the root."""
        return self._chain(name)

    def standard(self, name: str) -> str | None:
        """The standard department a name or alias stands for, or None."""
        name = name.strip()
        if name in self.by_name:
            return name
        return self._aliases.get(name)

    def family(self, name: str) -> str | None:
        return self._families.get(name)

    def map_value(self, value: str) -> tuple[str, ...]:
        """The standard departments a KB department value means, primary first (() when none: the value is
        not a department a patient is sent to, or a wording nobody listed). A combined value ("骨科；肿瘤科",
        "内科 — 神经内科") maps part by part; a broad part (内科, 外科: ``broad_values``) counts only when no
        other part maps."""
        value = value.strip()
        whole = self._one(value)
        if whole is not None:
            return whole
        found: list[str] = []
        broad: list[str] = []
        for part in _PARTS.split(value):
            into = broad if part in self.broad_values else found
            into += [d for d in self._one(part) or () if d not in into]
        return tuple(found or broad)

    def _one(self, value: str) -> tuple[str, ...] | None:
        if value in self.kb_values:
            return self.kb_values[value]
        std = self.standard(value)
        return (std,) if std else None


def parse_book(raw: object, path: str | Path = "departments.yaml") -> DepartmentBook:
    """Validate a parsed departments mapping; errors name the file and the field."""
    try:
        if isinstance(raw, dict):
            return DepartmentBook.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, str(path), "department data")) from None
    raise ConfigError(f"{path}: expected a mapping of departments, kb_values and groups")


@lru_cache(maxsize=1)
def load_book() -> DepartmentBook:
    """The shipped ``departments.yaml``, parsed once."""
    path = resource("departments.yaml")
    return parse_book(yaml.safe_load(path.read_text(encoding="utf-8")), path)


# ---- a hospital's own list ----------------------------------------------------------------------
@dataclass(frozen=True)
class Hospital:
    """The departments one hospital has: standard department -> the name that hospital uses."""

    names: dict[str, str]
    source: str = ""

    def place(self, department: str, book: DepartmentBook | None = None) -> tuple[str, str] | None:
        """(the standard department the hospital has for ``department``, its name there): the department
        itself, else the nearest parent it has; None when it has none of the chain."""
        book = book or load_book()
        for std in book.chain(department):
            if std in self.names:
                return std, self.names[std]
        return None


def read_hospital(path: str | Path, book: DepartmentBook | None = None) -> Hospital:
    """A hospital's department list: a text file, one department per line (``#`` starts a comment), each a
    standard name or alias (``departments.yaml``), or ``THEIR NAME = STANDARD[、STANDARD...]`` for a name of
    the hospital's own (``内科 = 全科医学科``, ``妇产科 = 妇科、产科``); or a YAML list of such lines.
    Errors name the file and line."""
    book = book or load_book()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the department list: {exc.strerror or exc}", path=str(path)) from None
    lines = _hospital_lines(text, path)
    names: dict[str, str] = {}
    for lineno, line in lines:
        own, sep, standard = (part.strip() for part in line.partition("="))
        targets = [t for t in re.split(r"[、,，;；]", standard) if t.strip()] if sep else [own]
        if not own or (sep and not targets):
            raise InputError(f"expected 'NAME' or 'NAME = STANDARD', got {line!r}", path=str(path), line=lineno)
        for target in targets:
            std = book.standard(target)
            if std is None:
                raise InputError(f"{target.strip()!r} is not a standard department or alias; write "
                                 f"'{own} = STANDARD' with one of: {'、'.join(d.name for d in book.departments)}",
                                 path=str(path), line=lineno)
            names.setdefault(std, own)
    if not names:
        raise InputError("no departments listed", path=str(path))
    return Hospital(names, str(path))


def _hospital_lines(text: str, path: Path) -> list[tuple[int, str]]:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=str(path),
                             line=mark.line + 1 if mark else None) from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InputError("expected a YAML list of department names", path=str(path))
        return [(i + 1, item.strip()) for i, item in enumerate(items) if item.strip()]
    out = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((i, line))
    return out


# ---- who the patient is -------------------------------------------------------------------------
_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_NUMBER = r"(\d{1,3}|[一二两三四五六七八九十]{1,3})"
_AGE_YEARS = re.compile(_NUMBER + r"\s*(?:周岁|岁)")
_AGE_MONTHS = re.compile(_NUMBER + r"\s*个?多?月(?:大|龄)")
_AGE_DAYS = re.compile(_NUMBER + r"\s*天(?:大|龄)")
_BABY_AGE = re.compile(r"(?:宝宝|宝贝|婴儿|孩子|小孩|娃娃|儿子|女儿)\D{0,3}" + _NUMBER + r"\s*(个多?月|天)")
_SEX_AGE = re.compile(_NUMBER + r"\s*岁\s*的?\s*(男|女)|(男|女)\s*[，,、]?\s*" + _NUMBER + r"\s*岁")
_WEEKS_PREGNANT = re.compile(r"(?:孕|怀孕)\s*" + _NUMBER + r"\s*(?:周|个月)")


def _number(text: str) -> int:
    if text.isdigit():
        return int(text)
    if text == "十":
        return 10
    if "十" in text:
        tens, _, ones = text.partition("十")
        return (_DIGITS.get(tens, 1) if tens else 1) * 10 + (_DIGITS.get(ones, 0) if ones else 0)
    return _DIGITS.get(text[0], 0)


@dataclass(frozen=True)
class Patient:
    """Who a question is about, as far as its words say: ``groups`` among child, newborn, pregnant,
    female, male, elderly; ``age`` in years when stated; ``why`` says what was read, per group."""

    groups: frozenset[str] = frozenset()
    age: float | None = None
    why: dict[str, str] = field(default_factory=dict)

    def __contains__(self, group: str) -> bool:
        return group in self.groups


def patient_groups(text: str, book: DepartmentBook | None = None) -> Patient:
    """The patient groups a question's words put its patient in (see ``groups`` in departments.yaml): an
    age in years (3岁, 两岁多), months or days of a baby, child/elderly/sex words, pregnancy words. An
    explicit age wins over words (一个 30 岁的儿子 is no child)."""
    g = (book or load_book()).groups
    why: dict[str, str] = {}
    age = _age(text)
    if age is not None:
        why["age"] = f"{age:g}岁" if age >= 1 else f"{round(age * 12)}个月" if age >= 1 / 12 else "新生"
    some = g.word_pattern is not None and g.word_pattern.search(text) is not None
    words = {key: next((w for w in getattr(g, key).words if w in text), None) if some else None for key in GROUP_KEYS}
    groups: set[str] = set()
    if age is not None:
        if g.newborn.max_age_days is not None and age * 365 <= g.newborn.max_age_days:
            groups |= {"newborn", "child"}
        elif g.child.max_age is not None and age <= g.child.max_age + 0.999:
            groups.add("child")
        elif g.elderly.min_age is not None and age >= g.elderly.min_age:
            groups.add("elderly")
    else:
        for key in ("child", "newborn", "elderly"):
            if words[key]:
                groups.add(key)
                why[key] = words[key]
        if "newborn" in groups:
            groups.add("child")
    pregnant = words["pregnant"] or (m.group(0) if (m := _WEEKS_PREGNANT.search(text)) else None)
    if pregnant and "child" not in groups:
        groups |= {"pregnant", "female"}
        why["pregnant"] = pregnant
    sex = _SEX_AGE.search(text)
    said = (sex.group(2) or sex.group(3)) if sex else None
    for key, char in (("female", "女"), ("male", "男")):
        if said == char or (not said and words[key]):
            groups.add(key)
            why.setdefault(key, sex.group(0) if said == char else words[key])
    if {"female", "male"} <= groups:  # contradicting words: say nothing about sex
        groups -= {"female", "male", "pregnant"}
    return Patient(frozenset(groups), age, why)


def _age(text: str) -> float | None:
    """The patient's age in years when the text states one."""
    if m := _BABY_AGE.search(text):
        n = _number(m.group(1))
        return n / 12 if "月" in m.group(2) else n / 365
    if m := _AGE_YEARS.search(text):
        return float(_number(m.group(1)))
    if m := _AGE_MONTHS.search(text):
        return _number(m.group(1)) / 12
    if m := _AGE_DAYS.search(text):
        return _number(m.group(1)) / 365
    return None
