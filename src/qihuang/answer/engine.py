"""One generation interface over transformers (and, optionally, vLLM).

Everything that produces text — batch inference, chat, the HTTP API, the web UI and the
evaluation tasks — goes through an :class:`Engine`:

- ``generate(prompts, params)``: batched generation (left padding), one string per prompt;
- ``stream(prompt, params)``: the same answer as text pieces while it is produced;
- ``loglikelihood(requests)``: ``sum log p(continuation | context)`` per ``(context, continuation)``
  pair (multiple-choice scoring).

Prompts are already rendered by the engine's :attr:`template`. ``load_engine`` builds one from
a model name or path, an optional LoRA adapter and a template name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from qihuang.errors import ConfigError

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class GenerationParams:
    """Sampling parameters. ``temperature == 0`` means greedy decoding; ``top_k == 0`` disables
    top-k; ``stop`` strings end the answer (they are not part of the returned text)."""

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
            ("repetition_penalty", self.repetition_penalty > 0, "> 0"),
            ("stop", isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "a list of non-empty strings"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"generation parameter {name!r} must be {what}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def stop_with_template(self, template, tokenizer) -> list[str]:
        """These stop strings plus the template's (as resolved for ``tokenizer``)."""
        if hasattr(template, "for_tokenizer"):
            template = template.for_tokenizer(tokenizer)
        return list(dict.fromkeys([*self.stop, *(getattr(template, "stop", None) or [])]))

    def with_stop(self, extra: list[str]) -> GenerationParams:
        """A copy whose stop strings also include ``extra`` (deduplicated, order kept)."""
        return replace(self, stop=list(dict.fromkeys([*self.stop, *extra])))


@runtime_checkable
class Engine(Protocol):
    """What the answerer, the servers and the evaluation need from a text generator."""

    tokenizer: Any
    template: Any
    model_name: str

    def generate(self, prompts: list[str], params: GenerationParams | None = None) -> list[str]: ...

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]: ...

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]: ...


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def clean_text(text: str) -> str:
    """Strip spaces and the replacement characters left by a multi-byte character cut at the
    token limit (byte-level tokenizers)."""
    return text.strip().strip("\ufffd").strip()


# ---- dtype / device choice ------------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability().upper()
        if "BF16" in cap or "AMX" in cap:
            return True
    except Exception:  # pragma: no cover - very old torch
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def choose_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """Resolve ``"auto"``: bf16 on GPUs that support it and on CPUs with native bf16, else fp32."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_supports_bf16() else "float32"


def choose_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- transformers backend -------------------------------------------------------------------
def _stop_criteria(tokenizer, prompt_len: int, stops: list[str], cancel: threading.Event | None):
    """A StoppingCriteria that ends each sequence once its new text holds a stop string
    (or every sequence when ``cancel`` is set)."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            batch = input_ids.shape[0]
            if cancel is not None and cancel.is_set():
                return torch.ones(batch, dtype=torch.bool, device=input_ids.device)
            if not stops:
                return torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            done = [any(s in t for s in stops) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return _Stop()


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

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        from qihuang.models.load import context_length

        return context_length(self.model, self.tokenizer)

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

    def _encode(self, prompts: list[str], max_new_tokens: int):
        """Left-padded batch, prompts cut from the left to fit the context window."""
        tok = self.tokenizer
        tok.padding_side, tok.truncation_side = "left", "left"
        limit = max(8, self.max_length - max_new_tokens)
        enc = tok(prompts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _seed(self, params: GenerationParams) -> None:
        if params.seed is not None and not params.greedy:
            import torch

            torch.manual_seed(params.seed)

    def generate(self, prompts: list[str], params: GenerationParams | None = None) -> list[str]:
        """Generate one answer per prompt, ``batch_size`` prompts per forward batch."""
        import torch

        params = params or GenerationParams()
        stops = self._stops(params)
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = prompts[i : i + self.batch_size]
            enc = self._encode(chunk, params.max_new_tokens)
            prompt_len = enc["input_ids"].shape[1]
            criteria = [_stop_criteria(self.tokenizer, prompt_len, stops, None)] if stops else None
            with self._lock, torch.inference_mode():
                self._seed(params)
                ids = self.model.generate(**enc, generation_config=self._gen_config(params),
                                          stopping_criteria=criteria)
            texts = self.tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True)
            out.extend(clean_text(cut_at_stop(t, stops)[0]) for t in texts)
        return out

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated; stops at a stop string (never yielded)."""
        import torch
        from transformers import TextIteratorStreamer

        params = params or GenerationParams()
        stops = self._stops(params)
        enc = self._encode([prompt], params.max_new_tokens)
        cancel = threading.Event()
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        criteria = [_stop_criteria(self.tokenizer, enc["input_ids"].shape[1], stops, cancel)]
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    self._seed(params)
                    self.model.generate(**enc, generation_config=self._gen_config(params),
                                        stopping_criteria=criteria, streamer=streamer)
            except BaseException as exc:  # surfaced in the consumer thread
                errors.append(exc)
                streamer.end()

        finished = threading.Event()

        def pieces() -> Iterator[str]:
            last = ""
            for piece in streamer:  # one piece behind, to drop a cut multi-byte character at the end
                if last:
                    yield last
                last = piece
            finished.set()
            if last.rstrip("\ufffd"):
                yield last.rstrip("\ufffd")

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from _hold_back_stops(pieces(), stops, cancel)
        finally:
            cancel.set()
            if not finished.is_set():  # stopped early: drain so the worker can finish
                for _ in streamer:
                    pass
            thread.join()
        if errors:
            raise errors[0]

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        """``sum log p(continuation | context)`` for each pair, scored in batches."""
        import torch

        tok = self.tokenizer
        rows = []
        for ctx, cont in requests:
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


def _hold_back_stops(pieces, stops: list[str], cancel: threading.Event) -> Iterator[str]:
    """Re-chunk streamed text so that no part of a stop string is ever yielded."""
    buffer, keep = "", max((len(s) for s in stops), default=1) - 1
    for piece in pieces:
        buffer += piece
        text, found = cut_at_stop(buffer, stops)
        if found:
            cancel.set()
            if text:
                yield text
            return
        safe = len(buffer) - keep if keep else len(buffer)
        if safe > 0:
            yield buffer[:safe]
            buffer = buffer[safe:]
    if buffer:
        yield buffer


# ---- construction ---------------------------------------------------------------------------
def load_engine(model: str | None = "default", adapter: str | None = None, template: str | None = None,
                backend: str = "hf", dtype: str = "auto", device: str = "auto", batch_size: int = 8) -> Engine:
    """Build an engine: ``model`` name/path ("default" = the embedded SmolLM2), optional LoRA
    ``adapter`` dir, ``template`` name (else the adapter's/model's saved template, else "auto")."""
    if backend not in BACKENDS:
        raise ConfigError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm":
        from qihuang.answer.vllm_engine import VLLMEngine

        return VLLMEngine.load(model, adapter=adapter, template=template, dtype=dtype)
    from qihuang.models.load import load_for_inference

    device = choose_device(device)
    resolved = choose_dtype(dtype, device)
    hf_model, tokenizer, tmpl = load_for_inference(model, adapter, template, dtype=resolved, merge=True)
    if device != "cpu":
        hf_model = hf_model.to(device)
    name = adapter or model or "default"
    return HFEngine(hf_model, tokenizer, tmpl, model_name=str(name), batch_size=batch_size)
