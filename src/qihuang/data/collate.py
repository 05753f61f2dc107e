"""Batching: padding, deterministic (length-grouped) batch plans, and packing for pretraining.

A *feature* is ``{"input_ids": list[int], "labels": list[int]}``. Batch plans are plain lists
of index lists computed from ``(seed, epoch)``, so a resumed run can skip exactly the
batches it already trained on, and every process of a distributed run agrees on them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from qihuang.records import IGNORE_INDEX


def pad_batch(features: list[dict], pad_id: int, pad_to_multiple_of: int = 1) -> dict:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``labels`` (with -100); adds ``attention_mask``.

    Labels are padded with -100 independently of ``pad_id``, so an EOS that equals the pad
    token stays trained."""
    import torch

    length = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of > 1:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(features), length), pad_id, dtype=torch.long)
    labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), length), dtype=torch.long)
    for row, feat in enumerate(features):
        n = len(feat["input_ids"])
        ids[row, :n] = torch.tensor(feat["input_ids"], dtype=torch.long)
        labels[row, :n] = torch.tensor(feat["labels"], dtype=torch.long)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_plan(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
               shuffle: bool = True) -> list[list[int]]:
    """Index batches for one epoch. With ``group_by_length``, examples are shuffled, cut into
    mega-batches of 32 batches, sorted by length inside each, and the batches shuffled again:
    similar lengths share a batch (little padding) while the order stays random."""
    order = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    if group_by_length:
        mega = batch_size * 32
        order = [i for k in range(0, len(order), mega)
                 for i in sorted(order[k:k + mega], key=lambda j: -lengths[j])]
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    if shuffle and group_by_length:
        rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """The batches of process ``rank`` (every process gets the same count; extras dropped)."""
    usable = len(batches) - len(batches) % world if len(batches) >= world else len(batches)
    if world > 1 and usable == 0:
        raise ValueError(f"fewer batches ({len(batches)}) than processes ({world})")
    return batches[rank:usable:world]


def pack_sequences(token_lists: Iterable[list[int]], block_size: int, eos_id: int | None) -> list[dict]:
    """Concatenate documents (each followed by EOS) and cut into ``block_size`` blocks for
    continued pretraining; the last partial block is kept if it has at least 16 tokens."""
    stream: list[int] = []
    for tokens in token_lists:
        stream.extend(tokens)
        if eos_id is not None:
            stream.append(eos_id)
    blocks = []
    for start in range(0, len(stream), block_size):
        chunk = stream[start:start + block_size]
        if len(chunk) >= min(16, block_size):
            blocks.append({"input_ids": chunk, "labels": list(chunk)})
    return blocks
