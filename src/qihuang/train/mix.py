"""Mixing general data into any training stage by ratio (``--mix FILE_OR_NAME:RATIO``).

Domain tuning tends to cost a model some of its general ability; replaying general data during tuning is
the usual remedy. Each ``--mix`` source is read and tokenized by the stage itself (SFT conversations,
pretraining text blocks, preference pairs: whatever the stage reads from ``dataset``), and
``round(RATIO x n)`` of its examples are added to the ``n`` training examples: drawn without
replacement in an order seeded by ``seed`` and the source, and repeated in further shuffled passes
when the source has fewer. The sources are part of the saved ``train_config.yaml``; what was added
lands in ``metrics.json`` (``mix``).
"""

from __future__ import annotations

import random
from typing import Any

from qihuang.config import TrainConfig, parse_mix
from qihuang.errors import ConfigError


def draw(pool: list, n: int, rng: random.Random) -> list:
    """``n`` items of ``pool`` in a seeded order: each shuffled pass uses every item once before any repeats."""
    picked: list = []
    while len(picked) < n:
        order = list(range(len(pool)))
        rng.shuffle(order)
        picked += [pool[i] for i in order[: n - len(picked)]]
    return picked


def mix_in(data: Any, config: TrainConfig, stage: Any, tokenizer: Any, template: Any) -> list[dict]:
    """Add the examples of every ``config.mix`` source to ``data.train``; returns what was added per source."""
    n_main = len(data.train)
    added = []
    for i, item in enumerate(config.mix):
        name, ratio = parse_mix(item)
        source = config.model_copy(update={"dataset": name, "mix": [], "val_size": 0.0, "max_samples": None})
        pool = stage.prepare_data(source, tokenizer, template).train
        if not pool:
            raise ConfigError(f"field 'mix': {name!r} holds no usable {config.stage} examples")
        n = round(ratio * n_main)
        data.train.extend(draw(pool, n, random.Random(f"{config.seed}:{i}:{name}")))
        added.append({"source": name, "ratio": ratio, "available": len(pool), "added": n})
    return added
