"""``qihuang data validate``: check alpaca or ShareGPT data (JSON lines, a JSON array, or a ``.json``
that is really JSON lines) and report every bad record by line and reason.

The record shapes and the reader are those of :mod:`qihuang.records` (the training side reads data
with them, so what passes here trains): this module only adds the reporting, scanning JSON lines one
by one so that one broken line does not hide the others. A dataset directory's ``dataset_info.json`` is
applied as training applies it (``columns``, ShareGPT ``tags``, ``ranking`` entries checked as
preference pairs). ``mode="infer"`` checks what ``qihuang infer`` accepts (no reference answer
needed).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from qihuang.data.registry import DataSource, remap
from qihuang.errors import InputError
from qihuang.records import is_array_text, provenance_problems, scan_records, to_conversation

DATA_SUFFIXES = (".jsonl", ".json")
MODES = ("train", "infer")
TEXT_HINT = ("{suffix} holds plain text, not JSON lines: `qihuang train --stage pt` reads it as one document per line; "
             "`data validate` checks instruction data (.json/.jsonl: alpaca instruction/input/output or "
             "ShareGPT conversations)")


@dataclass
class Target:
    """One file to check and how training reads it (a ``dataset_info.json`` entry, if any)."""

    path: Path
    source: DataSource | None = None
    ranking: bool = False


@dataclass
class Problem:
    line: int | None
    reason: str
    record: int | None = None  # the record number, given where lines do not tell records apart (JSON arrays)

    def format(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line is not None else path
        if self.record is not None:
            where += f" (record {self.record})"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"line": self.line, "record": self.record, "reason": self.reason}


@dataclass
class FileReport:
    """What was found in one file."""

    path: str
    records: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    shapes: Counter = field(default_factory=Counter)  # alpaca, sharegpt, flattened, history, knowledge

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "records": self.records, "shapes": dict(self.shapes),
                "errors": [p.to_dict() for p in self.errors],
                "warnings": [p.to_dict() for p in self.warnings]}


def validate_file(path: str | Path, mode: str = "train", target: Target | None = None) -> FileReport:
    """Check every record of one data file (``mode``: ``train`` or ``infer``)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    path = Path(path)
    target = target or Target(path)
    report = FileReport(str(path))
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() not in DATA_SUFFIXES and not _looks_like_json_lines(text):
        report.errors.append(Problem(None, TEXT_HINT.format(suffix=path.suffix or "a file without suffix")))
        return report
    array = is_array_text(text, path)
    try:  # a JSON array cannot be read past a syntax error: report it and stop
        for item in scan_records(path):
            if item.error is not None:
                report.records += not item.error.startswith("invalid JSON")  # a record, of the wrong type
                report.errors.append(Problem(item.line, item.error, item.number if array else None))
            else:
                _check_record(report, item.value, item.line, item.number if array else None, mode, target)
    except InputError as exc:
        report.errors.append(Problem(exc.line, _reason(exc)))
    if report.records == 0 and not report.errors:
        report.errors.append(Problem(None, "no records"))
    return report


def _looks_like_json_lines(text: str) -> bool:
    """Whether a file of another suffix holds JSON lines (Med-ChatGLM's ``data/train.txt``)."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _normalise(record, path: str, line: int, mode: str, target: Target) -> dict:
    """The conversation training (or inference) reads from ``record``; raises InputError."""
    if target.ranking:
        from qihuang.data.pairwise import to_pair

        pair = to_pair(remap(record, target.source) if target.source and isinstance(record, dict) else record,
                       path, line)
        return {"messages": pair["messages"] + [{"role": "assistant", "content": pair["chosen"]}],
                "knowledge": pair["knowledge"]}
    if target.source is not None and isinstance(record, dict):
        record = remap(record, target.source)
    if mode == "infer":
        from qihuang.records import question_of

        item = question_of(record, path, line) if isinstance(record, dict) else to_conversation(record, path, line)
        turns = [m for q, a in item["history"] for m in ({"role": "user", "content": q},
                                                         {"role": "assistant", "content": a})]
        return {"messages": turns + [{"role": "user", "content": item["question"]}], "knowledge": []}
    return to_conversation(record, path, line)


def _check_record(report: FileReport, record, line: int, number: int | None = None, mode: str = "train",
                  target: Target | None = None) -> None:
    report.records += 1
    try:
        conv = _normalise(record, report.path, line, mode, target or Target(Path(report.path)))
    except InputError as exc:
        report.errors.append(Problem(line, _reason(exc), number))
        return
    empty = [i for i, m in enumerate(conv["messages"]) if m["role"] == "user" and not m["content"].strip()]
    if empty:
        report.errors.append(Problem(line, f"empty question in turn {empty[0]}", number))
        return
    sharegpt = "conversations" in record or "messages" in record or (
        target is not None and target.source is not None and target.source.formatting == "sharegpt")
    report.shapes["sharegpt" if sharegpt else "alpaca"] += 1
    if target is not None and target.ranking:
        report.shapes["ranking"] += 1
    if not sharegpt and "<user>" in (record.get("instruction") or ""):
        report.shapes["flattened_dialogue"] += 1
    if len(conv["messages"]) > 2:
        report.shapes["multi_turn"] += 1
    if conv["knowledge"]:
        report.shapes["with_knowledge"] += 1
    _warn(report, record, line, number)


def _warn(report: FileReport, record: dict, line: int, number: int | None = None) -> None:
    for problem in provenance_problems(record):
        report.warnings.append(Problem(line, problem, number))


def _reason(exc: InputError) -> str:
    """The message of an InputError without its ``path:line:`` prefix (the report adds it)."""
    text = str(exc)
    prefix = f"{exc.path}:{exc.line}: " if exc.line is not None else f"{exc.path}: "
    return text[len(prefix):] if exc.path and text.startswith(prefix) else text


def data_files(path: str | Path) -> list[Path]:
    """The files to check: ``path`` itself, or the data files of a dataset directory (those listed in
    its ``dataset_info.json``, else every .json/.jsonl except the builder's own bookkeeping)."""
    return [t.path for t in targets(path)]


def targets(path: str | Path) -> list[Target]:
    """:func:`data_files` with each ``dataset_info.json`` entry's columns, tags and ranking flag."""
    path = Path(path)
    if path.is_file():
        return [Target(path)]
    if not path.is_dir():
        raise InputError("no such file or directory", path=str(path))
    info = path / "dataset_info.json"
    if info.is_file():
        return _info_targets(path, info)
    skip = {"dataset_info.json", "stats.json", "synth_cache.jsonl", "synth_dropped.jsonl"}
    files = sorted(p for p in path.iterdir() if p.suffix in DATA_SUFFIXES and p.name not in skip)
    if not files:
        raise InputError("no .json or .jsonl data files", path=str(path))
    return [Target(p) for p in files]


def _info_targets(path: Path, info: Path) -> list[Target]:
    from qihuang.data.registry import data_source, read_info

    entries = read_info(info)
    bad = [k for k, e in entries.items() if not isinstance(e, dict) or not isinstance(e.get("file_name"), str)]
    if bad:
        raise InputError(f"not a dataset_info.json mapping of entries with file_name (entry {bad[0]!r})",
                         path=str(info))
    missing = [e["file_name"] for e in entries.values() if not (path / e["file_name"]).is_file()]
    if missing:
        raise InputError(f"files listed but missing: {', '.join(missing)}", path=str(info))
    return [Target(path / e["file_name"], data_source(entries, key, path, info), bool(e.get("ranking")))
            for key, e in entries.items()]


def validate_path(path: str | Path, mode: str = "train") -> list[FileReport]:
    """Reports for a file or for every data file of a dataset directory."""
    return [validate_file(t.path, mode, t) for t in targets(path)]


def run_validate_cli(args) -> int:
    """``qihuang data validate PATH``: exit 0 when every record is good, 1 otherwise."""
    reports = validate_path(args.path, getattr(args, "mode", "train"))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], ensure_ascii=False, indent=2))
        return 0 if all(r.ok for r in reports) else 1
    for r in reports:
        for p in r.errors[: args.max_errors]:
            print(p.format(r.path))
        if len(r.errors) > args.max_errors:
            print(f"{r.path}: … and {len(r.errors) - args.max_errors} more errors")
        for p in r.warnings[: args.max_errors]:
            print("warning: " + p.format(r.path))
        if len(r.warnings) > args.max_errors:
            print(f"{r.path}: … and {len(r.warnings) - args.max_errors} more warnings")
        shapes = ", ".join(f"{k} {v}" for k, v in r.shapes.items())
        status = "ok" if r.ok else f"{len(r.errors)} bad records"
        print(f"{r.path}: {r.records} records, {status}" + (f" ({shapes})" if shapes else ""))
    return 0 if all(r.ok for r in reports) else 1
