"""Pairwise (preference) data: reading, normalising, tokenizing and batching chosen/rejected pairs.

``Pair = {"system": str | None, "messages": [...ending with a user turn], "chosen": str,
"rejected": str, "knowledge": list[list[str]]}``.

Accepted record shapes (the LLaMA-Factory ``ranking`` conventions):

* alpaca: ``instruction``, ``input``, ``chosen``, ``rejected`` (+ ``history``, ``system``,
  ``knowledge``); the older ``output: [chosen, rejected]`` is accepted too.
* ShareGPT: ``conversations`` (or ``messages``) ending with a user turn, and ``chosen`` /
  ``rejected`` as strings or as one turn (``{"from": "gpt", "value": …}`` /
  ``{"role": "assistant", "content": …}``).

Errors name the file, the line and the field. Tokenized features keep labels on the final
answer only (earlier answers of a dialogue are context), so a pair's chosen and rejected
sequences differ only where the answers do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from qihuang.data.registry import DataSource, DatasetSpec, remap
from qihuang.errors import ConfigError, InputError
from qihuang.records import (ASSISTANT, IGNORE_INDEX, RANKING_COLUMNS, Message, read_records, role_of,
                             to_conversation, turn_parts)

__all__ = ["IGNORE_INDEX", "RANKING_COLUMNS", "Pair", "collate_pairs", "encode_pair", "last_answer_only",
           "load_pairs", "pair_length", "read_pairs", "to_pair"]


class Pair(TypedDict):
    system: str | None
    messages: list[Message]
    chosen: str
    rejected: str
    knowledge: list[list[str]]


# ---- normalising ------------------------------------------------------------------------------
def _answer(value: Any, key: str, where: dict) -> str:
    if isinstance(value, dict):  # one ShareGPT turn
        raw_role, value = turn_parts(value)
        raw_role = "assistant" if raw_role is None else raw_role
        if role_of(raw_role) != ASSISTANT:
            raise InputError(f"expected an assistant turn, got role {str(raw_role).lower()!r}", field=key, **where)
    if not isinstance(value, str) or not value.strip():
        raise InputError("expected a non-empty string (or an assistant turn)", field=key, **where)
    return value


def to_pair(record: dict, path: str | Path | None = None, line: int | None = None) -> Pair:
    """Normalise one pairwise record (alpaca or ShareGPT ranking shape); errors name path/line/field."""
    where = {"path": str(path) if path is not None else None, "line": line}
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}", **where)
    if "chosen" in record or "rejected" in record:
        for key in ("chosen", "rejected"):
            if key not in record:
                raise InputError("missing (a pair needs both 'chosen' and 'rejected')", field=key, **where)
        chosen, rejected = _answer(record["chosen"], "chosen", where), _answer(record["rejected"], "rejected", where)
    elif isinstance(record.get("output"), list):
        output = record["output"]
        if len(output) < 2:
            raise InputError("a ranked 'output' list needs [chosen, rejected]", field="output", **where)
        chosen, rejected = _answer(output[0], "output", where), _answer(output[1], "output", where)
    else:
        raise InputError("not a pairwise record: expected 'chosen' and 'rejected' (or 'output': [chosen, "
                         f"rejected]); got keys {sorted(record)}", **where)
    prompt = {k: v for k, v in record.items() if k not in ("chosen", "rejected", "output")}
    key = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if key is not None:  # ShareGPT: the prompt turns end with the user's question
        turns = prompt[key]
        if not isinstance(turns, list) or not turns:
            raise InputError("expected a non-empty list of turns", field=key, **where)
        prompt[key] = [*turns, {"role": "assistant", "content": chosen}]
    else:
        prompt["output"] = chosen
    conv = to_conversation(prompt, path, line)
    return {"system": conv["system"], "messages": conv["messages"][:-1], "chosen": chosen,
            "rejected": rejected, "knowledge": conv["knowledge"]}


# ---- reading ----------------------------------------------------------------------------------
def read_pairs(path: str | Path, source: DataSource | None = None) -> Iterator[tuple[int, Pair]]:
    """``(line_number, pair)`` for every record of a ``.jsonl`` / ``.json`` file."""
    for line, record in read_records(path):
        yield line, to_pair(remap(record, source) if source else record, path, line)


def load_pairs(spec: DatasetSpec, max_samples: int | None = None, val_size: float = 0.0,
               seed: int = 42) -> tuple[list[Pair], list[Pair]]:
    """Train and dev pairs of a resolved dataset; without a dev split, ``val_size`` of train is held out."""
    from qihuang.data.registry import hold_out

    train = [p for s in spec.train for _, p in read_pairs(s.path, s)]
    dev = [p for s in spec.dev for _, p in read_pairs(s.path, s)]
    if not train:
        raise ConfigError(f"field 'dataset': {spec.name} has no preference pairs")
    return hold_out(train, dev, max_samples, val_size, seed)


# ---- tokenizing and batching ------------------------------------------------------------------
def last_answer_only(labels: list[int]) -> list[int]:
    """Labels with every labelled run but the last one (the final answer) set to -100."""
    out = list(labels)
    end = len(out)
    while end > 0 and out[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start > 0 and out[start - 1] != IGNORE_INDEX:
        start -= 1
    for i in range(start):
        out[i] = IGNORE_INDEX
    return out


def encode_pair(pair: Pair, tokenizer, template, cutoff_len: int = 1024, grounded: bool = False) -> dict | None:
    """``{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}`` with
    labels on the final answer (+ EOS) only, or ``None`` when the cutoff leaves an answer empty."""
    feature: dict[str, list[int]] = {}
    for side in ("chosen", "rejected"):
        messages = [*pair["messages"], {"role": "assistant", "content": pair[side]}]
        ids, labels = template.encode_supervised(tokenizer, messages, system=pair["system"],
                                                 knowledge=pair["knowledge"] if grounded else None,
                                                 cutoff_len=cutoff_len)
        labels = last_answer_only(labels)
        if all(lab == IGNORE_INDEX for lab in labels[1:]):
            return None
        feature[f"{side}_input_ids"], feature[f"{side}_labels"] = ids, labels
    return feature


def pair_length(feature: dict) -> int:
    return max(len(feature["chosen_input_ids"]), len(feature["rejected_input_ids"]))


def collate_pairs(features: list[dict], pad_id: int) -> dict:
    """One right-padded batch of ``2 * B`` rows: the chosen sequences, then the rejected ones.

    Extra per-pair float fields of the features (e.g. precomputed reference log-probabilities
    ``ref_chosen_logp``) become ``[B]`` tensors under the same name."""
    import torch

    rows = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features] + \
           [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, (row_ids, row_labels) in enumerate(rows):
        n = len(row_ids)
        ids[r, :n] = torch.tensor(row_ids, dtype=torch.long)
        labels[r, :n] = torch.tensor(row_labels, dtype=torch.long)
        mask[r, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in features[0]:
        if key.startswith("ref_"):
            batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
    return batch
