"""qihuang's own decoding loop around a transformers causal LM (the default CPU decoder).

``transformers``' ``generate`` spends, per token, more time in Python around the model than the
135M default model spends computing on a small CPU; its default dynamic KV cache also
concatenates every layer's keys and values at every step. :class:`LeanDecoder` is the
:class:`~qihuang.engines.hf.HFEngine`'s decoder (the engine keeps templates, stop strings,
cancellation, usage counts, streaming and scoring) that runs :func:`decode`: one forward per step over a
pre-allocated :class:`~transformers.StaticCache` (a dynamic cache for models that cannot use
one), logits of the last position only, greedy ``argmax`` or transformers' own logits
processors for sampling, and the engine's incremental stop check (only the text each new token
adds, plus a stop's length before it, is searched). Greedy output equals
``generate``'s at the same dtype (``benchmarks/generation_bench.py`` checks it on the real model).
"""

from __future__ import annotations

from collections.abc import Callable

from qihuang.engines.base import GenerationParams
from qihuang.engines.decoding import Decoded, DecodeJob, accept_token, decode_threads, logits_processors


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


def _cache_keyword(model) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older, and models with their own code)."""
    import inspect

    base = getattr(model, "get_base_model", lambda: model)()
    try:
        return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


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
    procs = logits_processors(params)
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


class LeanDecoder:
    """:func:`decode` as the engine's decoder. ``threads``: None = :func:`decode_threads` decides per run
    (1 on a busy machine), else that many torch threads."""

    name = "lean"
    pads = True  # decodes left-padded batches

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def run(self, model, job: DecodeJob) -> Decoded:
        import torch

        with torch.inference_mode():
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads or decode_threads(before))
            try:
                return decode(model, job.input_ids, job.attention_mask, job.params, job.terminators, job.pad_id,
                              job.stop_hit, job.cancelled, job.on_step)
            finally:
                torch.set_num_threads(before)

    def close(self) -> None:
        pass
