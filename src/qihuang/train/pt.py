"""Continued pretraining on plain text: documents are tokenized, joined with EOS and packed
into ``cutoff_len`` blocks; every token is trained."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path

from qihuang.config import TrainConfig
from qihuang.data.collate import pack_sequences, pad_batch
from qihuang.data.formats import read_texts
from qihuang.errors import ConfigError
from qihuang.train.loop import StageData

TEXT_SUFFIXES = (".txt", ".md", ".jsonl", ".json")


def text_files(dataset: str) -> list[Path]:
    """The text files named by ``dataset``: files or directories (searched recursively), comma-joined."""
    files: list[Path] = []
    for part in (p.strip() for p in dataset.split(",") if p.strip()):
        path = Path(part).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()
                            and p.name != "dataset_info.json")
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"field 'dataset': {part!r} is not a text file or directory")
    if not files:
        raise ConfigError(f"field 'dataset': no {'/'.join(TEXT_SUFFIXES)} files in {dataset!r}")
    return files


def prepare_data(config: TrainConfig, tokenizer, template=None) -> StageData:
    """Pack the documents of the dataset's text files into blocks; ``val_size`` of blocks -> dev."""
    docs = (text for path in text_files(config.dataset) for _, text in read_texts(path))
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
