"""The shapes of published benchmark files (``resources/eval_shapes.yaml``) and the one detector.

A shape says which keys identify a record of a benchmark (``requires``/``excludes``) and where its
parts are (question, options, answer, label, case turns, subject, ...). The readers of the
``mcq``, ``classify`` and ``benchqa`` tasks ask :func:`detect` which shape a file has (or take the
one named with ``--shape``) and read every record with it; a file no shape fits is refused with the
keys it has and the shapes supported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qihuang.errors import ConfigError, InputError
from qihuang.eval.base import Dataset, Example, Skipped
from qihuang.eval.dataio import DATA_SUFFIXES, Row, data_files, iter_rows
from qihuang.paths import resource

KINDS = ("mcq", "classify", "benchqa")


class RecordError(ValueError):
    """A record that does not fit its file's shape; the message names the field."""

DETECT_ROWS = 50  # records looked at to tell a file's shape


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionsSpec(_Strict):
    """Where the options are: one ``key`` (an object, a list or lettered text) or ``columns`` in letter order."""

    key: str | None = None
    columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one(self) -> OptionsSpec:
        if (self.key is None) == (not self.columns):
            raise ValueError("give either 'key' or 'columns'")
        return self


class Shape(_Strict):
    """One published record shape (see the comments of ``resources/eval_shapes.yaml``)."""

    name: str = ""
    kind: Literal[KINDS]
    summary: str = Field(min_length=1)
    requires: tuple[str, ...] = Field(min_length=1)
    excludes: tuple[str, ...] = ()
    detect: bool = True
    id: tuple[str, ...] = ()
    subject: tuple[str, ...] = ()
    subject_from_file: bool = False
    explanation: tuple[str, ...] = ()
    keep: dict[str, tuple[str, ...]] = {}
    drop: dict[str, tuple[str, ...]] = {}
    # mcq
    question: tuple[str, ...] = ()
    options: OptionsSpec | None = None
    answer: tuple[str, ...] = ()
    answer_form: Literal["auto", "letters", "index0", "index1", "column"] = "auto"
    # classify
    text: tuple[str, ...] = ()
    label: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    labels_key: str | None = None
    none_label: str | None = None
    prompt: str | None = None
    # benchqa
    context: tuple[str, ...] = ()
    turns: str | None = None
    turn_question: tuple[str, ...] = ()
    turn_answer: tuple[str, ...] = ()
    reference: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _complete(self) -> Shape:
        need = {"mcq": ("question", "options", "answer"), "classify": ("text", "label", "prompt"),
                "benchqa": ()}[self.kind]
        missing = [f for f in need if not getattr(self, f)]
        if self.kind == "classify" and not (self.labels or self.labels_key):
            missing.append("labels or labels_key")
        if self.kind == "benchqa" and not (self.turns or (self.question and self.reference)):
            missing.append("turns (a case) or question + reference")
        if self.turns and not (self.context and self.turn_question and self.turn_answer and self.prompt):
            missing.append("context, turn_question, turn_answer and prompt (with turns)")
        if self.answer_form == "column" and not (self.options and self.options.columns):
            missing.append("options.columns (answer_form: column)")
        if missing:
            raise ValueError(f"a {self.kind} shape needs {', '.join(missing)}")
        if self.prompt is not None:
            try:
                self.prompt.format(text="", labels="", context="", question="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"prompt: bad placeholder {exc}") from None
        return self

    def matches(self, row: dict) -> bool:
        """Whether ``row`` has every required key and none of the excluded ones."""
        return all(k in row for k in self.requires) and not any(k in row for k in self.excludes)

    def selects(self, row: dict) -> str | None:
        """None when ``row`` belongs to this shape's task, else why not (``keep``/``drop``)."""
        for key, values in self.keep.items():
            if str(row.get(key)) not in values:
                return f"{key} {row.get(key)!r}"
        for key, values in self.drop.items():
            if str(row.get(key)) in values:
                return f"{key} {row.get(key)!r}"
        return None

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.requires)}{'' if self.detect else '; only with --shape'})"


class ShapeRegistry(_Strict):
    shapes: dict[str, Shape]


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], raw: object, where: str, what: str) -> M:
    """``raw`` (parsed YAML) as ``model``; ConfigError naming the file and the fields otherwise."""
    from qihuang.flags import format_errors  # the one formatter of validation errors

    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, where, what)) from None


def read_resource(name: str) -> tuple[object, str]:
    """A shipped YAML resource, parsed, and its path (for messages)."""
    path = resource(name)
    return yaml.safe_load(path.read_text(encoding="utf-8")), str(path)


def parse_shapes(raw: object, where: str = "eval_shapes.yaml") -> dict[str, Shape]:
    """Validate the parsed YAML into shapes by name (errors name the file and field)."""
    reg = validated(ShapeRegistry, raw, where, "benchmark shapes")
    return {name: shape.model_copy(update={"name": name}) for name, shape in reg.shapes.items()}


@lru_cache(maxsize=1)
def all_shapes() -> dict[str, Shape]:
    """The shipped shapes, in registry order (the order detection tries them)."""
    return parse_shapes(*read_resource("eval_shapes.yaml"))


def shapes_of(kind: str) -> list[Shape]:
    return [s for s in all_shapes().values() if s.kind == kind]


def get_shape(name: str, kind: str) -> Shape:
    """The shape named ``name`` (``--shape``), which must be one of ``kind``'s."""
    shape = all_shapes().get(name)
    if shape is None or shape.kind != kind:
        raise ConfigError(f"unknown {kind} shape {name!r}; known: {', '.join(s.name for s in shapes_of(kind))}")
    return shape


def detect(rows: Iterable[dict], kind: str, path: Path | str) -> Shape:
    """The shape of a file from its first records: the detectable shape of ``kind`` that most of them fit
    (registry order breaks ties); InputError naming the keys found and the shapes supported otherwise."""
    candidates = [s for s in shapes_of(kind) if s.detect]
    votes: Counter[str] = Counter()
    keys: set[str] = set()
    for i, row in enumerate(rows):
        if i >= DETECT_ROWS:
            break
        keys.update(str(k) for k in row)
        hit = next((s for s in candidates if s.matches(row)), None)
        if hit is not None:
            votes[hit.name] += 1
    if not votes:
        supported = "; ".join(s.describe() for s in shapes_of(kind))
        raise InputError(f"no usable {kind} records: no known file shape fits them; they have the fields "
                         f"{sorted(keys) or 'none'}; shapes supported: {supported}", path=str(path))
    best = max(votes.values())
    return next(s for s in candidates if votes[s.name] == best)


def field_value(row: dict, keys: tuple[str, ...]) -> object:
    """The value of the first of ``keys`` present in ``row`` and not None/empty."""
    for key in keys:
        value = row.get(key)
        if value is not None and value != "" and value != []:
            return value
    return None


def text_value(row: dict, keys: tuple[str, ...]) -> str:
    value = field_value(row, keys)
    return "" if value is None else str(value).strip()


def subject_value(row: dict, keys: tuple[str, ...]) -> str | None:
    """The subject of a record: the non-empty values of ``keys`` joined with "/" (None when there are none)."""
    parts = [str(row[k]).strip() for k in keys if row.get(k) is not None and str(row[k]).strip()]
    return "/".join(parts) or None


def shaped_files(path: Path | str, kind: str, shape: str | None = None,
                 suffixes: tuple[str, ...] | None = None) -> Iterator[tuple[Path, Shape, list[Row]]]:
    """``(file, shape, records)`` for every data file at ``path`` (a file or a directory): the shape
    named by ``shape`` (None or "auto": detected per file)."""
    named = get_shape(shape, kind) if shape and shape != "auto" else None
    for file in data_files(Path(path), suffixes or DATA_SUFFIXES):
        rows = list(iter_rows(file))
        valid = [r.row for r in rows if r.row is not None]
        if named is not None or not valid:  # a file of malformed records only: each is reported
            chosen = named or shapes_of(kind)[-1]
        else:
            chosen = detect(valid, kind, file)
        yield file, chosen, rows


def read_shaped(path: Path | str, kind: str, shape: str | None,
                parse: Callable[[dict, Shape, Path, int, str], list[Example]],
                suffixes: tuple[str, ...] | None = None) -> tuple[Dataset, dict[str, int]]:
    """Every record of the files at ``path`` through ``parse(row, shape, file, line, key)``: records that do not
    fit (:class:`RecordError`) are skipped and reported; those a shape's ``keep``/``drop`` leaves to another
    task are counted by why."""
    examples, skipped, left = [], [], {}
    for file, file_shape, rows in shaped_files(path, kind, shape, suffixes):
        for line, row, error, key in rows:
            try:
                if error:
                    raise RecordError(error)
                other = file_shape.selects(row)
                if other is not None:
                    left[other] = left.get(other, 0) + 1
                    continue
                examples += parse(row, file_shape, file, line, key)
            except RecordError as exc:
                skipped.append(Skipped(str(file), line, str(exc)))
    return Dataset(examples, skipped), left
