"""Multiple-choice exam files in their common shapes, parsed into :class:`Example` objects.

Recognised row shapes (detected per row from its keys):

* CMExam CSV: ``Question``, ``Options`` ("A xxx\\nB yyy..."), ``Answer`` (one or more letters),
  ``Explanation``.
* CMMLU / C-Eval CSV: ``Question``/``question``, option columns ``A``..``D`` (up to ``H``),
  ``Answer``/``answer``; the subject is the file name (``_val``/``_dev``/``_test`` stripped).
* MedQA-MCMLE JSON lines: ``question``, ``options`` {letter: text}, ``answer_idx`` (letter).
* Generic JSON lines: ``question``, ``options`` (list or {letter: text}), ``answer`` (letter(s),
  0-based index, or the text of an option); optional ``subject``, ``explanation``, ``id``.

Example ``fields``: ``options`` (letter -> text), ``answer`` (sorted letters, e.g. "B" or
"AC"), ``explanation``.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from qihuang.eval.base import Dataset, Example, Skipped
from qihuang.eval.dataio import data_files, first, iter_rows

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


def parse_options_text(text: str) -> dict[str, str]:
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
                raise RowError(f"field 'Options': line {ln!r} does not start with an option letter")
            last = next(reversed(options))
            options[last] = f"{options[last]} {ln.strip()}".strip()
            continue
        options[m.group(1).upper()] = m.group(2).strip()
    return options


def _fold_leading_letter(line: str) -> str:
    stripped = line.lstrip()
    return unicodedata.normalize("NFKC", stripped[:1]) + stripped[1:] if stripped else line


def _options_of(row: dict) -> dict[str, str]:
    raw = first(row, "options", "Options")
    if raw is None:
        options = {k: _clean(row[k]) for k in LETTERS if _clean(row.get(k))}
        if not options:
            raise RowError("no options: expected 'Options'/'options' or columns A, B, C, D")
        return options
    if isinstance(raw, str):
        return parse_options_text(raw)
    if isinstance(raw, dict):
        options = {_letters(k): _clean(v) for k, v in sorted(raw.items(), key=lambda kv: _letters(kv[0]))}
        bad = [k for k in options if k not in LETTERS]
        if bad:
            raise RowError(f"field 'options': keys {bad} are not option letters")
        return options
    if isinstance(raw, list):
        if len(raw) > len(LETTERS):
            raise RowError(f"field 'options': more than {len(LETTERS)} options")
        return {LETTERS[i]: _clean(v) for i, v in enumerate(raw)}
    raise RowError("field 'options': expected text, a list or an object")


def _answer_of(row: dict, options: dict[str, str]) -> str:
    raw = first(row, "answer_idx", "Answer", "answer", "label")
    if raw is None:
        raise RowError("field 'answer': missing or empty")
    if isinstance(raw, bool):
        raise RowError(f"field 'answer': {raw!r} is not an option")
    if isinstance(raw, int):
        if not 0 <= raw < len(options):
            raise RowError(f"field 'answer': index {raw} out of range")
        return list(options)[raw]
    text = _clean(raw)
    for letter, opt in options.items():  # the answer given as the option's text
        if text == opt and len(text) > 1:
            return letter
    letters = re.sub(r"[\s,，、;；/.。和及与]+", "", _letters(text))
    if not letters or any(c not in options for c in letters) or len(set(letters)) != len(letters):
        raise RowError(f"field 'answer': {text!r} is not among the options {''.join(options)}")
    return "".join(sorted(letters))


def subject_from_file(path: Path) -> str:
    """Subject from a file name: "clinical_knowledge_val.csv" -> "clinical_knowledge"."""
    return _SUBJECT_SUFFIX.sub("", path.stem)


def parse_row(row: dict, *, file: Path, line: int, file_subject: str | None,
              subject_field: str | None = None, key: str | None = None) -> Example:
    """One exam row -> Example (``key``: its id when the row has none, default ``name:line``);
    raises :class:`RowError` naming the bad field."""
    question = _clean(first(row, "question", "Question"))
    if not question:
        raise RowError("field 'question': missing or empty")
    options = _options_of(row)
    if len(options) < 2:
        raise RowError("fewer than two options")
    if any(not v for v in options.values()):
        raise RowError("an option is empty")
    answer = _answer_of(row, options)
    lettered_columns = "A" in row and "B" in row
    subject = _clean(row.get(subject_field)) if subject_field else _clean(first(row, "subject", "Subject"))
    if not subject and (lettered_columns or file_subject):
        subject = file_subject or subject_from_file(file)
    return Example(
        id=_clean(first(row, "id", "ID")) or key or f"{file.name}:{line}", question=question, subject=subject or None,
        source=str(file), line=line,
        fields={"options": options, "answer": answer, "explanation": _clean(first(row, "explanation", "Explanation"))},
    )


def load_exam(path: Path, subject_field: str | None = None) -> Dataset:
    """All exam rows of a file or a directory of files; malformed rows are skipped and reported."""
    path = Path(path)
    files = data_files(path)
    examples, skipped = [], []
    seen: set[str] = set()
    for file in files:
        file_subject = subject_from_file(file) if len(files) > 1 else None
        for line, row, error, key in iter_rows(file):
            try:
                if error:
                    raise RowError(error)
                ex = parse_row(row, file=file, line=line, file_subject=file_subject, subject_field=subject_field,
                               key=key)
            except RowError as exc:
                skipped.append(Skipped(str(file), line, str(exc)))
                continue
            if ex.id in seen:
                ex.id = key
            seen.add(ex.id)
            examples.append(ex)
    return Dataset(examples, skipped)
