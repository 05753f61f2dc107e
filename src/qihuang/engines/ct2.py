"""CTranslate2 as the decoder of the engine: the fast CPU path of the default install.

``ctranslate2`` ships prebuilt wheels (manylinux x86_64, CPU kernels picked at run time for AVX2,
AVX-512, ...) that install in seconds, so no compile is needed. :class:`CT2Decoder` is a decoder of
:class:`~qihuang.engines.hf.HFEngine`, like the llama.cpp one: the engine keeps its tokenizer,
templates, stop strings, streaming, cancellation, usage counts and finish reasons, and scores
``loglikelihood`` on the transformers model; CTranslate2 runs the prefill and the decode loop in
C++ (``Generator.generate_batch``, every prompt its own row, no padding waste) and calls back once per
token, where qihuang checks the row's stop strings, its cancel event and a streaming consumer.

Conversion (:func:`model_spec`): qihuang's own, from the state dict of the (LoRA-merged) transformers
model through CTranslate2's spec API, for Llama-style decoders (``llama``, ``qwen2``: RMSNorm, SwiGLU,
half-split rotary with the default RoPE, grouped-query attention, optional q/k/v biases, tied or
untied output layer); others are refused with the reason (:func:`unsupported`) and load on the
transformers path. The converted model is cached under ``$QIHUANG_HOME/models/ct2/<name>-<key>``,
keyed by the base model's files, the adapter's content and the weight type (a merged LoRA converts
anew), written to a temporary directory and renamed into place.

Weights (:func:`choose_compute`): int8 when CTranslate2 offers int8 on this CPU (it does with AVX2
and with AVX-512): decoding one row of a small model reads every weight once per token, so it is
bound by memory traffic, and int8 weights with per-row scales (``int8_float32``: the other operations
in float32) read a quarter of float32's bytes; float32 where int8 is not offered, or when the caller
pinned ``dtype="float32"``. :attr:`CT2Decoder.weights` says which.

Parallel lanes (:func:`default_lanes`): a batch's prompts go to CTranslate2 as several
``generate_batch`` calls (prompts of close lengths together, :func:`_runs`), and one call runs on
``threads`` threads (:func:`default_threads`: one on 2 cores). The generator holds ``cores / threads``
workers (``inter_threads``, the weights shared), and a job's calls are handed over together, largest
first, so they run at once, one per free worker: each call computes exactly as it would alone (the
same ids), and the cores that one call's threads cannot use are used by the next call.

Sampling is CTranslate2's own (top-k, top-p, temperature, repetition penalty). Its random generator
belongs to its worker thread and is seeded when that thread starts, so a request with a ``seed``
loads a fresh one-lane generator after ``ctranslate2.set_random_seed`` (a model load, ~0.3 s for the
default model) and runs its calls one after another: the same seed gives the same sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from qihuang.engines.base import GenerationParams
from qihuang.engines.decoding import Decoded, DecodeJob, cores, decode_threads
from qihuang.errors import ConfigError

log = logging.getLogger(__name__)

CONVERT_VERSION = 1  # bump when the written model changes for the same inputs
ARCHITECTURES = frozenset({"llama", "qwen2"})
COMPUTE_TYPES = {"int8": "int8_float32", "float32": "float32"}  # weights -> CTranslate2 compute type
SEED_MODULUS = 2**32  # CTranslate2 takes an unsigned 32-bit seed


def available() -> bool:
    """True when ``ctranslate2`` can be imported."""
    try:
        import ctranslate2  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken shared library is as good as missing
        return False
    return True


def choose_compute(dtype: str = "auto", quantize: str | None = None) -> str:
    """The weight type to run: ``"int8"`` when asked (``quantize="int8"``) or left to qihuang
    (``dtype="auto"``) on a CPU where CTranslate2 offers int8, else ``"float32"``. Other dtypes are
    refused: CTranslate2 computes in float32 on a CPU."""
    import ctranslate2

    if dtype not in ("auto", "float32"):
        raise ConfigError(f"engine backend 'ct2' computes in int8 or float32 on a CPU; dtype {dtype!r} is not offered")
    offered = ctranslate2.get_supported_compute_types("cpu")
    if quantize == "int8" or dtype == "auto":
        if COMPUTE_TYPES["int8"] in offered:
            return "int8"
        if quantize == "int8":
            raise ConfigError(f"CTranslate2 offers no int8 on this CPU (it offers {sorted(offered)})")
    return "float32"


# ---- conversion ----------------------------------------------------------------------------------
def _rope(config) -> tuple[str, float]:
    """``(rope type, base)`` from a transformers config (``rope_parameters`` in transformers 5)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    return kind, float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def unsupported(model) -> str | None:
    """Why :func:`model_spec` cannot convert ``model`` (None when it can)."""
    config = getattr(model, "config", None)
    arch = getattr(config, "model_type", None)
    if arch not in ARCHITECTURES:
        return f"CTranslate2 conversion covers {sorted(ARCHITECTURES)} models, not {arch!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (only silu)"
    kind, _ = _rope(config)
    if kind != "default":
        return f"RoPE type {kind!r} (only the default rotary embedding)"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if getattr(model, "peft_config", None):
        return "an unmerged adapter"
    return None


def vocabulary(tokenizer, size: int) -> list[str]:
    """One distinct token string per id ``0..size-1`` (ids the tokenizer does not name, or names twice,
    get a placeholder): qihuang hands CTranslate2 its prompts as these strings."""
    tokens, seen = [], set()
    for i in range(size):
        tok = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if not isinstance(tok, str) or tok in seen:
            tok = f"<qihuang_ct2_unused_{i}>"
        seen.add(tok)
        tokens.append(tok)
    return tokens


def _array(tensor):
    return tensor.detach().float().cpu().numpy()


def _set_linear(spec, module) -> None:
    spec.weight = _array(module.weight)
    if getattr(module, "bias", None) is not None:
        spec.bias = _array(module.bias)


def _fused_qkv(spec, attn) -> None:
    """q, k and v projections as CTranslate2's one fused input projection (biases zero-filled if some lack one)."""
    import numpy as np

    parts = (attn.q_proj, attn.k_proj, attn.v_proj)
    spec.weight = np.concatenate([_array(p.weight) for p in parts])
    if any(p.bias is not None for p in parts):
        spec.bias = np.concatenate([_array(p.bias) if p.bias is not None else np.zeros(p.weight.shape[0], np.float32)
                                    for p in parts])


def model_spec(model, tokenizer):
    """A ``TransformerDecoderModelSpec`` holding ``model``'s weights (float32) and vocabulary."""
    from ctranslate2.specs import common_spec, transformer_spec

    why = unsupported(model)
    if why:
        raise ConfigError(f"cannot convert for CTranslate2: {why}")
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        cfg.num_hidden_layers, heads, activation=common_spec.Activation.SWISH, pre_norm=True, ffn_glu=True,
        rms_norm=True, rotary_dim=0, rotary_interleave=False, rotary_base=_rope(cfg)[1],
        num_heads_kv=None if kv_heads == heads else kv_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    body, dec = model.model, spec.decoder
    dec.scale_embeddings = False
    dec.embeddings.weight = _array(body.embed_tokens.weight)
    dec.layer_norm.gamma = _array(body.norm.weight)
    for layer_spec, layer in zip(dec.layer, body.layers, strict=True):
        attn, mlp = layer.self_attn, layer.mlp
        layer_spec.self_attention.layer_norm.gamma = _array(layer.input_layernorm.weight)
        layer_spec.ffn.layer_norm.gamma = _array(layer.post_attention_layernorm.weight)
        _fused_qkv(layer_spec.self_attention.linear[0], attn)
        _set_linear(layer_spec.self_attention.linear[1], attn.o_proj)
        _set_linear(layer_spec.ffn.linear_0, mlp.gate_proj)
        _set_linear(layer_spec.ffn.linear_0_noact, mlp.up_proj)
        _set_linear(layer_spec.ffn.linear_1, mlp.down_proj)
    _set_linear(dec.projection, model.lm_head)
    vocab = vocabulary(tokenizer, dec.embeddings.weight.shape[0])
    spec.register_vocabulary(vocab)
    special = {"bos_token": tokenizer.bos_token_id, "eos_token": tokenizer.eos_token_id,
               "unk_token": tokenizer.unk_token_id}
    for key, tid in special.items():
        setattr(spec.config, key, vocab[tid] if tid is not None and 0 <= tid < len(vocab) else vocab[0])
    spec.config.layer_norm_epsilon = float(cfg.rms_norm_eps)
    return spec


def write_model(model, tokenizer, out: str | os.PathLike, weights: str = "int8") -> Path:
    """Convert ``model`` into a CTranslate2 model directory ``out`` with ``weights`` ("int8" or "float32")."""
    start = time.perf_counter()
    spec = model_spec(model, tokenizer)
    log.info("ct2: weights collected (%.1f s); quantizing to %s and writing", time.perf_counter() - start, weights)
    spec.validate()
    spec.optimize(quantization=weights)
    spec.save(str(out))
    log.info("ct2: written in %.1f s", time.perf_counter() - start)
    return Path(out)


def local_model_dir(base: str) -> Path | None:
    """The directory holding ``base``'s files: itself, or a hub id's snapshot in the local cache."""
    if Path(base).is_dir():
        return Path(base)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached locally (or not a hub id)
        return None


def cache_dir(base_dir: Path, adapter: str | None, weights: str) -> Path:
    """Where the conversion of ``base_dir`` + ``adapter`` at ``weights`` lives (see the module doc)."""
    from qihuang.models.gguf_export import cache_key
    from qihuang.paths import models_dir

    key = hashlib.sha256(f"ct2-v{CONVERT_VERSION}:{base_dir.resolve()}:"
                         f"{cache_key(base_dir, adapter, weights)}".encode()).hexdigest()[:16]
    return models_dir() / "ct2" / f"{base_dir.name}-{weights}-{key}"


def cached_model(model, tokenizer, base_dir: Path, adapter: str | None, weights: str) -> Path:
    """The cached conversion of the merged ``model`` (written on first use: temporary dir, then rename)."""
    target = cache_dir(base_dir, adapter, weights)
    if (target / "model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        log.warning("converting %s to CTranslate2 %s weights in %s (one time)", base_dir.name, weights, target)
        write_model(model, tokenizer, tmp, weights)
        try:
            os.replace(tmp, target)
        except OSError:  # another process renamed its conversion into place first
            if not (target / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ct2_for(hf_model, tokenizer, model: str | None, adapter: str | None, weights: str) -> tuple[Path | None, str]:
    """``(directory, weights)`` of the CTranslate2 model for ``model`` + ``adapter`` (merged into
    ``hf_model``), or ``(None, reason)`` when there is none."""
    from qihuang.models.load import DEFAULT_MODEL, is_adapter_dir, read_meta, resolve_model

    why = unsupported(hf_model)
    if why:
        return None, why
    if adapter is None and is_adapter_dir(model):
        model, adapter = None, model
    if model is None:
        model = read_meta(adapter).get("base_model", DEFAULT_MODEL) if adapter else DEFAULT_MODEL
    base = local_model_dir(resolve_model(model))
    if base is None:
        return None, f"{model!r} has no local copy to convert"
    return cached_model(hf_model, tokenizer, base, adapter, weights), weights


# ---- decoding ------------------------------------------------------------------------------------
def sampling_kwargs(params: GenerationParams) -> dict:
    """``generate_batch`` keywords for ``params`` (greedy = top-1; ``top_k=0`` = the whole vocabulary)."""
    kw = {"repetition_penalty": params.repetition_penalty}
    if params.greedy:
        return kw | {"sampling_topk": 1}
    return kw | {"sampling_topk": params.top_k, "sampling_topp": params.top_p,
                 "sampling_temperature": params.temperature}


class _Steps:
    """The per-token callback of one ``generate_batch`` call over the job's rows ``index``: True ends
    that row. ``halt`` is shared by the calls of one job: once a streaming consumer has gone away, every
    call's rows end at their next token (calls may run at once, in parallel lanes)."""

    def __init__(self, job: DecodeJob, done: Decoded, index: list[int], halt: list[bool] | None = None):
        self.job, self.done, self.index = job, done, index
        self.halt = halt if halt is not None else [False]

    @property
    def halted(self) -> bool:
        return self.halt[0]

    def __call__(self, result) -> bool:
        job, done, r, token = self.job, self.done, self.index[result.batch_id], result.token_id
        if self.halt[0]:
            return True
        if job.cancelled(r):
            done.cancelled[r] = True
            return True
        if token in job.terminators:
            done.ended[r] = True
            return True
        done.ids[r].append(token)
        if job.stop_hit is not None and job.stop_hit(r, done.ids[r]):
            done.stopped[r] = True
        if job.on_step is not None and job.on_step(done.ids):  # a streaming consumer sees the stop's token too
            self.halt[0] = True
        return self.halt[0] or done.stopped[r]


def _weak_callback(step: _Steps):
    """``step`` as CTranslate2's callback, through a weak reference. CTranslate2's worker thread may drop
    the callback after ``generate_batch`` has returned; were that the last reference to the engine (and
    so to the generator), the generator would be destroyed on its own worker thread, which then joins
    itself and aborts the process ("Resource deadlock avoided"). Through a weak reference the callback
    holds nothing but itself."""
    ref = weakref.ref(step)

    def callback(result) -> bool:
        target = ref()
        return True if target is None else target(result)

    return callback


def _runs(rows: list[list[int]], spread: int = 0) -> list[list[int]]:
    """Row indices per ``generate_batch`` call. CTranslate2 forwards the prompts of a call at once only up
    to the shortest one's length; each token a longer prompt has beyond it is fed through the decoding
    loop, one batch step per token (32 grounded prompts of 74-459 tokens, 8 per call as they came: 63 s;
    one per call: 17 s). So prompts are sorted by length and a call takes only prompts at most ``spread``
    tokens longer than its shortest (a step saved in decoding is worth about one such token). When one
    prompt is a single token (nothing to forward) every prompt of the call goes through the decoding loop,
    so one-token prompts run on their own."""
    short = [i for i, r in enumerate(rows) if len(r) <= 1]
    runs: list[list[int]] = []
    for i in sorted((i for i, r in enumerate(rows) if len(r) > 1), key=lambda i: len(rows[i])):
        if runs and len(rows[i]) - len(rows[runs[-1][0]]) <= spread:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs + ([short] if short else [])


def default_threads() -> int:
    """CTranslate2 threads for a decoding run: at most half the cores (:func:`decode_threads` lowers it
    further on a busy machine). Its workers spin between operators, and a small model's operators are
    short: on a 2-core VM the default model decoded 74-88 tokens/s with 1 thread and 29-32 with 2 (prefill
    1,100-1,200 tokens/s either way), and a server's own threads take the other core."""
    return decode_threads(max(1, cores() // 2))


def default_lanes(threads: int) -> int:
    """Generation calls that run at once (CTranslate2's ``inter_threads``), ``threads`` each: as many as
    the cores hold. One call's threads wait for each other at every operator, separate calls never do:
    on the 2-core VM a burst of 32 grounded prompts took 13 s one call after another on one thread and
    8.6 s in two lanes of one thread (the same ids)."""
    return max(1, cores() // max(1, threads))


STEP_TOKENS = 16  # a decoding step of a small batch costs about as much as forwarding 16 prompt tokens


def _longest_first(runs: list[list[int]], rows: list[list[int]], new_tokens: int) -> list[list[int]]:
    """``runs`` by their estimated work, largest first (prompt tokens to forward plus the steps of
    decoding: the forced steps of a call's longer prompts and ``new_tokens``): lanes take calls in this
    order as they free up, so no lane is left with a long call at the end while the others idle."""

    def work(index: list[int]) -> int:
        lengths = [len(rows[i]) for i in index]
        steps = max(lengths) - min(lengths) + new_tokens
        return sum(lengths) + STEP_TOKENS * steps

    return sorted(runs, key=work, reverse=True)


class CT2Decoder:
    """Decodes in CTranslate2 (see the module doc): ``path`` is the converted model, ``weights`` its
    weight type ("int8" or "float32"). ``threads``: None = :func:`default_threads` decides per run;
    ``lanes``: None = :func:`default_lanes` (one generator is kept per thread and lane count used).

    A job's prompts go to CTranslate2 as several ``generate_batch`` calls (:func:`_runs`); with more
    than one lane the calls are handed over together, largest first, and run at once, one per lane (the
    weights are shared; each call computes as it would alone, so the ids are the same). A job with a
    seed runs its calls one after another on a fresh one-lane generator (the sample must not depend on
    which lane's random generator a call meets)."""

    name = "ct2"
    pads = False  # every prompt is its own row (no padding); :func:`_runs` keeps a call's lengths close

    def __init__(self, path: str | os.PathLike, weights: str = "int8", threads: int | None = None,
                 lanes: int | None = None):
        if weights not in COMPUTE_TYPES:
            raise ConfigError(f"CTranslate2 weights must be one of {sorted(COMPUTE_TYPES)}, got {weights!r}")
        self.path, self.weights, self.threads, self.lanes = str(path), weights, threads, lanes
        with open(Path(path) / "vocabulary.json", encoding="utf-8") as fh:
            self.vocab: list[str] = json.load(fh)
        self._generators: dict[tuple[int, int], object] = {}

    def _generator(self, threads: int, lanes: int = 1, fresh: bool = False):
        import ctranslate2

        if fresh:
            return ctranslate2.Generator(self.path, device="cpu", compute_type=COMPUTE_TYPES[self.weights],
                                         intra_threads=threads, inter_threads=lanes)
        if (threads, lanes) not in self._generators:
            self._generators[threads, lanes] = self._generator(threads, lanes, fresh=True)
        return self._generators[threads, lanes]

    def run(self, model, job: DecodeJob) -> Decoded:
        """``model`` (the transformers one) is not used: CTranslate2 holds the weights. CTranslate2 sets the
        calling thread's OpenMP thread count to its own (one thread on 2 cores), which torch shares: it is put
        back afterwards, or whatever runs torch next in this process (the quickstart's training after its
        untuned evaluation) would run on one core."""
        import torch

        before = torch.get_num_threads()
        try:
            return self._run(job)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    def _run(self, job: DecodeJob) -> Decoded:
        params = job.params
        seeded = params.seed is not None and not params.greedy
        if seeded:
            import ctranslate2

            ctranslate2.set_random_seed(params.seed % SEED_MODULUS)
        threads = self.threads or default_threads()
        runs = _runs(job.rows, params.max_new_tokens // 2)
        lanes = 1 if seeded else self.lanes or default_lanes(threads)
        generator = self._generator(threads, lanes, fresh=seeded)
        done, halt = Decoded.empty(len(job.rows)), [False]

        def call(index: list[int], asynchronous: bool):
            step = _Steps(job, done, index, halt)
            out = generator.generate_batch([[self.vocab[t] for t in job.rows[i]] for i in index],
                                           max_length=params.max_new_tokens, include_prompt_in_result=False,
                                           end_token=sorted(job.terminators), callback=_weak_callback(step),
                                           asynchronous=asynchronous, **sampling_kwargs(params))
            return step, out

        if lanes == 1 or len(runs) == 1:
            for index in runs:
                call(index, False)
                if halt[0]:
                    break
            return done
        pending = [call(index, True) for index in _longest_first(runs, job.rows, params.max_new_tokens)]
        failure = None
        for _step, results in pending:  # every call is waited for (its steps live until then)
            for result in results:
                try:
                    result.result()
                except Exception as exc:  # noqa: BLE001 - raised once all calls are over
                    failure = failure or exc
        if failure is not None:
            raise failure
        return done

    def close(self) -> None:
        """Drop the generators (CTranslate2 frees their memory)."""
        self._generators.clear()
