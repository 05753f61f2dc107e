"""Merge a LoRA adapter into its base model and save a standalone model directory.

The directory (safetensors weights, tokenizer, ``qihuang_template.json``, ``qihuang_meta.json``)
loads with plain ``transformers`` — and with vLLM — and gives the same greedy output as the
base model with the adapter applied. It is written to a temporary sibling directory and moved
into place with ``os.replace``, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from qihuang import __version__
from qihuang.errors import ConfigError

META_FILE = "qihuang_meta.json"


def _check_target(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out} already exists and is not empty (use --force to replace it)")


def _shareable(directory: Path) -> None:
    """Give the export the permissions of a normal directory (the temporary one it is written in,
    and files saved through temporary files, are owner-only): 0o777 / 0o666 minus the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def export_merged(adapter: str | os.PathLike, out: str | os.PathLike, base: str | None = None,
                  template: str | None = None, dtype: str = "float32", force: bool = False,
                  trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into ``base`` (default: the base recorded in the adapter dir) and save
    the result to ``out``; returns ``out``. ``trust_remote_code``: see
    :data:`qihuang.models.load.REMOTE_CODE_RISK` (off by default)."""
    from qihuang.data.prompts import save_template
    from qihuang.models.load import is_adapter_dir, load_for_inference, read_meta

    adapter, out = Path(adapter), Path(out)
    if not is_adapter_dir(adapter):
        raise ConfigError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    _check_target(out, force)
    base_name = base or read_meta(adapter).get("base_model", "default")
    model, tokenizer, chosen = load_for_inference(base_name, str(adapter), template, dtype=dtype,
                                                  trust_remote_code=trust_remote_code)
    if not hasattr(model, "merge_and_unload"):
        raise ConfigError(f"{adapter} did not load as a LoRA adapter")
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_template(chosen, tmp)
        meta = {"merged_from": {"adapter": str(adapter.resolve()), "base_model": str(base_name)},
                "dtype": dtype, "qihuang_version": __version__}
        (tmp / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
        _shareable(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
