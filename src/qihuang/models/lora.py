"""Preparing a model for training: full fine-tuning, LoRA (PEFT) or QLoRA (4-bit, CUDA only)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qihuang.errors import ConfigError


def check_qlora_available() -> None:
    """Raise a clear error unless 4-bit QLoRA can run here (CUDA + bitsandbytes)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("field 'finetuning': qlora needs a CUDA GPU (4-bit bitsandbytes kernels); "
                          "on CPU use --finetuning lora")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError("field 'finetuning': qlora needs bitsandbytes: pip install 'qihuang[qlora]'") from exc


def quantization_kwargs(finetuning: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` kwargs for the base model (4-bit NF4 for QLoRA)."""
    if finetuning != "qlora":
        return {}
    check_qlora_available()
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)}


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT reads a transformers attribute deprecated in 5.x: hide that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant); the KV cache is off while training."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def apply_finetuning(model, finetuning: str, rank: int = 16, alpha: float = 32.0, dropout: float = 0.05,
                     targets: list[str] | None = None, gradient_checkpointing: bool = False, *,
                     task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None,
                     adapter: str | None = None):
    """Make ``model`` trainable: every weight (``full``), a new LoRA adapter on ``targets``
    (``["all"]``: every linear layer except the output head; ``modules_to_save`` are trained in
    full beside it), or, given ``adapter`` (a LoRA directory), that adapter continued.
    QLoRA bases are first prepared for k-bit training."""
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if finetuning == "full":
        return model.requires_grad_(True)
    from peft import LoraConfig, PeftModel, get_peft_model

    if finetuning == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if adapter is not None:
        with quiet_peft():
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    targets = targets or ["all"]
    target_modules: str | list[str] = "all-linear" if targets == ["all"] else targets
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type=task_type, modules_to_save=modules_to_save)
    try:
        with quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:
        raise ConfigError(f"field 'lora_target': {exc}") from exc


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
