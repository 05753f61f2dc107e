"""Writing a (LoRA-merged) Hugging Face Llama model as a GGUF file for the llama.cpp engine.

llama.cpp's ``llama`` architecture expects GGUF tensor names (``blk.N.attn_q.weight`` ...) and
query/key rows in its own rotary order: Hugging Face's rotary embedding rotates the two halves of
each head, llama.cpp rotates adjacent pairs, so :func:`to_gguf_rotary` regroups the rows of
``q_proj``/``k_proj`` of every head from ``[first half | second half]`` into interleaved pairs
(the inverse of what transformers does when it loads a GGUF, :func:`from_gguf_rotary`).

Metadata: a model converted from a GGUF (the default model; its directory has
``qihuang_source.json``) gets every key of that source file, its tokenizer included; any other
Llama model gets the hyper-parameters from its config and a BPE vocabulary from its fast
tokenizer. Other architectures are not converted (:func:`unsupported` says why) and load on the
transformers path instead.

:func:`cached_gguf` caches the file under ``$QIHUANG_HOME/cache/gguf/<key>.gguf``, keyed by the
base model's files, the adapter's content hash and the weight type, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from qihuang.errors import ConfigError
from qihuang.paths import home

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0")
EXPORT_VERSION = 1  # bump when the written file changes for the same inputs
_LAYER_MAP = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_MAP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """The llama.cpp tensor name of a Hugging Face Llama parameter name."""
    if hf_name in _TOP_MAP:
        return _TOP_MAP[hf_name]
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        inner = ".".join(parts[3:-1])
        if inner in _LAYER_MAP:
            return f"blk.{parts[2]}.{_LAYER_MAP[inner]}.weight"
    raise ConfigError(f"no llama.cpp name for parameter {hf_name!r}")


def to_gguf_rotary(weight, heads: int):
    """Rows of a q/k projection (``heads`` heads) reordered from HF's half-split rotary layout
    into llama.cpp's interleaved pairs."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def from_gguf_rotary(weight, heads: int):
    """The inverse of :func:`to_gguf_rotary` (what loading a GGUF into transformers does)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _config(model):
    base = getattr(model, "get_base_model", lambda: model)()
    return base.config


def source_gguf(model_dir: str | os.PathLike | None) -> Path | None:
    """The GGUF file a converted model directory came from (``qihuang_source.json``), if it still exists."""
    if model_dir is None:
        return None
    marker = Path(model_dir) / "qihuang_source.json"
    if not marker.is_file():
        return None
    try:
        path = Path(json.loads(marker.read_text(encoding="utf-8"))["gguf"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{marker}: invalid source record ({exc})") from exc
    return path if path.is_file() else None


def unsupported(model, tokenizer=None, source: Path | None = None) -> str | None:
    """Why ``model`` cannot be written for llama.cpp's ``llama`` architecture (None: it can)."""
    cfg = _config(model)
    if getattr(cfg, "model_type", None) != "llama":
        return f"architecture {getattr(cfg, 'model_type', None)!r} is not converted (only llama)"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return "llama model with bias terms"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if source is None and rope.get("rope_type", "default") != "default":
        return f"rope type {rope.get('rope_type')!r} without a source GGUF"
    if source is None and (tokenizer is None or not getattr(tokenizer, "is_fast", False)):
        return "no source GGUF and no fast tokenizer to take the vocabulary from"
    if any("lora" in n for n, _ in model.named_parameters()):
        return "LoRA adapter not merged"
    return None


def _hparams(writer, cfg, tokenizer) -> None:
    """Hyper-parameters and vocabulary of a Llama model that did not come from a GGUF."""
    import gguf

    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_name(str(getattr(cfg, "_name_or_path", "") or "qihuang"))
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tokenizer.get_vocab()
    tokens = [""] * cfg.vocab_size
    for piece, i in vocab.items():
        if i < cfg.vocab_size:
            tokens[i] = piece
    special = set(tokenizer.all_special_ids) | {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
    types = [gguf.TokenType.CONTROL if i in special else
             gguf.TokenType.NORMAL if tokens[i] else gguf.TokenType.UNUSED for i in range(cfg.vocab_size)]
    tokens = [t or f"[PAD{i}]" for i, t in enumerate(tokens)]
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec.get("model", {}).get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "pad", "unk"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(tid)
    writer.add_add_bos_token(False)


def _copy_metadata(writer, source: Path) -> None:
    """Every key of ``source`` (tokenizer included), except the file-layout ones the writer sets."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _tensor(writer, name: str, array, qtype: str) -> None:
    import gguf
    import numpy as np

    if array.ndim == 1 or qtype == "f32":
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    elif qtype == "f16":
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float16))
    else:
        kind = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind),
                          raw_shape=gguf.quants.quant_shape_to_byte_shape(array.shape, kind), raw_dtype=kind)


_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # gguf.LlamaFileType values


def export_gguf(model, out: str | os.PathLike, qtype: str = "q8_0", tokenizer=None,
                source: Path | None = None) -> Path:
    """Write ``model`` (a Llama causal LM, LoRA already merged) to ``out`` as a GGUF file for llama.cpp.

    ``qtype``: weight type of the 2-D tensors (norms stay F32). ``source``: the GGUF file the base
    model came from, whose metadata is copied; else ``tokenizer`` supplies the vocabulary."""
    import gguf
    import torch

    if qtype not in GGUF_TYPES:
        raise ConfigError(f"GGUF weight type must be one of {GGUF_TYPES}, got {qtype!r}")
    why = unsupported(model, tokenizer, source)
    if why:
        raise ConfigError(f"cannot write this model as GGUF: {why}")
    cfg = _config(model)
    out = Path(out)
    writer = gguf.GGUFWriter(str(out), "llama")
    if source is not None:
        _copy_metadata(writer, source)
    else:
        _hparams(writer, cfg, tokenizer)
    writer.add_file_type(_FILE_TYPES[qtype])
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    with torch.no_grad():
        for hf_name, param in model.state_dict().items():
            if hf_name == "lm_head.weight" and tied:
                continue
            array = param.detach().float().cpu().numpy()
            if ".self_attn.q_proj." in hf_name:
                array = to_gguf_rotary(array, cfg.num_attention_heads)
            elif ".self_attn.k_proj." in hf_name:
                array = to_gguf_rotary(array, cfg.num_key_value_heads)
            _tensor(writer, gguf_name(hf_name), array, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_key(base_dir: str | os.PathLike, adapter: str | os.PathLike | None, qtype: str) -> str:
    """A name for the GGUF of ``base_dir`` + ``adapter`` at ``qtype``: the base's weight files by path,
    size and modification time, the adapter by content hash."""
    h = hashlib.sha256(f"v{EXPORT_VERSION}:{qtype}".encode())
    base = Path(base_dir)
    for p in sorted(base.glob("*.safetensors")) + sorted(base.glob("*.bin")) + [base / "config.json"]:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    if adapter is not None:
        files = [p for p in Path(adapter).iterdir() if p.is_file() and p.name.startswith("adapter_")]
        h.update(_digest(files).encode())
    return h.hexdigest()[:24]


def gguf_cache_dir() -> Path:
    path = home() / "cache" / "gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_gguf(model, base_dir: str | os.PathLike, adapter: str | os.PathLike | None = None,
                qtype: str = "q8_0", tokenizer=None) -> Path:
    """The cached GGUF of the merged ``model`` (written on first use, atomically)."""
    target = gguf_cache_dir() / f"{cache_key(base_dir, adapter, qtype)}.gguf"
    if target.is_file():
        return target
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".gguf")
    os.close(fd)
    try:
        log.warning("writing %s weights for llama.cpp to %s (one time)", qtype, target)
        export_gguf(model, tmp, qtype, tokenizer=tokenizer, source=source_gguf(base_dir))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Weight types of a GGUF file's tensors: ``{type name: tensor count}`` (dtype honesty)."""
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
