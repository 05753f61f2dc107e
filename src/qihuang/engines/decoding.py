"""What a decoder gets and gives back, and the per-step pieces every decode loop shares.

:class:`~qihuang.engines.hf.HFEngine` owns the tokenizer, the template, stop strings, usage counts
and streaming; a *decoder* only turns a :class:`DecodeJob` (left-padded ids, the callbacks) into
:class:`Decoded` ids. Four decoders exist, each in its backend's module and none importing another:
transformers' ``generate`` (:class:`~qihuang.engines.hf.GenerateDecoder`), qihuang's own loop over a
static cache (:class:`~qihuang.engines.lean.LeanDecoder`), CTranslate2
(:class:`~qihuang.engines.ct2.CT2Decoder`) and llama.cpp (:class:`~qihuang.engines.llamacpp.LlamaCppDecoder`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from qihuang.engines.base import GenerationParams


@dataclass
class Decoded:
    """What a decoder produced: new ids per row (up to its end, terminator excluded), and per-row flags."""

    ids: list[list[int]]
    stopped: list[bool]  # ended by a stop string
    ended: list[bool]  # ended by an end-of-sequence token
    cancelled: list[bool]

    @classmethod
    def empty(cls, rows: int) -> Decoded:
        return cls([[] for _ in range(rows)], [False] * rows, [False] * rows, [False] * rows)


@dataclass
class DecodeJob:
    """One batch to decode. ``input_ids``/``attention_mask``: left-padded tensors; ``rows``: the same
    prompts unpadded; ``stop_hit(row, ids)``: the row's new ids hold a stop string; ``cancelled(row)``:
    the row's caller gave up (checked once per step); ``on_step(ids)``: called after each step with
    every row's ids, returns True to end all rows (a streaming consumer went away)."""

    input_ids: Any
    attention_mask: Any
    rows: list[list[int]]
    params: GenerationParams
    stops: list[str]
    terminators: set[int]
    pad_id: int
    tokenizer: Any = None  # the engine's tokenizer, every call under its lock (transformers' stop matcher)
    stop_hit: Callable[[int, list[int]], bool] | None = None
    cancelled: Callable[[int], bool] = field(default=lambda row: False)
    on_step: Callable[[list[list[int]]], bool] | None = None


class Decoder(Protocol):
    """Turns a :class:`DecodeJob` into :class:`Decoded` ids (called under the engine's model lock)."""

    name: str
    pads: bool  # whether it decodes left-padded batches (the engine then batches prompts of similar lengths)

    def run(self, model, job: DecodeJob) -> Decoded: ...

    def close(self) -> None: ...


def accept_token(r: int, t: int, out: list[list[int]], live: list[bool], flags: dict[str, list[bool]],
                 terminators: set[int], stop_hit: Callable[[int, list[int]], bool] | None) -> None:
    """Row ``r`` takes token ``t``: a terminator ends it (not kept), else ``t`` is appended and a stop
    string completed by it ends the row. Shared by every decode loop (torch and llama.cpp)."""
    if t in terminators:
        live[r], flags["ended"][r] = False, True
        return
    out[r].append(t)
    if stop_hit is not None and stop_hit(r, out[r]):
        live[r], flags["stopped"][r] = False, True


def logits_processors(params: GenerationParams):
    """transformers' logits processors for ``params`` (repetition penalty, then the sampling warpers)."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.greedy:
        procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k:
            procs.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(params.top_p))
    return procs


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_threads(limit: int | None = None, load: float | None = None, n_cores: int | None = None) -> int:
    """Threads for one decoding run: ``limit`` (default torch's setting), or 1 when the machine is
    already busy (1-minute load average at least one above the core count). OpenMP workers that share
    their cores with other processes wait for each other at every operator: on a loaded 2-core
    machine, 2 threads decoded 3-5x slower than 1 (``benchmarks/generation_bench.py``)."""
    if limit is None:
        import torch

        limit = torch.get_num_threads()
    n_cores = cores() if n_cores is None else n_cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return limit
    return 1 if load >= n_cores + 1 else limit
