"""Finding a dataset's files: a directory, a file, or a NAME in a ``dataset_info.json`` registry.

A dataset directory holds ``train.jsonl`` / ``dev.jsonl`` (what ``qihuang data build`` writes)
or a LLaMA-Factory style ``dataset_info.json`` whose entries name files, their ``formatting``
(alpaca | sharegpt), ``columns`` and ShareGPT ``tags``. A NAME is looked up in
``dataset_dir`` (default ``$QIHUANG_HOME/datasets``): a sub-directory of that name, or an
entry of its ``dataset_info.json`` (dev split: ``NAME_dev`` / ``NAME_validation``).
Several datasets can be joined with commas.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qihuang.errors import ConfigError, InputError
from qihuang.paths import home
from qihuang.records import Conversation, read_records, remap_columns, to_conversation

INFO_FILE = "dataset_info.json"
_EXTS = (".jsonl", ".json")
_DEV_SUFFIXES = ("dev", "validation", "val", "eval")


@dataclass
class DataSource:
    """One data file and how to read it."""

    path: Path
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    name: str
    train: list[DataSource]
    dev: list[DataSource]


def default_dataset_dir() -> Path:
    return home() / "datasets"


def resolve_dataset(dataset: str, dataset_dir: str | Path | None = None) -> DatasetSpec:
    """Train and dev sources for ``dataset`` (DIR, file, NAME, or several joined by commas)."""
    specs = [_resolve_one(part.strip(), Path(dataset_dir) if dataset_dir else default_dataset_dir())
             for part in dataset.split(",") if part.strip()]
    if not specs:
        raise ConfigError("field 'dataset': empty dataset name")
    return DatasetSpec(dataset, [s for sp in specs for s in sp.train], [s for sp in specs for s in sp.dev])


def _resolve_one(name: str, dataset_dir: Path) -> DatasetSpec:
    path = Path(name).expanduser()
    if path.is_dir():
        return _from_dir(path)
    if path.is_file():
        return DatasetSpec(name, [DataSource(path)], [])
    if (dataset_dir / name).is_dir():
        return _from_dir(dataset_dir / name)
    info_path = dataset_dir / INFO_FILE
    if info_path.is_file():
        info = read_info(info_path)
        if name in info:
            dev = next((f"{name}_{s}" for s in _DEV_SUFFIXES if f"{name}_{s}" in info), None)
            return DatasetSpec(name, [data_source(info, name, dataset_dir, info_path)],
                               [data_source(info, dev, dataset_dir, info_path)] if dev else [])
    raise ConfigError(f"field 'dataset': {name!r} is not a directory, a file, or a dataset registered "
                      f"in {dataset_dir} (sub-directory or {INFO_FILE} entry)")


def _from_dir(directory: Path) -> DatasetSpec:
    def find(stem: str) -> Path | None:
        return next((directory / f"{stem}{ext}" for ext in _EXTS if (directory / f"{stem}{ext}").is_file()), None)

    train = find("train")
    if train is not None:
        dev = next((p for p in map(find, _DEV_SUFFIXES) if p is not None), None)
        return DatasetSpec(str(directory), [DataSource(train)], [DataSource(dev)] if dev else [])
    info_path = directory / INFO_FILE
    if not info_path.is_file():
        raise ConfigError(f"field 'dataset': {directory} has neither train.jsonl nor {INFO_FILE}")
    info = read_info(info_path)
    keys = sorted(info, key=lambda k: info[k].get("formatting", "alpaca") != "alpaca")  # alpaca entries first
    train_key = next((k for k in keys if k == "train" or k.endswith("_train")), None)
    if train_key is None:
        raise ConfigError(f"{info_path}: no entry named 'train' or '*_train'")
    stem = train_key.removesuffix("train")
    dev_key = next((f"{stem}{s}" for s in _DEV_SUFFIXES if f"{stem}{s}" in info), None)
    return DatasetSpec(str(directory), [data_source(info, train_key, directory, info_path)],
                       [data_source(info, dev_key, directory, info_path)] if dev_key else [])


def read_info(path: Path) -> dict:
    """A ``dataset_info.json`` as its mapping of entries (errors name the file and line)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg}", path=str(path), line=exc.lineno) from exc
    if not isinstance(info, dict):
        raise InputError("expected an object of dataset entries", path=str(path))
    return info


def data_source(info: dict, key: str, base: Path, info_path: Path) -> DataSource:
    """Entry ``key`` of a ``dataset_info.json`` (read from ``info_path``, files relative to ``base``), checked."""
    entry = info[key]
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        raise InputError(f"entry {key!r} needs a string 'file_name'", path=str(info_path), field=key)
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise InputError(f"entry {key!r}: formatting must be alpaca or sharegpt, got {formatting!r}",
                         path=str(info_path), field="formatting")
    path = base / entry["file_name"]
    if not path.is_file():
        raise InputError(f"entry {key!r}: file {path} not found", path=str(info_path), field="file_name")
    return DataSource(path, formatting, dict(entry.get("columns") or {}), dict(entry.get("tags") or {}))


# ---- reading ------------------------------------------------------------------------------------
def remap(record: dict, source: DataSource) -> dict:
    """``record`` as the record fields, through ``source``'s ``dataset_info.json`` columns and ShareGPT tags."""
    return remap_columns(record, source.columns, source.tags, source.formatting)


def iter_conversations(sources: list[DataSource]) -> Iterator[tuple[str, dict, Conversation]]:
    """``(where, raw_record, conversation)`` for every record of ``sources``, in order."""
    for source in sources:
        for line, record in read_records(source.path):
            yield f"{source.path}:{line}", record, to_conversation(remap(record, source), source.path, line)


def load_split(spec: DatasetSpec, max_samples: int | None = None, val_size: float = 0.0,
               seed: int = 42) -> tuple[list[Conversation], list[Conversation]]:
    """Train and dev conversations; without a dev split, ``val_size`` of train is held out."""
    train = [conv for _, _, conv in iter_conversations(spec.train)]
    dev = [conv for _, _, conv in iter_conversations(spec.dev)]
    if not train:
        raise ConfigError(f"field 'dataset': {spec.name} has no training examples")
    return hold_out(train, dev, max_samples, val_size, seed)


def hold_out(train: list, dev: list, max_samples: int | None, val_size: float, seed: int) -> tuple[list, list]:
    """Without a dev split, hold out ``val_size`` of train (seeded); then cap train at ``max_samples``."""
    if not dev and val_size > 0 and len(train) > 1:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_dev = max(1, int(len(train) * val_size))
        dev = [train[i] for i in order[:n_dev]]
        train = [train[i] for i in sorted(order[n_dev:])]
    if max_samples is not None:
        train = train[:max_samples]
    return train, dev
