"""Continued pretraining on plain text: documents are tokenized, joined with EOS and packed
into ``cutoff_len`` blocks; every token is trained. Datasets are found as LLaMA-Factory finds
them (files, directories, NAMEs in ``dataset_dir``'s ``dataset_info.json`` with ``columns.prompt``)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from qihuang.config import TrainConfig
from qihuang.data.collate import pack_sequences, pad_batch
from qihuang.data.formats import read_texts
from qihuang.data.registry import INFO_FILE, read_info
from qihuang.errors import ConfigError, InputError
from qihuang.train.loop import StageData

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json")
_BOOKKEEPING = {"dataset_info.json", "stats.json", "synth_cache.jsonl", "synth_dropped.jsonl"}


@dataclass
class TextSource:
    """A text file for continued pretraining and the record field holding its text (JSON files)."""

    path: Path
    column: str = "text"


def text_sources(dataset: str, dataset_dir: str | Path | None = None) -> list[TextSource]:
    """The text files named by ``dataset`` (comma-joined parts), each one of:

    * a file (``.txt`` one document per line, ``.md`` paragraphs, ``.jsonl``/``.json`` records);
    * a directory: its ``dataset_info.json`` entries when it has one, else its text files
      (recursively, leaving out qihuang's bookkeeping files such as ``stats.json``);
    * a NAME in ``dataset_dir`` (default ``$QIHUANG_HOME/datasets``): a sub-directory, or an entry of
      its ``dataset_info.json`` (``file_name``, and ``columns.prompt`` naming the text field)."""
    from qihuang.data.registry import default_dataset_dir

    base = Path(dataset_dir).expanduser() if dataset_dir else default_dataset_dir()
    sources: list[TextSource] = []
    for part in (p.strip() for p in dataset.split(",") if p.strip()):
        path = Path(part).expanduser()
        if not path.exists() and (base / part).is_dir():
            path = base / part
        if path.is_dir():
            sources += _dir_sources(path)
        elif path.is_file():
            sources.append(TextSource(path))
        else:
            sources += _named_sources(part, base)
    if not sources:
        raise ConfigError(f"field 'dataset': no {'/'.join(TEXT_SUFFIXES)} files in {dataset!r}")
    return sources


def _dir_sources(directory: Path) -> list[TextSource]:
    if (directory / INFO_FILE).is_file():
        info = read_info(directory / INFO_FILE)
        return [_entry_source(info, key, directory) for key in info]
    return [TextSource(p) for p in sorted(directory.rglob("*"))
            if p.suffix in TEXT_SUFFIXES and p.is_file() and p.name not in _BOOKKEEPING]


def _named_sources(name: str, base: Path) -> list[TextSource]:
    info_path = base / INFO_FILE
    info = read_info(info_path) if info_path.is_file() else {}
    if name not in info:
        raise ConfigError(f"field 'dataset': {name!r} is not a text file, a directory, or a dataset registered "
                          f"in {base} (sub-directory or {INFO_FILE} entry); set dataset_dir to look elsewhere")
    return [_entry_source(info, name, base)]


def _entry_source(info: dict, key: str, base: Path) -> TextSource:
    entry = info[key]
    if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str):
        raise InputError(f"entry {key!r} needs a string 'file_name'", path=str(base / INFO_FILE), field=key)
    path = base / entry["file_name"]
    if not path.is_file():
        raise InputError(f"entry {key!r}: file {path} not found", path=str(base / INFO_FILE), field="file_name")
    column = (entry.get("columns") or {}).get("prompt", "text")
    return TextSource(path, column)


def text_files(dataset: str, dataset_dir: str | Path | None = None) -> list[Path]:
    """The paths of :func:`text_sources`."""
    return [s.path for s in text_sources(dataset, dataset_dir)]


def prepare_data(config: TrainConfig, tokenizer, template=None) -> StageData:
    """Pack the documents of the dataset's text files into blocks; ``val_size`` of blocks -> dev."""
    sources = text_sources(config.dataset, config.dataset_dir)
    docs = (text for src in sources for _, text in read_texts(src.path, src.column))
    tokens = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in docs)
    blocks = pack_sequences(tokens, config.cutoff_len, tokenizer.eos_token_id)
    if not blocks:
        raise ConfigError(f"field 'dataset': {config.dataset!r} holds no text")
    dev: list[dict] = []
    if config.val_size > 0 and len(blocks) > 1:
        random.Random(config.seed).shuffle(blocks)
        n_dev = max(1, int(len(blocks) * config.val_size))
        dev, blocks = blocks[:n_dev], blocks[n_dev:]
    if config.max_samples is not None:
        blocks = blocks[: config.max_samples]
    return StageData(train=blocks, dev=dev, collate=partial(pad_batch, pad_id=tokenizer.pad_token_id),
                     info={"num_train_examples": len(blocks), "num_dev_examples": len(dev), "packed": True})
