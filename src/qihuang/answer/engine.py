"""One generation interface over transformers (and, optionally, vLLM).

Everything that produces text — batch inference, chat, the HTTP API, the web UI and the
evaluation tasks — goes through an :class:`Engine`:

- ``generate_results(prompts, params, cancels=None)``: batched generation (left padding), one
  :class:`GenerationResult` per prompt (text, prompt/completion token counts, finish reason);
- ``generate(prompts, params)``: the same, texts only;
- ``stream(prompt, params, cancel=None)``: the same answer as text pieces while it is produced; the
  generator's return value (``StopIteration.value``) is the :class:`GenerationResult`;
- ``loglikelihood(requests)``: ``sum log p(continuation | context)`` per ``(context, continuation)``
  pair (multiple-choice scoring).

Prompts are already rendered by the engine's :attr:`template`. ``context_length`` is the model's
context window and ``count_tokens(prompt)`` what a prompt takes of it. A set ``cancel`` event ends a
generation at the next decoding step (``finish_reason == "cancelled"``). ``load_engine`` builds an
engine from a model name or path, an optional LoRA adapter and a template name.

Stop strings: :class:`HFEngine` matches them with transformers' ``StopStringCriteria`` (what
``generate(stop_strings=..., tokenizer=...)`` uses: token ids against a table, no decoding), fed the
generated tokens only; the returned text is still cut at the first one (``cut_at_stop``). Streaming (worker thread, hold-back of partial stop strings, cancellation, the
result) is :func:`qihuang.answer.streaming.stream_generation`, shared by every backend.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from qihuang.answer.streaming import Finish, Sink, clean_text, cut_at_stop, stream_generation
from qihuang.answer.streaming import hold_back_stops as _hold_back_stops  # noqa: F401  (re-exported)
from qihuang.errors import ConfigError
from qihuang.models.load import DEFAULT_CONTEXT, context_length  # noqa: F401  (one context rule for every engine)
from qihuang.models.load import _DTYPES as DTYPES  # noqa: F401
from qihuang.models.load import choose_device, choose_dtype, cpu_supports_bf16  # noqa: F401  (one dtype policy)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "llamacpp", "vllm")  # auto: llamacpp on CPU when importable and convertible, else hf
DECODERS = ("auto", "lean", "generate")  # hf backend: qihuang's decode loop or transformers' generate
MIN_TEMPERATURE = 1e-2  # below this the sampler's logits/temperature overflow: decode greedily instead
REPETITION_PENALTY_RANGE = (0.1, 10.0)  # outside it logits/penalty overflow to inf/nan
MAX_SEED = 2**63 - 1


@dataclass
class GenerationParams:
    """Sampling parameters. ``temperature`` below :data:`MIN_TEMPERATURE` (0 included) means greedy
    decoding; ``top_k == 0`` disables top-k; ``repetition_penalty`` lies in
    :data:`REPETITION_PENALTY_RANGE`; ``seed`` in ``[0, 2**63 - 1]``; ``stop`` strings end the answer
    (they are not part of the returned text)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("repetition_penalty", REPETITION_PENALTY_RANGE[0] <= self.repetition_penalty <= REPETITION_PENALTY_RANGE[1],
             f"in [{REPETITION_PENALTY_RANGE[0]}, {REPETITION_PENALTY_RANGE[1]}]"),
            ("seed", self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED),
             "None or an integer in [0, 2**63 - 1]"),
            ("stop", isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "a list of non-empty strings"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"generation parameter {name!r} must be {what}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    def key(self) -> tuple:
        """A hashable identity: requests with equal keys can share one batched generation."""
        return (self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty,
                tuple(self.stop), self.seed)

    def stop_with_template(self, template, tokenizer) -> list[str]:
        """These stop strings plus the template's (as resolved for ``tokenizer``)."""
        if hasattr(template, "for_tokenizer"):
            template = template.for_tokenizer(tokenizer)
        return list(dict.fromkeys([*self.stop, *(getattr(template, "stop", None) or [])]))

    def with_stop(self, extra: list[str]) -> GenerationParams:
        """A copy whose stop strings also include ``extra`` (deduplicated, order kept)."""
        return replace(self, stop=list(dict.fromkeys([*self.stop, *extra])))


@dataclass
class GenerationResult:
    """One generation: the cleaned text, the tokens the model saw and produced, and why it ended
    (``"stop"``: end of sequence or a stop string; ``"length"``: ``max_new_tokens`` cut it;
    ``"cancelled"``: the caller's cancel event)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@runtime_checkable
class Engine(Protocol):
    """What the answerer, the servers and the evaluation need from a text generator."""

    tokenizer: Any
    template: Any
    model_name: str

    def generate(self, prompts: list[str], params: GenerationParams | None = None) -> list[str]: ...

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]: ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]: ...


def _accepts(method, name: str) -> bool:
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def counted_result(engine, prompt: str, text: str, params: GenerationParams) -> GenerationResult:
    """A result for an engine that only returns text: counts from re-tokenizing (an estimate)."""
    tok = getattr(engine, "tokenizer", None)

    def count(t: str) -> int:
        return len(tok(t, add_special_tokens=False)["input_ids"]) if callable(tok) else len(t)

    completion = count(text)
    return GenerationResult(text, count(prompt), completion,
                            "length" if completion >= params.max_new_tokens else "stop")


def generation_results(engine, prompts: list[str], params: GenerationParams,
                       cancels: list[threading.Event | None] | None = None) -> list[GenerationResult]:
    """``engine.generate_results`` when the engine has it, else texts from ``generate`` with counted usage."""
    if hasattr(engine, "generate_results"):
        if cancels is not None and _accepts(engine.generate_results, "cancels"):
            return engine.generate_results(prompts, params, cancels=cancels)
        return engine.generate_results(prompts, params)
    return [counted_result(engine, p, t, params) for p, t in zip(prompts, engine.generate(prompts, params))]


def open_stream(engine, prompt: str, params: GenerationParams, cancel: threading.Event | None = None):
    """``engine.stream(prompt, params)``, passing ``cancel`` when the engine takes one."""
    if cancel is not None and _accepts(engine.stream, "cancel"):
        return engine.stream(prompt, params, cancel=cancel)
    return engine.stream(prompt, params)


# ---- transformers backend -------------------------------------------------------------------
def _cancel_criteria(cancels: list):
    """A StoppingCriteria that ends each row once its event in ``cancels`` is set (one per row, or
    one for all rows; ``None`` = never; anything with ``is_set()``). Stop strings are transformers'
    own ``stop_strings`` (:meth:`HFEngine._gen_config`)."""
    import torch
    from transformers import StoppingCriteria

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            batch = input_ids.shape[0]
            rows = cancels if len(cancels) == batch else cancels[:1] * batch
            done = [row is not None and row.is_set() for row in rows]
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


class _IdStreamer:
    """A transformers streamer handing each newly generated token id to a :class:`Sink`."""

    def __init__(self, sink: Sink):
        self._sink, self._prompt_seen = sink, False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        self._sink.emit(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


class HFEngine:
    """Engine over a transformers causal LM (optionally a peft model) and its tokenizer."""

    def __init__(self, model, tokenizer, template, model_name: str = "model", batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.model_name = model_name
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._lock = threading.Lock()  # one generate() at a time on a model
        self._tok_lock = threading.RLock()  # fast tokenizers fail ("Already borrowed") when shared by threads

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int:
        """The model's context window (see :func:`context_length`)."""
        return context_length(self.model, self.tokenizer)

    max_length = context_length

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (as :meth:`generate_results` encodes it)."""
        with self._tok_lock:
            return len(self.tokenizer(text)["input_ids"])

    def _terminators(self) -> set[int]:
        ids = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
        return ids | {t for t in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if t is not None}

    def _result(self, new_ids, prompt_tokens: int, text: str, stopped: bool, cancelled: bool,
                max_new: int) -> GenerationResult:
        """Usage and finish reason of one row of generated ids (padding after the end dropped)."""
        ends = self._terminators()
        ids = new_ids.tolist()
        n = next((i for i, t in enumerate(ids) if t in ends), len(ids))
        if cancelled:
            reason = "cancelled"
        elif stopped or n < len(ids):
            reason = "stop"
        else:
            reason = "length" if n >= max_new else "stop"
        return GenerationResult(text, prompt_tokens, n, reason)

    def _stops(self, params: GenerationParams) -> list[str]:
        return params.stop_with_template(self.template, self.tokenizer)

    def _gen_config(self, params: GenerationParams):
        from transformers import GenerationConfig

        base = self.model.generation_config.to_dict() if getattr(self.model, "generation_config", None) else {}
        keep = {k: base[k] for k in ("bos_token_id", "eos_token_id", "decoder_start_token_id") if base.get(k) is not None}
        cfg = dict(keep, max_new_tokens=params.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                   repetition_penalty=params.repetition_penalty)
        if params.greedy:
            cfg.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            cfg.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        return GenerationConfig(**cfg)

    def _generate_ids(self, enc, params: GenerationParams, stops: list[str], cancels: list, streamer=None):
        """``model.generate`` with transformers' stop-string matcher on the continuation and the cancel
        criterion (one generation at a time)."""
        import torch

        criteria = [_cancel_criteria(cancels)]
        if stops:
            criteria.append(_stop_criteria(_LockedTokenizer(self.tokenizer, self._tok_lock), stops,
                                           enc["input_ids"].shape[1]))
        with self._lock, torch.inference_mode():
            self._seed(params)
            return self.model.generate(**enc, generation_config=self._gen_config(params), stopping_criteria=criteria,
                                       streamer=streamer)

    def _encode(self, prompts: list[str], max_new_tokens: int):
        """Left-padded batch, prompts cut from the left to fit the context window."""
        tok = self.tokenizer
        limit = max(8, self.max_length - max_new_tokens)
        with self._tok_lock:
            tok.padding_side, tok.truncation_side = "left", "left"
            enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _seed(self, params: GenerationParams) -> None:
        if params.seed is not None and not params.greedy:
            import torch

            torch.manual_seed(params.seed)

    def generate(self, prompts: list[str], params: GenerationParams | None = None) -> list[str]:
        """Generate one answer per prompt (texts of :meth:`generate_results`)."""
        return [r.text for r in self.generate_results(prompts, params)]

    def generate_results(self, prompts: list[str], params: GenerationParams | None = None,
                         cancels: list[threading.Event | None] | None = None) -> list[GenerationResult]:
        """One :class:`GenerationResult` per prompt, ``batch_size`` prompts per forward batch. A set
        event in ``cancels`` (one per prompt) ends that row at the next step; already-set rows are
        not generated at all."""
        params = params or GenerationParams()
        cancels = list(cancels) if cancels is not None else [None] * len(prompts)
        results: list[GenerationResult | None] = [None] * len(prompts)
        todo = [i for i, ev in enumerate(cancels) if ev is None or not ev.is_set()]
        for i in set(range(len(prompts))) - set(todo):
            results[i] = GenerationResult("", 0, 0, "cancelled")
        for b in range(0, len(todo), self.batch_size):
            idx = todo[b : b + self.batch_size]
            for i, r in zip(idx, self._generate_chunk([prompts[i] for i in idx], params, [cancels[i] for i in idx])):
                results[i] = r
        return results

    def _generate_chunk(self, chunk: list[str], params: GenerationParams, cancels: list) -> list[GenerationResult]:
        stops = self._stops(params)
        enc = self._encode(chunk, params.max_new_tokens)
        prompt_len = enc["input_ids"].shape[1]
        new = self._generate_ids(enc, params, stops, cancels)[:, prompt_len:]
        out = []
        with self._tok_lock:
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        for row, text, seen, ev in zip(new, texts,
                                       enc["attention_mask"].sum(dim=1).tolist(), cancels):
            cut, stopped = cut_at_stop(text, stops)
            out.append(self._result(row, int(seen), clean_text(cut), stopped, ev is not None and ev.is_set(),
                                    params.max_new_tokens))
        return out

    def _decode_locked(self, ids) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def stream(self, prompt: str, params: GenerationParams | None = None,
               cancel: threading.Event | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; stops at a stop string (never yielded) or at the
        next step once ``cancel`` is set. Returns (``StopIteration.value``) the GenerationResult
        (:func:`qihuang.answer.streaming.stream_generation` does the streaming)."""
        params = params or GenerationParams()
        stops = self._stops(params)
        enc = self._encode([prompt], params.max_new_tokens)
        seen, prompt_len = int(enc["attention_mask"].sum()), enc["input_ids"].shape[1]

        def produce(sink: Sink) -> Finish:
            ids = self._generate_ids(enc, params, stops, [sink], streamer=_IdStreamer(sink))
            row = ids[0, prompt_len:]
            stopped = cut_at_stop(self._decode_locked(row), stops)[1]
            r = self._result(row, seen, "", stopped, cancel is not None and cancel.is_set(), params.max_new_tokens)
            return Finish(r.completion_tokens, r.finish_reason)

        return (yield from stream_generation(produce, stops=stops, prompt_tokens=seen,
                                             max_new_tokens=params.max_new_tokens, cancel=cancel,
                                             decode=self._decode_locked))

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        """``sum log p(continuation | context)`` for each pair, scored in batches."""
        import torch

        tok = self.tokenizer
        rows = []
        for ctx, cont in requests:
            with self._tok_lock:
                ctx_ids = tok(ctx)["input_ids"] if ctx else [tok.bos_token_id or tok.eos_token_id]
                cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            ids = (ctx_ids + cont_ids)[-self.max_length :]
            rows.append((ids, min(len(cont_ids), len(ids) - 1)))
        scores = [0.0] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            width = max(len(rows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                seq = rows[i][0]
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
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


# ---- construction ---------------------------------------------------------------------------
def load_engine(model: str | None = "default", adapter: str | None = None, template: str | None = None,
                backend: str = "auto", dtype: str = "auto", device: str = "auto", batch_size: int = 8,
                decoder: str = "auto", quantize: str | None = None, trust_remote_code: bool = False,
                gguf_type: str = "auto") -> Engine:
    """Build an engine: ``model`` name/path ("default" = the embedded SmolLM2), optional LoRA
    ``adapter`` dir (merged into the weights), ``template`` name (else the adapter's/model's saved
    template, else "auto").

    ``backend``: ``"llamacpp"`` = qihuang's decode loop over llama.cpp (:mod:`qihuang.answer.llamacpp`,
    needs ``make install-llamacpp``; ``gguf_type`` picks its weights, see
    :func:`~qihuang.answer.llamacpp.gguf_for`); ``"hf"`` = transformers; ``"vllm"``; ``"auto"`` (default)
    = llamacpp on CPU when ``llama_cpp`` imports and the model converts (``decoder`` and ``quantize``
    left at their defaults), else hf, with the reason logged. ``decoder`` (hf backend): ``"lean"`` =
    qihuang's decode loop (:mod:`qihuang.answer.lean`), ``"generate"`` = transformers' ``generate``;
    ``"auto"`` = lean on CPU, generate on a GPU. ``quantize="int8"``: int8 weight-only linear layers
    (CPU, opt-in, :mod:`qihuang.answer.int8`). ``trust_remote_code`` (off by default) lets a model's own
    Python code run (older ChatGLM checkpoints need it): see :data:`qihuang.models.load.REMOTE_CODE_RISK`."""
    if backend not in BACKENDS:
        raise ConfigError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
    if decoder not in DECODERS:
        raise ConfigError(f"engine decoder must be one of {DECODERS}, got {decoder!r}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"engine quantize must be None or 'int8', got {quantize!r}")
    if backend == "vllm":
        from qihuang.answer.vllm_engine import VLLMEngine

        return VLLMEngine.load(model, adapter=adapter, template=template, dtype=dtype)
    from qihuang.answer import llamacpp
    from qihuang.models.load import load_for_inference

    device = choose_device(device)
    want_cpp = backend == "llamacpp" or (backend == "auto" and device == "cpu" and decoder == "auto"
                                         and quantize is None)
    if backend == "llamacpp" and (device != "cpu" or quantize is not None or not llamacpp.available()):
        raise ConfigError("engine backend 'llamacpp' runs on CPU without --quantize and needs llama-cpp-python "
                          "(make install-llamacpp)")
    if want_cpp and not llamacpp.available():
        log.info("engine: llama_cpp is not importable, using the transformers backend (make install-llamacpp)")
        want_cpp = False
    resolved = choose_dtype(dtype, device)
    hf_model, tokenizer, tmpl = load_for_inference(model, adapter, template, dtype=resolved, merge=True,
                                                   trust_remote_code=trust_remote_code)
    name = str(adapter or model or "default")
    if want_cpp:
        path, weights = llamacpp.gguf_for(hf_model, tokenizer, model, adapter, gguf_type)
        if path is not None:
            log.info("engine: llama.cpp on %s (%s weights)", path, weights)
            return llamacpp.LlamaCppEngine(hf_model, tokenizer, tmpl, path, model_name=name,
                                           batch_size=batch_size, weights=weights)
        if backend == "llamacpp":
            raise ConfigError(f"engine backend 'llamacpp' cannot run {name!r}: {weights}")
        log.warning("engine: llama.cpp cannot run %r (%s); using the transformers backend", name, weights)
    if device != "cpu":
        hf_model = hf_model.to(device)
    if quantize == "int8":
        from qihuang.answer.int8 import quantize_int8

        hf_model = quantize_int8(hf_model)
    if decoder == "lean" or (decoder == "auto" and device == "cpu"):
        from qihuang.answer.lean import LeanEngine

        return LeanEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size)
    return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size)
