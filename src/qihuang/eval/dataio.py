"""Reading evaluation data (JSON lines, JSON arrays, CSV) with true line numbers; hashing.

JSON files are read by the one record reader (:mod:`qihuang.records`): a record's line is the line of
the file it starts on, also in a JSON array spread over lines; records of a one-line array share
line 1 and get ``name#number`` as their default id (:class:`Row`)."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from qihuang.errors import InputError
from qihuang.records import is_array_text, record_key, scan_records

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


class Row(NamedTuple):
    """One record of an evaluation file: its true line, the row (None when malformed), the error,
    and the id to use when the row has none (``name:line``, or ``name#number`` in a JSON array)."""

    line: int
    row: dict | None
    error: str | None
    key: str


def iter_rows(path: Path) -> Iterator[Row]:
    """Every record of a JSON lines / JSON array / CSV / TSV file (see :class:`Row`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        for line, row, error in _read_csv(path, "\t" if suffix == ".tsv" else ","):
            yield Row(line, row, error, f"{path.name}:{line}")
        return
    array = is_array_text(path.read_text(encoding="utf-8-sig"), path)
    for item in scan_records(path):
        yield Row(item.line, item.value, item.error, record_key(path, item, array))


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
