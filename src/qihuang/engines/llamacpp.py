"""llama.cpp as the forward pass of qihuang's decode loop (the fast default CPU path).

:class:`LlamaCppDecoder` is a decoder of :class:`~qihuang.engines.hf.HFEngine` — so the engine keeps its
tokenizer, templates, stop strings, streaming, cancellation, usage counts and finish reasons — that
feeds the token ids to llama.cpp (``llama-cpp-python``'s low-level API, ``make install-llamacpp``):
:func:`decode_rows` prefills the prompts, then decodes one token per live row per step, every prompt
its own sequence in one multi-sequence batch, reading the last logits of each row and picking the
next id itself (``argmax``, or transformers' own logits processors and ``torch.multinomial`` when
sampling, as the lean loop does). ``loglikelihood`` (multiple-choice scoring) still runs on the
transformers model, which the engine keeps.

Weights: the default model, untuned, runs its shipped GGUF as it is (Q4_1: the very values the
transformers model holds dequantized in fp32); a merged LoRA adapter is written once as a GGUF by
:mod:`qihuang.models.gguf_export` (Q8_0 unless asked otherwise). :attr:`LlamaCppDecoder.weights`
says which.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable

from qihuang.engines.base import GenerationParams
from qihuang.engines.decoding import Decoded, DecodeJob, accept_token, cores, decode_threads, logits_processors
from qihuang.errors import ConfigError

_init_lock = threading.Lock()
_initialised = False
PREFILL_BATCH = 512  # prompt tokens per llama_decode call


def available() -> bool:
    """True when ``llama_cpp`` (llama-cpp-python) can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken shared library is as good as missing
        return False
    return True


def _lib():
    global _initialised
    import llama_cpp

    with _init_lock:
        if not _initialised:
            quiet = logging.getLogger("llama-cpp-python")
            if quiet.level == logging.NOTSET:  # its log callback prints everything below its level
                quiet.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


class LlamaCppModel:
    """A llama.cpp model and one context of ``n_ctx`` cells shared by up to ``n_seq`` sequences."""

    def __init__(self, path: str | os.PathLike, n_ctx: int, n_seq: int = 8):
        lib = _lib()
        self.lib, self.path = lib, str(path)
        mparams = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(self.path.encode(), mparams)
        if not self.model:
            raise ConfigError(f"llama.cpp could not load {self.path}")
        self.n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx, cparams.n_seq_max, cparams.kv_unified = n_ctx, max(1, n_seq), True
        cparams.n_batch = cparams.n_ubatch = PREFILL_BATCH
        cparams.n_threads = cparams.n_threads_batch = cores()
        cparams.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama-cpp-python's Llama; no faster here
        self.ctx = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise ConfigError(f"llama.cpp could not create a {n_ctx}-token context for {self.path}")
        self.n_ctx, self.n_seq = lib.llama_n_ctx(self.ctx), max(1, n_seq)
        self.batch = lib.llama_batch_init(max(PREFILL_BATCH, self.n_seq), 0, 1)
        self._threads = 0

    def close(self) -> None:
        """Free the context, batch and model (idempotent)."""
        if getattr(self, "ctx", None):
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.lib.llama_model_free(self.model)
            self.ctx = self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def reset(self, threads: int) -> None:
        """Forget every sequence; decode with ``threads`` threads from now on."""
        # metadata only: zeroing the data too would write the whole cache (~190 MB at 8192 cells) per call
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)
        if threads != self._threads:
            self.lib.llama_set_n_threads(self.ctx, threads, threads)
            self._threads = threads

    def decode(self, items: list[tuple[int, int, int, bool]]):
        """Run one batch of ``(token, position, sequence, want_logits)``; returns a float32 array
        of logits, one row per item that wanted them, in order."""
        import numpy as np

        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) on {len(items)} tokens, context {self.n_ctx}")
        rows = [i for i, it in enumerate(items) if it[3]]
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        for k, i in enumerate(rows):
            ptr = self.lib.llama_get_logits_ith(self.ctx, i)
            out[k] = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,))
        return out


def _prefill(runner: LlamaCppModel, rows: list[list[int]]):
    """Decode every prompt as its own sequence; the last logits of each row (float32 array)."""
    import numpy as np

    items = [(t, p, r, p == len(ids) - 1) for r, ids in enumerate(rows) for p, t in enumerate(ids)]
    last = np.empty((len(rows), runner.n_vocab), dtype=np.float32)
    owners = [r for r, ids in enumerate(rows) for p in range(len(ids)) if p == len(ids) - 1]
    done = 0
    for start in range(0, len(items), PREFILL_BATCH):
        chunk = items[start:start + PREFILL_BATCH]
        got = runner.decode(chunk)
        n = len(got)
        last[owners[done:done + n]] = got
        done += n
    return last


def _pick(logits, seqs: list[list[int]], procs, greedy: bool) -> list[int]:
    """Next ids from each row's logits (after the processors, if any)."""
    if not procs and greedy:
        return logits.argmax(-1).tolist()
    import torch

    scores = torch.from_numpy(logits)
    if procs:
        scores = torch.stack([procs(torch.tensor([s]), scores[i:i + 1])[0] for i, s in enumerate(seqs)])
    if greedy:
        return scores.argmax(-1).tolist()
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1).tolist()


def decode_rows(runner: LlamaCppModel, rows: list[list[int]], params: GenerationParams, terminators: set[int],
                threads: int, stop_hit: Callable[[int, list[int]], bool] | None = None,
                cancelled: Callable[[int], bool] | None = None,
                on_step: Callable[[list[list[int]]], bool] | None = None) -> Decoded:
    """:func:`qihuang.engines.lean.decode` with llama.cpp as the model: up to
    ``params.max_new_tokens`` new ids for each prompt in ``rows`` (unpadded ids), same callbacks."""
    runner.reset(threads)
    procs = logits_processors(params)
    out: list[list[int]] = [[] for _ in rows]
    live = [True] * len(rows)
    flags = {k: [False] * len(rows) for k in ("stopped", "ended", "cancelled")}
    logits = _prefill(runner, rows)
    for step in range(params.max_new_tokens):
        for r in range(len(rows)):
            if live[r] and cancelled is not None and cancelled(r):
                live[r], flags["cancelled"][r] = False, True
        idx = [r for r in range(len(rows)) if live[r]]
        if not idx:
            break
        picked = _pick(logits, [rows[r] + out[r] for r in idx], procs, params.greedy)
        for r, t in zip(idx, picked):
            accept_token(r, t, out, live, flags, terminators, stop_hit)
        if (on_step is not None and on_step(out)) or not any(live) or step == params.max_new_tokens - 1:
            break
        idx = [r for r in range(len(rows)) if live[r]]
        logits = runner.decode([(out[r][-1], len(rows[r]) + len(out[r]) - 1, r, True) for r in idx])
    return Decoded(out, flags["stopped"], flags["ended"], flags["cancelled"])


def _groups(lengths: list[int], n_ctx: int, n_seq: int) -> list[list[int]]:
    """Row indices in groups that fit one context (cells) and its sequence count."""
    groups: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if groups[-1] and (used + n > n_ctx or len(groups[-1]) >= n_seq):
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


class LlamaCppDecoder:
    """Decodes in llama.cpp (see the module doc): ``gguf`` is the file it runs, ``weights`` its weight
    types (e.g. ``"Q4_1"``, ``"Q8_0"``, ``"F32"``); one context of ``n_ctx`` cells for up to ``n_seq``
    sequences. ``threads``: None = :func:`decode_threads` decides per run."""

    name = "llamacpp"
    pads = False  # every prompt is its own sequence: no padding, any lengths batch well

    def __init__(self, gguf: str | os.PathLike, n_ctx: int, n_seq: int = 8, weights: str = "",
                 threads: int | None = None):
        self.gguf, self.weights, self.threads = str(gguf), weights, threads
        self.runner = LlamaCppModel(gguf, n_ctx, n_seq=n_seq)

    def run(self, model, job: DecodeJob) -> Decoded:
        """``model`` (the transformers one) is not used: llama.cpp holds the weights."""
        rows, params = job.rows, job.params
        lengths = [len(r) + params.max_new_tokens for r in rows]
        threads = self.threads or decode_threads(cores())
        merged = Decoded.empty(len(rows))
        for group in _groups(lengths, self.runner.n_ctx, self.runner.n_seq):
            def cancelled(r: int, group=group) -> bool:
                return job.cancelled(group[r])

            hit = None if job.stop_hit is None else (lambda r, ids, group=group: job.stop_hit(group[r], ids))
            done = decode_rows(self.runner, [rows[i] for i in group], params, job.terminators, threads,
                               hit, cancelled, job.on_step)
            for k, i in enumerate(group):
                merged.ids[i], merged.stopped[i] = done.ids[k], done.stopped[k]
                merged.ended[i], merged.cancelled[i] = done.ended[k], done.cancelled[k]
        return merged

    def close(self) -> None:
        """Free llama.cpp's memory now (it is freed anyway when the decoder is collected)."""
        self.runner.close()


def gguf_for(hf_model, tokenizer, model: str | None, adapter: str | None,
             gguf_type: str = "auto") -> tuple[str | None, str]:
    """``(path, weights)`` of the GGUF llama.cpp should run for ``model`` + ``adapter`` (merged into
    ``hf_model``), or ``(None, reason)`` when there is none. ``gguf_type``: ``"auto"`` = the source GGUF
    itself for an untuned model converted from one (the weights the transformers model holds), else
    Q8_0; or one of :data:`qihuang.models.gguf_export.GGUF_TYPES`."""
    from qihuang.models.gguf_export import GGUF_TYPES, cached_gguf, describe, source_gguf, unsupported
    from qihuang.models.load import DEFAULT_MODEL, is_adapter_dir, read_meta, resolve_model

    if gguf_type not in ("auto", *GGUF_TYPES):
        raise ConfigError(f"GGUF weight type must be 'auto' or one of {GGUF_TYPES}, got {gguf_type!r}")
    if adapter is None and is_adapter_dir(model):
        model, adapter = None, model
    if model is None:
        model = read_meta(adapter).get("base_model", DEFAULT_MODEL) if adapter else DEFAULT_MODEL
    base = resolve_model(model)
    if not os.path.isdir(base):
        return None, f"{model!r} is not a local model directory"
    source = source_gguf(base)
    if adapter is None and source is not None and gguf_type == "auto":
        return str(source), _weights(describe(source))
    why = unsupported(hf_model, tokenizer, source)
    if why:
        return None, why
    qtype = "q8_0" if gguf_type == "auto" else gguf_type
    path = cached_gguf(hf_model, base, adapter, qtype, tokenizer=tokenizer)
    return str(path), _weights(describe(path))


def _weights(counts: dict[str, int]) -> str:
    """``"Q4_1"``-style summary of a file's 2-D weight types (F32 norms left out when others exist)."""
    kinds = sorted(counts, key=lambda k: -counts[k])
    main = [k for k in kinds if k != "F32"] or kinds
    return "+".join(main)
