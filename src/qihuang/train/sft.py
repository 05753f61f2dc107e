"""Supervised fine-tuning: conversations -> (input_ids, labels) with loss on answers only.

The stage is just data preparation; model loading, the objective (next-token loss on the
labelled positions) and the loop are the shared ones in :mod:`qihuang.train.run`.
"""

from __future__ import annotations

from functools import partial

from qihuang.config import TrainConfig
from qihuang.data.collate import pad_batch
from qihuang.records import IGNORE_INDEX
from qihuang.data.formats import Conversation
from qihuang.data.prompts import Template
from qihuang.data.registry import load_split, resolve_dataset
from qihuang.train.loop import StageData


def encode_conversations(convs: list[Conversation], tokenizer, template: Template, cutoff_len: int,
                         grounded: bool, desc: str = "tokenize") -> tuple[list[dict], int]:
    """Features for ``convs`` and the number dropped (no answer token left after the cutoff)."""
    from tqdm.auto import tqdm

    features, dropped = [], 0
    for conv in tqdm(convs, desc=desc, unit="ex", disable=len(convs) < 2000, leave=False):
        ids, labels = template.encode_supervised(
            tokenizer, conv["messages"], system=conv["system"],
            knowledge=conv["knowledge"] if grounded else None, cutoff_len=cutoff_len)
        if all(lab == IGNORE_INDEX for lab in labels[1:]):
            dropped += 1
            continue
        features.append({"input_ids": ids, "labels": labels})
    return features, dropped


def prepare_data(config: TrainConfig, tokenizer, template: Template) -> StageData:
    """Read the dataset, render every conversation with ``template`` and tokenize it."""
    spec = resolve_dataset(config.dataset, config.dataset_dir)
    train_convs, dev_convs = load_split(spec, config.max_samples, config.val_size, config.seed)
    encode = partial(encode_conversations, tokenizer=tokenizer, template=template,
                     cutoff_len=config.cutoff_len, grounded=config.grounded)
    train, dropped_train = encode(train_convs, desc="tokenize train")
    dev, dropped_dev = encode(dev_convs, desc="tokenize dev")
    return StageData(
        train=train, dev=dev, collate=partial(pad_batch, pad_id=tokenizer.pad_token_id),
        info={"num_train_examples": len(train), "num_dev_examples": len(dev),
              "dropped_over_cutoff": dropped_train + dropped_dev})
