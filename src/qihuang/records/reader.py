"""The one reader of record files: JSON lines, or a JSON array (spread over lines or on one line).

Every record comes with its record number (counted from 1: the key for numbering output rows and
resuming) and its *true* line: the physical line of the file it starts on. Records of a JSON array
written on one line (HuaTuo's literature data) share line 1 and are told apart by their number.
A file is read as a JSON array when its text starts with ``[`` (unless it is a ``.jsonl`` file whose
first line is a JSON value by itself); otherwise line by line, whatever its suffix (Med-ChatGLM's
``train.txt`` holds JSON lines).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from qihuang.errors import InputError

_WS = " \t\r\n"


class Numbered(NamedTuple):
    """One record of a data file: ``number`` counts records from 1, ``line`` is the physical line it starts on."""

    number: int
    line: int
    record: Any


class Scanned(NamedTuple):
    """One item of a tolerant scan: ``value`` is None and ``error`` says why when the item is malformed."""

    number: int
    line: int
    value: Any
    error: str | None


def _text(path: Path) -> str:
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    return path.read_text(encoding="utf-8-sig")


def is_array_text(text: str, path: Path) -> bool:
    """Whether ``text`` (of ``path``) is read as one JSON array rather than as JSON lines."""
    body = text.lstrip()
    if not body.startswith("["):
        return False
    if path.suffix.lower() != ".jsonl":
        return True
    first = body.splitlines()[0]
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return True  # a '.jsonl' holding an array spread over lines
    return False


def scan_items(path: str | Path) -> Iterator[Scanned]:
    """Every JSON value of ``path`` with its number and true line. A bad JSON line is yielded as an
    error and reading goes on; an array cannot be read past a syntax error (raises InputError)."""
    path = Path(path)
    text = _text(path)
    if is_array_text(text, path):
        for number, (line, value) in enumerate(_array_items(text, path), start=1):
            yield Scanned(number, line, value, None)
        return
    number = 0
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        number += 1
        try:
            yield Scanned(number, line, json.loads(raw), None)
        except json.JSONDecodeError as exc:
            yield Scanned(number, line, None, f"invalid JSON ({exc.msg}, column {exc.colno})")


def scan_records(path: str | Path) -> Iterator[Scanned]:
    """:func:`scan_items` where an item that is not a JSON object is an error too."""
    for item in scan_items(path):
        if item.error is None and not isinstance(item.value, dict):
            yield item._replace(value=None, error=f"expected a JSON object, got {type(item.value).__name__}")
        else:
            yield item


def read_items(path: str | Path) -> Iterator[Numbered]:
    """Every JSON value of ``path`` (strict: the first malformed item raises InputError naming file:line)."""
    for item in scan_items(path):
        if item.error is not None:
            raise InputError(item.error, path=str(path), line=item.line)
        yield Numbered(item.number, item.line, item.value)


def read_numbered(path: str | Path) -> Iterator[Numbered]:
    """Every record (JSON object) of ``path`` with its number and true line; strict like :func:`read_items`."""
    for item in scan_records(path):
        if item.error is not None:
            raise InputError(item.error, path=str(path), line=item.line)
        yield Numbered(item.number, item.line, item.value)


def read_records(path: str | Path) -> Iterator[tuple[int, dict]]:
    """``(true line, record)`` of every record of ``path`` (see :func:`read_numbered`)."""
    for _number, line, record in read_numbered(path):
        yield line, record


def record_key(path: str | Path, item: Numbered | Scanned, array: bool) -> str:
    """A default id for a record without one: ``name:line`` in JSON lines, ``name#number`` in an array."""
    name = Path(path).name
    return f"{name}#{item.number}" if array else f"{name}:{item.line}"


def _array_items(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = _skip(text, text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg}, column {exc.colno})", path=str(path), line=exc.lineno) from None
        yield line, value
        pos = _skip(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip(text, pos + 1)
            if pos < len(text) and text[pos] == "]":  # a trailing comma
                return
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise InputError("expected ',' or ']' in JSON array", path=str(path), line=text.count("\n", 0, pos) + 1)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos
