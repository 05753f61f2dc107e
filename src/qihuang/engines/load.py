"""``load_engine``: an :class:`~qihuang.engines.base.Engine` from a model name or path, an optional
LoRA adapter and a template name, on the backend and decoder that suit the machine."""

from __future__ import annotations

import logging

from qihuang.engines.base import Engine
from qihuang.errors import ConfigError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "hf", "llamacpp", "vllm")  # auto: llamacpp on CPU when importable and convertible, else hf
DECODERS = ("auto", "lean", "generate")  # hf backend: qihuang's decode loop or transformers' generate
QUANTIZE = (None, "int8")


def _check(backend: str, decoder: str, quantize: str | None) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
    if decoder not in DECODERS:
        raise ConfigError(f"engine decoder must be one of {DECODERS}, got {decoder!r}")
    if quantize not in QUANTIZE:
        raise ConfigError(f"engine quantize must be None or 'int8', got {quantize!r}")


def load_engine(model: str | None = "default", adapter: str | None = None, template: str | None = None,
                backend: str = "auto", dtype: str = "auto", device: str = "auto", batch_size: int = 8,
                decoder: str = "auto", quantize: str | None = None, trust_remote_code: bool = False,
                gguf_type: str = "auto") -> Engine:
    """Build an engine: ``model`` name/path ("default" = the embedded SmolLM2), optional LoRA
    ``adapter`` dir (merged into the weights), ``template`` name (else the adapter's/model's saved
    template, else "auto").

    ``backend``: ``"llamacpp"`` = qihuang's decode loop over llama.cpp (:mod:`qihuang.engines.llamacpp`,
    needs ``make install-llamacpp``; ``gguf_type`` picks its weights, see
    :func:`~qihuang.engines.llamacpp.gguf_for`); ``"hf"`` = transformers; ``"vllm"``; ``"auto"`` (default)
    = llamacpp on CPU when ``llama_cpp`` imports and the model converts (``decoder`` and ``quantize``
    left at their defaults), else hf, with the reason logged. ``decoder`` (hf backend): ``"lean"`` =
    qihuang's decode loop (:mod:`qihuang.engines.lean`), ``"generate"`` = transformers' ``generate``;
    ``"auto"`` = lean on CPU, generate on a GPU. ``quantize="int8"``: int8 weight-only linear layers
    (CPU, opt-in, :mod:`qihuang.engines.int8`). ``trust_remote_code`` (off by default) lets a model's own
    Python code run (older ChatGLM checkpoints need it): see :data:`qihuang.models.load.REMOTE_CODE_RISK`."""
    _check(backend, decoder, quantize)
    if backend == "vllm":
        from qihuang.engines.vllm import VLLMEngine

        return VLLMEngine.load(model, adapter=adapter, template=template, dtype=dtype)
    from qihuang.engines import llamacpp
    from qihuang.engines.hf import GenerateDecoder, HFEngine
    from qihuang.models.load import choose_device, choose_dtype, context_length, load_for_inference

    device = choose_device(device)
    want_cpp = backend == "llamacpp" or (backend == "auto" and device == "cpu" and decoder == "auto"
                                         and quantize is None)
    if backend == "llamacpp" and (device != "cpu" or quantize is not None or not llamacpp.available()):
        raise ConfigError("engine backend 'llamacpp' runs on CPU without --quantize and needs llama-cpp-python "
                          "(make install-llamacpp)")
    if want_cpp and not llamacpp.available():
        log.info("engine: llama_cpp is not importable, using the transformers backend (make install-llamacpp)")
        want_cpp = False
    hf_model, tokenizer, tmpl = load_for_inference(model, adapter, template, dtype=choose_dtype(dtype, device),
                                                   merge=True, trust_remote_code=trust_remote_code)
    name = str(adapter or model or "default")
    if want_cpp:
        path, weights = llamacpp.gguf_for(hf_model, tokenizer, model, adapter, gguf_type)
        if path is not None:
            log.info("engine: llama.cpp on %s (%s weights)", path, weights)
            cpp = llamacpp.LlamaCppDecoder(path, context_length(hf_model, tokenizer), n_seq=batch_size,
                                           weights=weights)
            return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=cpp)
        if backend == "llamacpp":
            raise ConfigError(f"engine backend 'llamacpp' cannot run {name!r}: {weights}")
        log.warning("engine: llama.cpp cannot run %r (%s); using the transformers backend", name, weights)
    if device != "cpu":
        hf_model = hf_model.to(device)
    if quantize == "int8":
        from qihuang.engines.int8 import quantize_int8

        hf_model = quantize_int8(hf_model)
    if decoder == "lean" or (decoder == "auto" and device == "cpu"):
        from qihuang.engines.lean import LeanDecoder

        return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=LeanDecoder())
    return HFEngine(hf_model, tokenizer, tmpl, model_name=name, batch_size=batch_size, decoder=GenerateDecoder())
