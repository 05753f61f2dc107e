"""Writing a dataset directory atomically: split files (alpaca JSON lines, optionally ShareGPT),
``dataset_info.json`` (LLaMA-Factory registry convention) and ``stats.json``.

Every file is written to a temporary name in the same directory and moved into place with
``os.replace`` only when the whole build succeeded; ``stats.json`` goes last.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from qihuang.datagen.splits import SPLITS
from qihuang.fileio import atomic_write_json
from qihuang.records import ALPACA_COLUMNS, FIELDS, PROVENANCE_FIELDS, SHAREGPT_COLUMNS, SHAREGPT_TAGS

# records are plain trees: skipping the circular-reference check halves the encoding time
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
_ENCODE = encode_json
_STR = json.encoder.encode_basestring  # a quoted JSON string, non-ASCII kept (C implementation)
_N_FIELDS = len(FIELDS)


def encode_record(record: dict, knowledge_json: str | None = None) -> str:
    """One JSON line. With ``knowledge_json`` (the record's knowledge, already encoded: the builder
    shares it between the phrasings of one fact list) a record with exactly the standard fields is
    written without encoding its knowledge again."""
    if knowledge_json is None or len(record) != _N_FIELDS or "pattern" not in record:
        return _ENCODE(record)
    r = record
    history = _ENCODE(r["history"]) if r["history"] else "[]"
    pattern = r["pattern"]
    pattern = "null" if pattern is None else f"{pattern:d}"
    return (f'{{"instruction":{_STR(r["instruction"])},"input":{_STR(r["input"])},"output":{_STR(r["output"])},'
            f'"history":{history},"knowledge":{knowledge_json},"entity":{_STR(r["entity"])},'
            f'"attribute":{_STR(r["attribute"])},"kind":{_STR(r["kind"])},"pattern":{pattern},'
            f'"id":{_STR(r["id"])}}}')


def to_sharegpt(record: dict) -> dict:
    """The same example in ShareGPT form (``conversations`` with from human/gpt)."""
    user, bot = SHAREGPT_TAGS["user_tag"], SHAREGPT_TAGS["assistant_tag"]
    conv = []
    for q, a in record.get("history") or ():
        conv += [{"from": user, "value": q}, {"from": bot, "value": a}]
    query = record["instruction"] + (("\n" + record["input"]) if record.get("input") else "")
    conv += [{"from": user, "value": query}, {"from": bot, "value": record["output"]}]
    out = {"conversations": conv}
    if record.get("system"):
        out["system"] = record["system"]
    for key in ("knowledge", *PROVENANCE_FIELDS):
        if key in record:
            out[key] = record[key]
    return out


def dataset_info(prefix: str = "qihuang", sharegpt: bool = False, splits=SPLITS) -> dict:
    """LLaMA-Factory ``dataset_info.json`` entries for the split files."""
    info: dict[str, dict] = {}
    for split in splits:
        info[f"{prefix}_{split}"] = {"file_name": f"{split}.jsonl", "formatting": "alpaca",
                                     "columns": dict(ALPACA_COLUMNS)}
    if sharegpt:
        for split in splits:
            info[f"{prefix}_{split}_sharegpt"] = {
                "file_name": f"{split}_sharegpt.jsonl", "formatting": "sharegpt",
                "columns": dict(SHAREGPT_COLUMNS), "tags": dict(SHAREGPT_TAGS)}
    return info


class DatasetWriter:
    """Streams records into temporary split files; ``commit`` moves everything into place."""

    def __init__(self, out_dir: str | Path, *, sharegpt: bool = False, splits=SPLITS):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.sharegpt = sharegpt
        self.splits = tuple(splits)
        self.counts = dict.fromkeys(self.splits, 0)
        self._files: dict[str, tuple[Path, Path, object]] = {}
        names = [f"{s}.jsonl" for s in self.splits] + ([f"{s}_sharegpt.jsonl" for s in self.splits] if sharegpt else [])
        for name in names:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out_dir)
            self._files[name] = (Path(tmp), self.out_dir / name, os.fdopen(fd, "w", encoding="utf-8",
                                                                          buffering=1 << 20))

    def write(self, split: str, record: dict, knowledge_json: str | None = None) -> None:
        self._files[f"{split}.jsonl"][2].write(encode_record(record, knowledge_json) + "\n")
        if self.sharegpt:
            self._files[f"{split}_sharegpt.jsonl"][2].write(_ENCODE(to_sharegpt(record)) + "\n")
        self.counts[split] += 1

    def commit(self, info: dict, stats: dict) -> None:
        """Close the split files, move them into place, then write dataset_info.json and stats.json."""
        for _tmp, _final, fh in self._files.values():
            fh.close()
        for tmp, final, _fh in self._files.values():
            os.replace(tmp, final)
        if not self.sharegpt:  # do not leave ShareGPT files of an earlier build next to new alpaca files
            for split in self.splits:
                (self.out_dir / f"{split}_sharegpt.jsonl").unlink(missing_ok=True)
        self._files = {}
        atomic_write_json(self.out_dir / "dataset_info.json", info)
        atomic_write_json(self.out_dir / "stats.json", stats)

    def abort(self) -> None:
        """Drop the temporary files (the output directory keeps what it had before)."""
        for tmp, _final, fh in self._files.values():
            fh.close()
            tmp.unlink(missing_ok=True)
        self._files = {}

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._files:
            self.abort()
