"""The engine over a transformers tokenizer and model; a decoder component produces the ids.

:class:`HFEngine` keeps the :class:`~qihuang.engines.base.Engine` contract for every local backend:
prompts encoded once (:meth:`HFEngine.encode`), left-padded batches cut from the left to fit the
context window, stop strings (the request's plus the template's), usage counts from token ids,
finish reasons, cancellation, streaming (:func:`~qihuang.engines.streaming.stream_generation`) and
``loglikelihood`` on the transformers model. Which code turns a batch of ids into new ids is its
``decoder`` (composition, not subclassing): :class:`GenerateDecoder` here (transformers'
``generate``), :class:`~qihuang.engines.lean.LeanDecoder` (qihuang's loop),
:class:`~qihuang.engines.ct2.CT2Decoder` (CTranslate2, the CPU default) or
:class:`~qihuang.engines.llamacpp.LlamaCppDecoder` (llama.cpp). See :mod:`qihuang.engines.decoding`.

Stop strings with :class:`GenerateDecoder`: transformers' ``StopStringCriteria`` (what
``generate(stop_strings=..., tokenizer=...)`` uses: token ids against a table, no decoding), fed the
generated tokens only; the returned text is still cut at the first one (``cut_at_stop``).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence

from qihuang.engines.base import (Cancel, GenerationParams, GenerationResult, Prompt, PromptLike, cancelled_result,
                                  is_cancelled)
from qihuang.engines.decoding import Decoded, DecodeJob, Decoder
from qihuang.engines.streaming import Finish, Sink, StopScanner, clean_text, cut_at_stop, stream_generation
from qihuang.models.load import context_length

PAD_WASTE = 1.25  # a padded decoding run may hold at most this many tokens per real prompt token


# ---- transformers' generate as a decoder --------------------------------------------------------
def _cancel_criteria(cancelled):
    """A StoppingCriteria that ends each row once ``cancelled(row)`` is true."""
    import torch
    from transformers import StoppingCriteria

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = [cancelled(r) for r in range(input_ids.shape[0])]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _Cancelled()


def _stop_criteria(tokenizer, stops: list[str], prompt_len: int):
    """transformers' ``StopStringCriteria`` (the matcher behind ``generate(stop_strings=...)``: token
    ids against a precomputed table, no decoding) on the generated tokens only. Given the whole
    sequence, as ``GenerationConfig.stop_strings`` does, it also matches a stop that begins in the
    prompt (a prompt ending in "。" and the stop "。。" ended generation after one "。")."""
    import torch
    from transformers import StopStringCriteria, StoppingCriteria

    matcher = StopStringCriteria(tokenizer=tokenizer, stop_strings=stops)
    width = matcher.maximum_token_len
    outside = int(matcher.embedding_vec.shape[0]) - 1  # the table's "matches nothing" row

    class _NewTextStops(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_len:][:, -width:]
            if new.shape[1] < width:  # the prompt side of the window can never be part of a stop
                pad = torch.full((new.shape[0], width - new.shape[1]), outside, dtype=new.dtype, device=new.device)
                new = torch.cat([pad, new], dim=1)
            return matcher(new, scores)

    return _NewTextStops()


class _StepStreamer:
    """A transformers streamer handing each step's new ids to ``on_step`` (all rows so far); once it
    returns True the generation is halted at the next step."""

    def __init__(self, on_step, rows: int):
        self._on_step, self._seen_prompt = on_step, False
        self.out: list[list[int]] = [[] for _ in range(rows)]
        self.halted = False

    def put(self, value) -> None:
        if not self._seen_prompt:  # generate() first puts the prompt
            self._seen_prompt = True
            return
        for r, t in enumerate(value.reshape(len(self.out), -1).tolist()):
            self.out[r].extend(t)
        self.halted = self.halted or bool(self._on_step(self.out))

    def end(self) -> None:
        pass


class GenerateDecoder:
    """transformers' ``model.generate`` as a decoder (the default on a GPU)."""

    name = "generate"
    pads = True  # decodes left-padded batches

    def _config(self, model, params: GenerationParams, pad_id: int):
        from transformers import GenerationConfig

        base = model.generation_config.to_dict() if getattr(model, "generation_config", None) else {}
        keep = {k: base[k] for k in ("bos_token_id", "eos_token_id", "decoder_start_token_id") if base.get(k) is not None}
        cfg = dict(keep, max_new_tokens=params.max_new_tokens, pad_token_id=pad_id,
                   repetition_penalty=params.repetition_penalty)
        if params.greedy:
            cfg.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            cfg.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return GenerationConfig(**cfg)

    def run(self, model, job: DecodeJob) -> Decoded:
        import torch

        width = job.input_ids.shape[1]
        streamer = _StepStreamer(job.on_step, len(job.rows)) if job.on_step is not None else None
        halted = (lambda: streamer.halted) if streamer is not None else (lambda: False)
        criteria = [_cancel_criteria(lambda r: halted() or job.cancelled(r))]
        if job.stops:
            criteria.append(_stop_criteria(job.tokenizer, job.stops, width))
        with torch.inference_mode():
            out = model.generate(input_ids=job.input_ids, attention_mask=job.attention_mask,
                                 generation_config=self._config(model, job.params, job.pad_id),
                                 stopping_criteria=criteria, streamer=streamer)
        done = Decoded.empty(len(job.rows))
        for r, row in enumerate(out[:, width:].tolist()):
            n = next((i for i, t in enumerate(row) if t in job.terminators), len(row))
            done.ids[r], done.ended[r], done.cancelled[r] = row[:n], n < len(row), job.cancelled(r)
        return done

    def close(self) -> None:
        pass


# ---- the engine -----------------------------------------------------------------------------------
class _LockedTokenizer:
    """The tokenizer with every call made under the engine's tokenizer lock (for transformers'
    stop-string matcher, which reads the vocabulary and encodes while other threads tokenize)."""

    def __init__(self, tokenizer, lock):
        self._tokenizer, self._lock = tokenizer, lock

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        value = getattr(self._tokenizer, name)
        if not callable(value):
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked


class HFEngine:
    """Engine over a transformers causal LM (optionally a peft model) and its tokenizer; ``decoder``
    produces the ids (default :class:`GenerateDecoder`)."""

    def __init__(self, model, tokenizer, template, model_name: str = "model", batch_size: int = 8,
                 decoder: Decoder | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.model_name = model_name
        self.batch_size = batch_size
        self.decoder: Decoder = decoder or GenerateDecoder()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._lock = threading.Lock()  # one decoding run at a time on a model
        self._tok_lock = threading.RLock()  # fast tokenizers fail ("Already borrowed") when shared by threads
        self._context = context_length(self.model, self.tokenizer)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """The model's context window (:func:`qihuang.models.load.context_length`)."""
        return self._context

    def close(self) -> None:
        """Free what the decoder holds outside Python's memory (llama.cpp's context)."""
        self.decoder.close()

    # ---- tokens ---------------------------------------------------------------------------------
    def encode(self, text: str) -> Prompt:
        """``text`` tokenized as a prompt (once: generate and stream take the result as it is)."""
        with self._tok_lock:
            return Prompt(text, tuple(self.tokenizer(text)["input_ids"]))

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt."""
        return self.encode(text).tokens

    def _decode_ids(self, ids) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _terminators(self) -> set[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
        return ids | {t for t in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if t is not None}

    def _stops(self, params: GenerationParams) -> list[str]:
        return params.stop_with_template(self.template, self.tokenizer)

    def _rows(self, prompts: Sequence[PromptLike], max_new_tokens: int) -> list[list[int]]:
        """Each prompt's ids, cut from the left to leave ``max_new_tokens`` of the context window."""
        limit = max(8, self.context_length - max_new_tokens)
        return [list((p if isinstance(p, Prompt) else self.encode(p)).ids[-limit:]) for p in prompts]

    def _job(self, rows: list[list[int]], params: GenerationParams, stops: list[str], cancels: list,
             on_step=None) -> DecodeJob:
        """A left-padded batch of ``rows`` with the stop check and the cancel events."""
        import torch

        pad = self.tokenizer.pad_token_id
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                ids[i, width - len(row):] = torch.tensor(row)
                mask[i, width - len(row):] = 1
        return DecodeJob(ids.to(self.device), mask.to(self.device), rows, params, stops, self._terminators(), pad,
                         tokenizer=_LockedTokenizer(self.tokenizer, self._tok_lock), stop_hit=self._stop_check(stops),
                         cancelled=lambda r: r < len(cancels) and is_cancelled(cancels[r]), on_step=on_step)

    def _stop_check(self, stops: list[str]):
        """``stop_hit(row, ids)``: one :class:`StopScanner` per row, fed the ids it has not seen (a few
        tokens decoded per step, never the whole continuation)."""
        if not stops:
            return None
        scanners: dict[int, StopScanner] = {}

        def hit(row: int, ids: list[int]) -> bool:
            scanner = scanners.get(row)
            if scanner is None:
                scanner = scanners[row] = StopScanner(stops, self._decode_ids)
            return scanner.push(ids[scanner.consumed:])

        return hit

    def _decode_run(self, job: DecodeJob) -> Decoded:
        with self._lock:
            if job.params.seed is not None and not job.params.greedy:
                import torch

                torch.manual_seed(job.params.seed)
            return self.decoder.run(self.model, job)

    @staticmethod
    def _finish(done: Decoded, r: int, stopped: bool, params: GenerationParams) -> tuple[int, str]:
        """Completion tokens and finish reason of row ``r``."""
        n = len(done.ids[r])
        if done.cancelled[r]:
            return n, "cancelled"
        if stopped or done.stopped[r] or done.ended[r] or n < params.max_new_tokens:
            return n, "stop"
        return n, "length"

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[PromptLike], params: GenerationParams | None = None,
                 cancels: Sequence[Cancel | None] | None = None) -> list[GenerationResult]:
        """One :class:`GenerationResult` per prompt, ``batch_size`` prompts per decoding run. A set
        event in ``cancels`` (one per prompt) ends that row at the next step; already-set rows are not
        generated at all."""
        params = params or GenerationParams()
        cancels = list(cancels) if cancels is not None else [None] * len(prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        todo = [i for i, ev in enumerate(cancels) if not is_cancelled(ev)]
        for i in set(range(len(prompts))) - set(todo):
            results[i] = cancelled_result()
        rows = dict(zip(todo, self._rows([prompts[i] for i in todo], params.max_new_tokens)))
        for idx in self._groups(todo, rows):
            for i, r in zip(idx, self._generate_chunk([rows[i] for i in idx], params, [cancels[i] for i in idx])):
                results[i] = r
        return results

    def _groups(self, todo: list[int], rows: dict[int, list[int]]) -> list[list[int]]:
        """Decoding runs of at most ``batch_size`` prompts. A decoder that pads (left-padded batches)
        gets prompts of similar lengths together, shortest first, a run closed before padding would add
        more than :data:`PAD_WASTE` of its real tokens: a prompt of 470 tokens batched with ones of 50
        made every row cost 470 tokens of prefill."""
        if not self.decoder.pads:  # no padding, but CTranslate2 forwards a call's prompts at once only up to
            todo = sorted(todo, key=lambda i: len(rows[i]))  # the shortest one's length: close lengths together
            return [todo[b:b + self.batch_size] for b in range(0, len(todo), self.batch_size)]
        groups: list[list[int]] = []
        real = 0
        for i in sorted(todo, key=lambda i: len(rows[i])):
            n = len(rows[i])  # the longest so far: the run's width
            if groups and len(groups[-1]) < self.batch_size and n * (len(groups[-1]) + 1) <= PAD_WASTE * (real + n):
                groups[-1].append(i)
                real += n
            else:
                groups.append([i])
                real = n
        return groups

    def _generate_chunk(self, rows: list[list[int]], params: GenerationParams, cancels: list) -> list[GenerationResult]:
        stops = self._stops(params)
        done = self._decode_run(self._job(rows, params, stops, cancels))
        with self._tok_lock:
            texts = self.tokenizer.batch_decode(done.ids, skip_special_tokens=True)
        out = []
        for r, (row, text) in enumerate(zip(rows, texts)):
            cut, stopped = cut_at_stop(text, stops)
            n, reason = self._finish(done, r, stopped, params)
            out.append(GenerationResult(clean_text(cut), len(row), n, reason))
        return out

    def stream(self, prompt: PromptLike, params: GenerationParams | None = None,
               cancel: Cancel | None = None) -> Generator[str, None, GenerationResult]:
        """Yield text pieces as they are generated; stops at a stop string (never yielded) or at the
        next step once ``cancel`` is set. Returns (``StopIteration.value``) the GenerationResult
        (:func:`qihuang.engines.streaming.stream_generation` does the streaming; the decoder hands over
        each step's new ids)."""
        params = params or GenerationParams()
        stops = self._stops(params)
        row = self._rows([prompt], params.max_new_tokens)[0]

        def produce(sink: Sink) -> Finish:
            sent = 0

            def on_step(ids: list[list[int]]) -> bool:
                nonlocal sent
                if len(ids[0]) > sent:
                    sink.emit(ids[0][sent:])
                    sent = len(ids[0])
                return sink.stopping()

            done = self._decode_run(self._job([row], params, stops, [cancel], on_step))
            stopped = bool(stops) and cut_at_stop(self._decode_ids(done.ids[0]), stops)[1]
            return Finish(*self._finish(done, 0, stopped, params))

        return (yield from stream_generation(produce, stops=stops, prompt_tokens=len(row),
                                             max_new_tokens=params.max_new_tokens, cancel=cancel,
                                             decode=self._decode_ids))

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        """``sum log p(continuation | context)`` for each pair, scored in batches on the transformers model."""
        import torch

        tok = self.tokenizer
        rows = []
        for ctx, cont in requests:
            with self._tok_lock:
                ctx_ids = tok(ctx)["input_ids"] if ctx else [tok.bos_token_id or tok.eos_token_id]
                cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            ids = (ctx_ids + cont_ids)[-self.context_length:]
            rows.append((ids, min(len(cont_ids), len(ids) - 1)))
        scores = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq = rows[i][0]
                ids[r, :len(seq)] = torch.tensor(seq)
                mask[r, :len(seq)] = 1
            with self._lock, torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                seq, n = rows[i]
                if n <= 0:
                    continue
                pos = torch.arange(len(seq) - n, len(seq))
                scores[i] = float(logp[r, pos - 1, torch.tensor(seq)[pos]].sum())
        return scores
