"""What the preference stages (``rm``, ``dpo``) share: tokenized pair data and its metrics.

(Model loading, for these stages as for the others, is :func:`qihuang.models.prepare.prepare_model`;
the log-probabilities DPO scores are :func:`qihuang.train.objective.sequence_logps`.)

The shared loop only knows a loss; preference runs also report how often the chosen answer
wins. Batches carry a :class:`PairMetrics` sink (it rides through ``collate`` untouched), the
objective adds each batch's rewards to it, and because the sink is the stage's
``StageData.info`` its figures land in ``metrics.json``: pairwise accuracy and mean reward
margin on the dev pairs (after training and, with ``eval_at_start``, before), and on the
training pairs since the previous evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from qihuang.config import TrainConfig
from qihuang.data.pairwise import collate_pairs, encode_pair, load_pairs, pair_length
from qihuang.data.prompts import Template, load_template
from qihuang.data.registry import resolve_dataset
from qihuang.errors import ConfigError
from qihuang.models.load import read_meta

log = logging.getLogger(__name__)
_FIELDS = ("pairs", "correct", "margin", "chosen", "rejected")


class PairMetrics(Mapping):
    """Reward statistics of preference pairs, gathered as the loop runs; reads as a mapping.

    ``add`` is called by the objectives with each batch's chosen and rejected rewards. Batches
    seen in eval mode form one *round* per evaluation; batches seen in training mode are summed
    until the next evaluation. Under ``torch.distributed`` the sums are all-reduced when the
    mapping is read (every process reads it once, after training)."""

    def __init__(self, static: dict[str, Any] | None = None):
        import torch

        self._static = dict(static or {})
        self._rounds: list[torch.Tensor] = []  # one row of sums per evaluation
        self._round_before_training: list[bool] = []
        self._train = torch.zeros(len(_FIELDS), dtype=torch.float64)  # since the current round began
        self._last_train = torch.zeros(len(_FIELDS), dtype=torch.float64)  # before the latest round
        self._in_eval, self._trained = False, False
        self._cache: dict[str, Any] | None = None

    def note(self, **values: Any) -> None:
        """Add fixed entries (e.g. which reference model was used)."""
        self._static.update(values)

    def to(self, *args, **kwargs) -> PairMetrics:
        """Batches are moved to the device with ``.to``: the sink stays where it is."""
        return self

    def add(self, chosen, rejected, training: bool) -> None:
        """Add one batch: ``chosen`` and ``rejected`` rewards (1-D tensors of the same length)."""
        import torch

        c, r = chosen.detach().double().cpu(), rejected.detach().double().cpu()
        sums = torch.stack([torch.tensor(float(len(c)), dtype=torch.float64), (c > r).double().sum(),
                            (c - r).sum(), c.sum(), r.sum()])
        self._cache = None
        if training:
            self._in_eval, self._trained = False, True
            self._train += sums
            return
        if not self._in_eval:
            self._in_eval = True
            self._rounds.append(torch.zeros(len(_FIELDS), dtype=torch.float64))
            self._round_before_training.append(not self._trained)
            self._last_train, self._train = self._train, torch.zeros_like(self._train)
        self._rounds[-1] += sums

    # ---- reading ------------------------------------------------------------------------------
    def _reduced(self):
        import torch

        table = torch.stack([*self._rounds, self._last_train, self._train]) if self._rounds else \
            torch.stack([self._last_train, self._train])
        if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                torch.distributed.get_world_size() > 1:
            device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
            table = table.to(device)
            torch.distributed.all_reduce(table)
            table = table.cpu()
        return table

    def computed(self) -> dict[str, Any]:
        """The figures: ``dev_reward_accuracy`` / ``_margin`` / ``_chosen`` / ``_rejected`` (latest
        evaluation), the same with ``_initial`` (evaluation before training), ``train_reward_*``
        (training pairs since the previous evaluation) and ``reward_history`` (every evaluation)."""
        if self._cache is not None:
            return self._cache
        table = self._reduced()
        rounds, last_train, train = table[:-2], table[-2], table[-1]
        out: dict[str, Any] = {}
        history = [_summary(row) for row in rounds if row[0] > 0]
        if history:
            out.update({f"dev_reward_{k}": v for k, v in history[-1].items()})
            if self._round_before_training and self._round_before_training[0] and len(history) > 1:
                out.update({f"dev_reward_{k}_initial": v for k, v in history[0].items() if k != "pairs"})
            out["reward_history"] = history
        window = train if train[0] > 0 else last_train
        if window[0] > 0:
            out.update({f"train_reward_{k}": v for k, v in _summary(window).items()})
        self._cache = out
        return out

    def _all(self) -> dict[str, Any]:
        return {**self._static, **self.computed()}

    def __getitem__(self, key: str) -> Any:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _summary(row) -> dict[str, float]:
    n = float(row[0])
    return {"pairs": int(n), "accuracy": round(float(row[1]) / n, 4), "margin": round(float(row[2]) / n, 4),
            "chosen": round(float(row[3]) / n, 4), "rejected": round(float(row[4]) / n, 4)}


# ---- data ---------------------------------------------------------------------------------------
def encode_pairs(pairs: list, tokenizer, template: Template, config: TrainConfig, desc: str) -> tuple[list, int]:
    """Features of ``pairs`` and how many were dropped (an answer cut away by ``cutoff_len``)."""
    from tqdm.auto import tqdm

    features, dropped = [], 0
    for pair in tqdm(pairs, desc=desc, unit="pair", disable=len(pairs) < 2000, leave=False):
        feature = encode_pair(pair, tokenizer, template, config.cutoff_len, config.grounded)
        if feature is None:
            dropped += 1
        else:
            features.append(feature)
    return features, dropped


def prepare_pair_data(config: TrainConfig, tokenizer, template: Template):
    """``StageData`` of tokenized pairs; ``info`` is the run's :class:`PairMetrics`."""
    from qihuang.train.loop import StageData

    check_template(config, template)
    spec = resolve_dataset(config.dataset, config.dataset_dir)
    train_pairs, dev_pairs = load_pairs(spec, config.max_samples, config.val_size, config.seed)
    train, dropped_train = encode_pairs(train_pairs, tokenizer, template, config, "tokenize train pairs")
    dev, dropped_dev = encode_pairs(dev_pairs, tokenizer, template, config, "tokenize dev pairs")
    if not train:
        raise ConfigError(f"field 'cutoff_len': every training pair was cut to nothing at {config.cutoff_len} tokens")
    metrics = PairMetrics({"num_train_pairs": len(train), "num_dev_pairs": len(dev),
                           "dropped_over_cutoff": dropped_train + dropped_dev})
    pad = tokenizer.pad_token_id
    return StageData(train=train, dev=dev, collate=partial(_collate, pad_id=pad, metrics=metrics),
                     length=pair_length, weight=lambda f: 1, info=metrics)


def _collate(features: list[dict], pad_id: int, metrics: PairMetrics) -> dict:
    return {**collate_pairs(features, pad_id), "metrics": metrics}


def check_template(config: TrainConfig, template: Template) -> None:
    """A run starting from a training output must format prompts as that output was trained."""
    path = Path(config.model).expanduser()
    saved = load_template(path) if path.is_dir() else None
    if saved is not None and saved.name != template.name:
        raise ConfigError(f"field 'template': {config.model} was trained with template {saved.name!r}, "
                          f"this run uses {template.name!r}; pass --template {saved.name}")
    grounded = read_meta(path).get("grounded") if path.is_dir() else None
    if grounded is not None and grounded != config.grounded:
        log.warning("%s was trained with grounded=%s, this run uses grounded=%s", config.model, grounded,
                    config.grounded)
