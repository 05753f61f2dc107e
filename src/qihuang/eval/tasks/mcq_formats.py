"""Multiple-choice exam files in their published shapes, parsed into :class:`Example` objects.

Which keys hold the question, the options and the answer is data: the ``mcq`` shapes of
``resources/eval_shapes.yaml`` (CMExam, CMB-Exam, MMedBench, MedQA-MCMLE, MedMCQA, CNMLE-style
``opa``..``ope``, CMMLU, C-Eval, a generic JSON lines shape). Each file's shape is detected from its
records (or named: ``shape``); a record that does not fit is skipped and reported with the field.

Example ``fields``: ``options`` (letter -> text), ``answer`` (sorted letters, e.g. "B" or "AC"),
``explanation``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from qihuang.errors import InputError
from qihuang.eval.base import Dataset, Example, Skipped
from qihuang.eval.dataio import iter_rows
from qihuang.eval.shapes import Shape, field_value, shaped_files, subject_value, text_value

LETTERS = "ABCDEFGH"
_OPTION_LINE = re.compile(r"^\s*([A-Ha-h])\s*(?:[.\s、:：．)）]|$)\s*(.*)$")
_INLINE_SPLIT = re.compile(r"\s+(?=[B-H]\s*[.、:：．)）])")
_SUBJECT_SUFFIX = re.compile(r"_(val|dev|test|train)$")


class RowError(ValueError):
    """A malformed row; the message names the field."""


def _clean(value: object) -> str:
    return str(value).strip() if value is not None else ""


def _letters(value: object) -> str:
    """Full-width letters folded (Ａ -> A), upper case."""
    return unicodedata.normalize("NFKC", _clean(value)).upper()


def parse_options_text(text: str, key: str = "Options") -> dict[str, str]:
    """Options written as "A xxx\\nB yyy" (or on one line "A. xxx B. yyy") -> {letter: text}."""
    lines = [ln for ln in _clean(text).splitlines() if ln.strip()]
    lines = [_fold_leading_letter(ln) for ln in lines]
    if len(lines) == 1:
        lines = _INLINE_SPLIT.split(lines[0])
    options: dict[str, str] = {}
    for ln in lines:
        m = _OPTION_LINE.match(ln)
        if m is None:
            if not options:
                raise RowError(f"field {key!r}: line {ln!r} does not start with an option letter")
            last = next(reversed(options))
            options[last] = f"{options[last]} {ln.strip()}".strip()
            continue
        options[m.group(1).upper()] = m.group(2).strip()
    return options


def _fold_leading_letter(line: str) -> str:
    stripped = line.lstrip()
    return unicodedata.normalize("NFKC", stripped[:1]) + stripped[1:] if stripped else line


def _options_of(row: dict, shape: Shape) -> dict[str, str]:
    spec = shape.options
    if spec.columns:
        options = {LETTERS[i]: _clean(row.get(c)) for i, c in enumerate(spec.columns[:len(LETTERS)])
                   if _clean(row.get(c))}
        if not options:
            raise RowError(f"no options: columns {', '.join(spec.columns)} are empty")
        return options
    raw = row.get(spec.key)
    if raw is None or raw == "":
        raise RowError(f"field {spec.key!r}: missing or empty options")
    if isinstance(raw, str):
        return parse_options_text(raw, spec.key)
    if isinstance(raw, dict):
        options = {_letters(k): _clean(v) for k, v in sorted(raw.items(), key=lambda kv: _letters(kv[0]))}
        bad = [k for k in options if k not in LETTERS]
        if bad:
            raise RowError(f"field {spec.key!r}: keys {bad} are not option letters")
        return options
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            raise RowError(f"field {spec.key!r}: more than {len(LETTERS)} options")
        return {LETTERS[i]: _clean(v) for i, v in enumerate(raw)}
    raise RowError(f"field {spec.key!r}: expected text, a list or an object")


def _answer_key(row: dict, shape: Shape) -> str:
    return next((k for k in shape.answer if row.get(k) not in (None, "")), shape.answer[0])


def _answer_of(row: dict, options: dict[str, str], shape: Shape) -> str:
    key = _answer_key(row, shape)
    raw = field_value(row, shape.answer)
    if raw is None:
        raise RowError(f"field {key!r}: missing or empty answer")
    if isinstance(raw, bool):
        raise RowError(f"field {key!r}: {raw!r} is not an option")
    form = shape.answer_form
    if form in ("index0", "index1") or (form == "auto" and isinstance(raw, int)):
        return _by_index(raw, options, key, base=1 if form == "index1" else 0)
    text = _clean(raw)
    if form == "column":
        columns = [c.lower() for c in shape.options.columns]
        if text.lower() not in columns:
            raise RowError(f"field {key!r}: {text!r} names none of the option columns {', '.join(columns)}")
        letter = LETTERS[columns.index(text.lower())]
        if letter not in options:
            raise RowError(f"field {key!r}: column {text!r} is empty")
        return letter
    if form == "auto":
        for letter, opt in options.items():  # the answer given as the option's text
            if text == opt and len(text) > 1:
                return letter
    letters = re.sub(r"[\s,，、;；/.。和及与]+", "", _letters(text))
    if not letters or any(c not in options for c in letters) or len(set(letters)) != len(letters):
        raise RowError(f"field {key!r}: answer {text!r} is not among the options {''.join(options)}")
    return "".join(sorted(letters))


def _by_index(raw: object, options: dict[str, str], key: str, base: int) -> str:
    try:
        index = int(str(raw).strip()) - base
    except ValueError:
        raise RowError(f"field {key!r}: {raw!r} is not an option number") from None
    if not 0 <= index < len(options):
        first, last = base, len(options) - 1 + base
        raise RowError(f"field {key!r}: option number {raw!r} is outside {first}..{last}")
    return list(options)[index]


def subject_from_file(path: Path) -> str:
    """Subject from a file name: "clinical_knowledge_val.csv" -> "clinical_knowledge"."""
    return _SUBJECT_SUFFIX.sub("", path.stem)


def parse_row(row: dict, shape: Shape, *, file: Path, line: int, file_subject: str | None,
              subject_field: str | None = None, key: str | None = None) -> Example:
    """One exam row of ``shape`` -> Example (``key``: its id when the row has none, default ``name:line``);
    raises :class:`RowError` naming the bad field."""
    question = text_value(row, shape.question)
    if not question:
        raise RowError(f"field {shape.question[0]!r}: missing or empty question")
    options = _options_of(row, shape)
    if len(options) < 2:
        raise RowError("fewer than two options")
    if any(not v for v in options.values()):
        raise RowError("an option is empty")
    answer = _answer_of(row, options, shape)
    subject = subject_value(row, (subject_field,) if subject_field else shape.subject)
    if not subject and (shape.subject_from_file or file_subject):
        subject = file_subject or subject_from_file(file)
    return Example(
        id=text_value(row, shape.id) or key or f"{file.name}:{line}", question=question, subject=subject or None,
        source=str(file), line=line,
        fields={"options": options, "answer": answer, "explanation": text_value(row, shape.explanation)})


def read_answers(path: Path) -> dict[str, object]:
    """An answer file (CMB-test keeps its answers apart): records with ``id`` and ``answer`` -> {id: answer}."""
    answers: dict[str, object] = {}
    for item in iter_rows(Path(path)):
        if item.error:
            raise InputError(item.error, path=str(path), line=item.line)
        if "id" not in item.row or "answer" not in item.row:
            raise InputError("an answer record needs 'id' and 'answer'", path=str(path), line=item.line)
        answers[str(item.row["id"])] = item.row["answer"]
    return answers


def load_exam(path: Path, subject_field: str | None = None, shape: str | None = None,
              answers: Path | None = None) -> Dataset:
    """All exam rows of a file or a directory of files; malformed rows are skipped and reported.
    ``shape`` names the record shape (default: detected per file); ``answers`` is a file of
    ``{id, answer}`` records joined to the questions by id."""
    given = read_answers(answers) if answers else {}
    files = list(shaped_files(path, "mcq", shape))
    examples, skipped = [], []
    seen: set[str] = set()
    for file, file_shape, rows in files:
        file_subject = subject_from_file(file) if len(files) > 1 else None
        for line, row, error, key in rows:
            try:
                if error:
                    raise RowError(error)
                if given:
                    row = _with_answer(row, given, file_shape)
                ex = parse_row(row, file_shape, file=file, line=line, file_subject=file_subject,
                               subject_field=subject_field, key=key)
                if len(files) > 1 and ex.id != key:  # ids restart in every file of a directory (C-Eval)
                    ex.id = f"{file.stem}/{ex.id}"
            except RowError as exc:
                skipped.append(Skipped(str(file), line, str(exc)))
                continue
            if ex.id in seen:
                ex.id = key
            seen.add(ex.id)
            examples.append(ex)
    return Dataset(examples, skipped)


def _with_answer(row: dict, given: dict[str, object], shape: Shape) -> dict:
    rid = str(row.get("id", ""))
    if rid not in given:
        raise RowError(f"field 'id': {rid!r} is not in the answer file")
    return {**row, shape.answer[0]: given[rid]}
