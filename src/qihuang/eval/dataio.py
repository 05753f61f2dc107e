"""Reading evaluation data (JSON lines, JSON arrays, CSV) with true line numbers; hashing.

JSON files are read by the one record reader (:mod:`qihuang.records`): a record's line is the line of
the file it starts on, also in a JSON array spread over lines; records of a one-line array share
line 1 and get ``name#number`` as their default id (:func:`default_id`)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qihuang.errors import InputError
from qihuang.records import Scanned, is_array_text, record_key, scan_records

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def data_files(path: Path, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[Path]:
    """The data files at ``path``: the file itself, or the sorted data files of a directory."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or directory", path=str(path))
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputError(f"no data files ({', '.join(suffixes)}) in directory", path=str(path))
    return files


def read_rows(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield ``(line, row, error)`` for each record; ``row`` is None when the record is malformed.

    JSON lines and JSON arrays give dicts; CSV/TSV rows give dicts keyed by the header.
    """
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        yield from _read_csv(path, "\t" if suffix == ".tsv" else ",")
    else:
        yield from _read_json(path)


def _read_json(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    for item in scan_records(path):
        yield item.line, item.value, item.error


def scan_json(path: Path) -> tuple[bool, Iterator[Scanned]]:
    """``(is_array, items)``: the records of a JSON / JSON lines file with numbers and true lines."""
    path = Path(path)
    return is_array_text(path.read_text(encoding="utf-8-sig"), path), scan_records(path)


def default_id(path: Path, item: Scanned, array: bool) -> str:
    """The id of a record without one: ``name:line`` (JSON lines) or ``name#number`` (JSON array)."""
    return record_key(path, item, array)


def _read_csv(path: Path, delimiter: str) -> Iterator[tuple[int, dict | None, str | None]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"cannot read CSV header: {exc}", path=str(path), line=1) from None
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, None, f"CSV error: {exc}"
                start = reader.line_num + 1
                continue
            if any(v.strip() for v in values):
                if len(values) != len(header):
                    yield start, None, f"expected {len(header)} columns, found {len(values)}"
                else:
                    yield start, dict(zip(header, values, strict=True)), None
            start = reader.line_num + 1


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a directory's data files (names and contents, sorted)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else data_files(path)
    for f in files:
        if path.is_dir():
            h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def first(row: dict, *keys: str, default: Any = None) -> Any:
    """The value of the first key present (and not None/empty string) in ``row``."""
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            return value
    return default
