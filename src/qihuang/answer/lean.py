"""qihuang's own decoding loop around a transformers causal LM (the default CPU path).

``transformers``' ``generate`` spends, per token, more time in Python around the model than the
135M default model spends computing on a small CPU; its default dynamic KV cache also
concatenates every layer's keys and values at every step. :class:`LeanEngine` is the
:class:`~qihuang.answer.engine.HFEngine` (same templates, stop strings, cancellation, usage
counts, scoring) with generation done by :func:`decode`: one forward per step over a
pre-allocated :class:`~transformers.StaticCache` (a dynamic cache for models that cannot use
one), logits of the last position only, greedy ``argmax`` or transformers' own logits
processors for sampling, and incremental stop checks (:class:`~qihuang.answer.streaming.StopScanner`:
only the text each new token adds, plus a stop's length before it, is searched). Streaming is
:func:`~qihuang.answer.streaming.stream_generation` fed by :func:`decode`'s per-step callback. Greedy output equals
``generate``'s at the same dtype (``benchmarks/generation_bench.py`` checks it on the real model).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from qihuang.answer.engine import GenerationParams, GenerationResult, HFEngine, clean_text, cut_at_stop
from qihuang.answer.streaming import Finish, Sink, StopScanner, stream_generation


@dataclass
class Decoded:
    """What :func:`decode` produced: new ids per row (up to its end), and per-row flags."""

    ids: list[list[int]]
    stopped: list[bool]  # ended by a stop string
    ended: list[bool]  # ended by an end-of-sequence token
    cancelled: list[bool]


def _processors(params: GenerationParams):
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


# architectures checked to decode the same ids over a static cache as generate does (Bloom's ALiBi, for
# one, sizes its bias from the attention mask and fails on a longer static cache): others get a dynamic one
STATIC_CACHE_TYPES = frozenset({"llama", "qwen2"})


def _cache(model, batch: int, length: int):
    """A static KV cache of ``length`` positions when the model supports one, else a dynamic one."""
    from transformers import DynamicCache, StaticCache

    base = getattr(model, "get_base_model", lambda: model)()
    if getattr(base.config, "model_type", None) in STATIC_CACHE_TYPES:
        try:
            return StaticCache(config=base.config, max_cache_len=length), True
        except Exception:  # noqa: BLE001 - an architecture the static cache does not know
            pass
    return DynamicCache(config=base.config), False


def decode_threads(limit: int | None = None, load: float | None = None, cores: int | None = None) -> int:
    """Threads for one decoding run: torch's setting (``limit``), or 1 when the machine is already
    busy (1-minute load average at least one above the core count). OpenMP workers that share
    their cores with other processes wait for each other at every operator: on a loaded 2-core
    machine, 2 threads decoded 3-5x slower than 1 (``benchmarks/generation_bench.py``)."""
    import torch

    limit = limit or torch.get_num_threads()
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return limit
    return 1 if load >= cores + 1 else limit


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older, and models with their own code)."""
    import inspect

    base = getattr(model, "get_base_model", lambda: model)()
    try:
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


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


def decode(model, input_ids, attention_mask, params: GenerationParams, terminators: set[int], pad_id: int,
           stop_hit: Callable[[int, list[int]], bool] | None = None,
           cancelled: Callable[[int], bool] | None = None,
           on_step: Callable[[list[list[int]]], bool] | None = None) -> Decoded:
    """Generate up to ``params.max_new_tokens`` tokens for a left-padded batch.

    ``stop_hit(row, ids)``: the row's new ids hold a stop string; ``cancelled(row)``: the row's
    caller gave up (checked once per step); ``on_step(ids)``: called after each step with every
    row's ids, returns True to end all rows (a streaming consumer went away)."""
    import torch

    batch, width = input_ids.shape
    total = width + params.max_new_tokens
    cache, _static = _cache(model, batch, total)
    cache_arg = _cache_keyword(model)
    procs = _processors(params)
    mask = torch.zeros((batch, total), dtype=attention_mask.dtype, device=input_ids.device)
    mask[:, :width] = attention_mask
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    seq = input_ids  # all ids so far (the processors' view)
    step_ids, step_pos = input_ids, positions
    out: list[list[int]] = [[] for _ in range(batch)]
    live = [True] * batch
    flags = {k: [False] * batch for k in ("stopped", "ended", "cancelled")}
    for step in range(params.max_new_tokens):
        seen = width + step
        for r in range(batch):
            if live[r] and cancelled is not None and cancelled(r):
                live[r], flags["cancelled"][r] = False, True
        if not any(live):
            break
        start = seen - step_ids.shape[1]
        kwargs = {"attention_mask": mask[:, :seen],
                  "cache_position": torch.arange(start, seen, device=input_ids.device)}
        kwargs[cache_arg] = cache
        logits = model(input_ids=step_ids, position_ids=step_pos, use_cache=True, logits_to_keep=1, **kwargs).logits[:, -1, :].float()
        if procs:
            logits = procs(seq, logits)
        if params.greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)
        nxt = torch.where(torch.tensor(live, device=nxt.device), nxt, torch.full_like(nxt, pad_id))
        for r, t in enumerate(nxt.tolist()):
            if live[r]:
                accept_token(r, t, out, live, flags, terminators, stop_hit)
        mask[:, seen] = 1
        step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        seq = torch.cat([seq, step_ids], dim=1) if procs else seq
        if (on_step is not None and on_step(out)) or not any(live):
            break
    return Decoded(out, flags["stopped"], flags["ended"], flags["cancelled"])


class LeanEngine(HFEngine):
    """:class:`HFEngine` that decodes with :func:`decode` instead of ``model.generate``."""

    decoder = "lean"
    threads: int | None = None  # None: decode_threads() decides per call; else that many threads

    def _stop_check(self, stops: list[str]):
        """``stop_hit(row, ids)`` for :func:`decode`: one :class:`StopScanner` per row, fed the ids
        it has not seen (a few tokens decoded per step, never the whole continuation)."""
        if not stops:
            return None
        scanners: dict[int, StopScanner] = {}

        def hit(row: int, ids: list[int]) -> bool:
            scanner = scanners.get(row)
            if scanner is None:
                scanner = scanners[row] = StopScanner(stops, self._decode_locked)
            return scanner.push(ids[scanner.consumed:])

        return hit

    def _run(self, enc, params: GenerationParams, stops: list[str], cancels: list, on_step=None) -> Decoded:
        import torch

        def cancelled(r: int) -> bool:
            ev = cancels[r] if len(cancels) > r else None
            return ev is not None and ev.is_set()

        with self._lock, torch.inference_mode():
            self._seed(params)
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads or decode_threads(before))
            try:
                return decode(self.model, enc["input_ids"], enc["attention_mask"], params, self._terminators(),
                              self.tokenizer.pad_token_id, self._stop_check(stops), cancelled, on_step)
            finally:
                torch.set_num_threads(before)

    def _finish(self, ids: list[int], seen: int, text: str, done: Decoded, r: int,
                params: GenerationParams) -> GenerationResult:
        if done.cancelled[r]:
            reason = "cancelled"
        elif done.stopped[r] or done.ended[r] or len(ids) < params.max_new_tokens:
            reason = "stop"
        else:
            reason = "length"
        return GenerationResult(text, seen, len(ids), reason)

    def _generate_chunk(self, chunk: list[str], params: GenerationParams, cancels: list) -> list[GenerationResult]:
        stops = self._stops(params)
        enc = self._encode(chunk, params.max_new_tokens)
        done = self._run(enc, params, stops, cancels)
        with self._tok_lock:
            texts = self.tokenizer.batch_decode(done.ids, skip_special_tokens=True)
        seen = enc["attention_mask"].sum(dim=1).tolist()
        return [self._finish(ids, int(n), clean_text(cut_at_stop(t, stops)[0]), done, r, params)
                for r, (ids, t, n) in enumerate(zip(done.ids, texts, seen))]

    def stream(self, prompt: str, params: GenerationParams | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (see :meth:`HFEngine.stream`); :func:`decode` runs
        in :func:`~qihuang.answer.streaming.stream_generation`'s worker and hands over each new id."""
        params = params or GenerationParams()
        stops = self._stops(params)
        enc = self._encode([prompt], params.max_new_tokens)
        seen = int(enc["attention_mask"].sum())

        def produce(sink: Sink) -> Finish:
            sent = 0

            def on_step(ids: list[list[int]]) -> bool:
                nonlocal sent
                if len(ids[0]) > sent:
                    sink.emit(ids[0][sent:])
                    sent = len(ids[0])
                return sink.stopping()

            done = self._run(enc, params, stops, [cancel], on_step)
            r = self._finish(done.ids[0], seen, "", done, 0, params)
            return Finish(r.completion_tokens, r.finish_reason)

        return (yield from stream_generation(produce, stops=stops, prompt_tokens=seen,
                                             max_new_tokens=params.max_new_tokens, cancel=cancel,
                                             decode=self._decode_locked))
