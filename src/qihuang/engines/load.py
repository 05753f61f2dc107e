"""``load_engine``: an :class:`~qihuang.engines.base.Engine` from a model name or path, an optional
LoRA adapter and a template name, on the backend and decoder that suit the machine."""

from __future__ import annotations

import logging

from qihuang.engines.base import Engine
from qihuang.errors import ConfigError

log = logging.getLogger(__name__)

# auto: ct2 on CPU when importable, the model converts and the dtype is left to qihuang, else llamacpp
# when importable and convertible, else hf
BACKENDS = ("auto", "hf", "ct2", "llamacpp", "vllm")
DECODERS = ("auto", "lean", "generate")  # hf backend: qihuang's decode loop or transformers' generate
QUANTIZE = (None, "int8")


def _check(backend: str, decoder: str, quantize: str | None) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
    if decoder not in DECODERS:
        raise ConfigError(f"engine decoder must be one of {DECODERS}, got {decoder!r}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"engine quantize must be None or 'int8', got {quantize!r}")


def _native_backend(backend: str, device: str, decoder: str, quantize: str | None, dtype: str) -> str | None:
    """The compiled decoder to try first ("ct2", "llamacpp") or None for the transformers path; an
    explicit choice that cannot run here is refused."""
    from qihuang.engines import ct2, llamacpp

    if backend == "ct2" and (device != "cpu" or not ct2.available()):
        raise ConfigError("engine backend 'ct2' runs on CPU and needs ctranslate2 (pip install ctranslate2)")
    if backend == "llamacpp" and (device != "cpu" or quantize is not None or not llamacpp.available()):
        raise ConfigError("engine backend 'llamacpp' runs on CPU without --quantize and needs llama-cpp-python "
                          "(make install-llamacpp)")
    if backend != "auto":
        return backend if backend in ("ct2", "llamacpp") else None
    if device != "cpu" or decoder != "auto" or quantize is not None:
        return None
    if dtype == "auto" and ct2.available():
        return "ct2"
    if llamacpp.available():
        return "llamacpp"
    log.info("engine: neither ctranslate2 nor llama_cpp is importable, using the transformers backend")
    return None


def _unavailable(backend: str, kind: str, name: str, why: str) -> None:
    """An explicit ``kind`` backend that cannot run the model is refused; under "auto" the reason is logged."""
    if backend == kind:
        raise ConfigError(f"engine backend {kind!r} cannot run {name!r}: {why}")
    nxt = "trying llama.cpp, else the transformers backend" if kind == "ct2" else "using the transformers backend"
    log.warning("engine: %s cannot run %r (%s); %s", kind, name, why, nxt)


def _ct2_decoder(hf_model, tokenizer, model, adapter, name: str, backend: str, dtype: str, quantize: str | None):
    """A :class:`~qihuang.engines.ct2.CT2Decoder` for the model, or None (reason logged) under "auto"."""
    from qihuang.engines import ct2

    weights = ct2.choose_compute(dtype, quantize)
    path, why = ct2.ct2_for(hf_model, tokenizer, model, adapter, weights)
    if path is None:
        return _unavailable(backend, "ct2", name, why)
    log.info("engine: CTranslate2 on %s (%s weights)", path, weights)
    return ct2.CT2Decoder(path, weights)


def _llamacpp_decoder(hf_model, tokenizer, model, adapter, name: str, backend: str, gguf_type: str, batch_size: int):
    """A :class:`~qihuang.engines.llamacpp.LlamaCppDecoder` for the model, or None (reason logged) under "auto"."""
    from qihuang.engines import llamacpp
    from qihuang.models.load import context_length

    path, weights = llamacpp.gguf_for(hf_model, tokenizer, model, adapter, gguf_type)
    if path is None:
        return _unavailable(backend, "llamacpp", name, weights)
    log.info("engine: llama.cpp on %s (%s weights)", path, weights)
    return llamacpp.LlamaCppDecoder(path, context_length(hf_model, tokenizer), n_seq=batch_size, weights=weights)


def load_engine(model: str | None = "default", adapter: str | None = None, template: str | None = None,
                backend: str = "auto", dtype: str = "auto", device: str = "auto", batch_size: int = 8,
                decoder: str = "auto", quantize: str | None = None, trust_remote_code: bool = False,
                gguf_type: str = "auto") -> Engine:
    """Build an engine: ``model`` name/path ("default" = the embedded SmolLM2), optional LoRA
    ``adapter`` dir (merged into the weights), ``template`` name (else the adapter's/model's saved
    template, else "auto").

    ``backend``: ``"ct2"`` = CTranslate2's decode loop (:mod:`qihuang.engines.ct2`, a prebuilt wheel in
    the default install; int8 weights where the CPU offers them, float32 with ``dtype="float32"``);
    ``"llamacpp"`` = qihuang's decode loop over llama.cpp (:mod:`qihuang.engines.llamacpp`, needs
    ``make install-llamacpp``; ``gguf_type`` picks its weights, see
    :func:`~qihuang.engines.llamacpp.gguf_for`); ``"hf"`` = transformers; ``"vllm"``; ``"auto"`` (default)
    = on CPU with ``decoder`` and ``quantize`` left at their defaults: ct2 when ``ctranslate2`` imports,
    ``dtype`` is "auto" and the model converts, else llamacpp when ``llama_cpp`` imports and the model
    converts, else hf, with the reason logged. ``decoder`` (hf backend): ``"lean"`` = qihuang's decode
    loop (:mod:`qihuang.engines.lean`), ``"generate"`` = transformers' ``generate``; ``"auto"`` = lean on
    CPU, generate on a GPU. ``quantize="int8"``: int8 weight-only linear layers on the hf backend (CPU,
    :mod:`qihuang.engines.int8`), int8 weights on ct2. ``trust_remote_code`` (off by default) lets a
    model's own Python code run (older ChatGLM checkpoints need it): see
    :data:`qihuang.models.load.REMOTE_CODE_RISK`."""
    _check(backend, decoder, quantize)
    if backend == "vllm":
        from qihuang.engines.vllm import VLLMEngine

        return VLLMEngine.load(model, adapter=adapter, template=template, dtype=dtype)
    from qihuang.engines.hf import GenerateDecoder, HFEngine
    from qihuang.models.load import choose_device, choose_dtype, load_for_inference, torch_dtype

    device = choose_device(device)
    native = _native_backend(backend, device, decoder, quantize, dtype)
    torch_side = choose_dtype(dtype, device)
    # ct2 converts from the transformers weights (kept for loglikelihood): float32, as it computes
    hf_model, tokenizer, tmpl = load_for_inference(model, adapter, template,
                                                   dtype="float32" if native == "ct2" else torch_side,
                                                   merge=True, trust_remote_code=trust_remote_code)
    name = str(adapter or model or "default")
    found = None
    if native == "ct2":
        found = _ct2_decoder(hf_model, tokenizer, model, adapter, name, backend, dtype, quantize)
        if found is None:  # auto: the next backend, with the weights it would have loaded
            from qihuang.engines import llamacpp

            native = "llamacpp" if llamacpp.available() else None
            hf_model = hf_model.to(torch_dtype(torch_side))
    if native == "llamacpp":
        found = _llamacpp_decoder(hf_model, tokenizer, model, adapter, name, backend, gguf_type, batch_size)
    if found is not None:
        return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=found)
    if device != "cpu":
        hf_model = hf_model.to(device)
    if quantize == "int8":
        from qihuang.engines.int8 import quantize_int8

        hf_model = quantize_int8(hf_model)
    if decoder == "lean" or (decoder == "auto" and device == "cpu"):
        from qihuang.engines.lean import LeanDecoder

        return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=LeanDecoder())
    return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=GenerateDecoder())
