"""One model preparation for every training stage (``sft``, ``pt``, ``rm``, ``dpo``).

:func:`prepare_model` loads the weights in the training dtype (:func:`qihuang.models.load.choose_dtype`,
``purpose="training"``), 4-bit for QLoRA, then makes them trainable with
:func:`qihuang.models.lora.apply_finetuning` (gradient checkpointing, k-bit preparation, a LoRA
adapter or every weight) and logs the trainable-parameter count. A stage only says which head it
trains (``"lm"`` or the reward model's ``"score"``) and whether a LoRA training output given as
``model`` is continued (DPO) or merged into its base first (the other stages).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from qihuang.errors import ConfigError
from qihuang.models.load import DEFAULT_MODEL, is_adapter_dir, read_meta
from qihuang.models.lora import apply_finetuning, count_parameters, quantization_kwargs, quiet_peft

if TYPE_CHECKING:
    from qihuang.config import TrainConfig

log = logging.getLogger(__name__)
HEAD_NAMES = ("score", "classifier")


def split_model_ref(name: str) -> tuple[str, str | None]:
    """``(base model, adapter dir or None)``: a LoRA training output is its recorded base + itself."""
    if not is_adapter_dir(name):
        return name, None
    base = read_meta(name).get("base_model")
    if not base:
        config_file = Path(name) / "adapter_config.json"
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or DEFAULT_MODEL
    return str(base), str(name)


def load_merged_causal_lm(name: str, dtype: str = "auto", **kwargs):
    """A causal LM; a LoRA output directory is loaded onto its base and merged into it."""
    from qihuang.models.load import load_model

    base, adapter = split_model_ref(name)
    with quiet_peft():
        model = load_model(base, adapter=adapter, dtype=dtype, **kwargs)
    return model.merge_and_unload() if adapter else model


def load_sequence_classifier(name: str, dtype: str = "auto", **kwargs):
    """A one-label sequence classifier over ``name`` (a LoRA output directory is merged into its base)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from qihuang.models.load import resolve_model, torch_dtype

    base, adapter = split_model_ref(name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model(base), num_labels=1,
                                                                   dtype=torch_dtype(dtype), **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load {base!r} as a reward model: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    if adapter is not None:
        from peft import PeftConfig, PeftModel

        config = PeftConfig.from_pretrained(adapter)
        config.task_type = None  # a causal-LM adapter (e.g. SFT's) merged into the classifier's backbone
        with quiet_peft():
            model = PeftModel.from_pretrained(model, adapter, config=config).merge_and_unload()
    return model


def head_name(model) -> str:
    """Attribute name of a sequence classifier's head (``score`` for Llama/Qwen2-style models)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    from torch import nn

    for name in HEAD_NAMES:
        if isinstance(getattr(base, name, None), nn.Module):
            return name
    raise ConfigError(f"field 'model': {type(base).__name__} has no score head ({'/'.join(HEAD_NAMES)})")


def _load_base(config: TrainConfig, tokenizer, head: str, continuing: bool):
    """The weights to train, before any adapter: what ``config.model`` names, in the training dtype."""
    from qihuang.models.load import load_model

    trust = {"trust_remote_code": config.trust_remote_code}
    if head == "score":
        model = load_sequence_classifier(config.model, config.dtype, **trust,
                                         **quantization_kwargs(config.finetuning))
        model.config.pad_token_id = tokenizer.pad_token_id  # the classifier finds each row's end by it
        return model
    if continuing and config.finetuning == "full":
        model = load_merged_causal_lm(config.model, config.dtype, **trust)
    else:
        name = split_model_ref(config.model)[0] if continuing else config.model
        model = load_model(name, dtype=config.dtype, trainable=True, **trust,
                           **quantization_kwargs(config.finetuning))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def prepare_model(config: TrainConfig, tokenizer, *, head: str = "lm", continue_adapter: bool = False):
    """The model a stage trains, set up as ``config`` says (``finetuning``, ``lora_*``, ``dtype``,
    ``gradient_checkpointing``, ``seed``).

    ``head``: ``"lm"`` (a causal LM) or ``"score"`` (a one-label sequence classifier whose head is
    trained in full beside LoRA). ``continue_adapter``: when ``config.model`` is a LoRA training
    output, LoRA/QLoRA keep training that adapter on its base and ``full`` merges it first;
    otherwise a fresh adapter is initialised from ``seed``."""
    import torch

    if head not in ("lm", "score"):
        raise ValueError(f"head must be 'lm' or 'score', got {head!r}")
    adapter = split_model_ref(config.model)[1] if continue_adapter else None
    model = _load_base(config, tokenizer, head, continuing=adapter is not None)
    if adapter is None:
        torch.manual_seed(config.seed)  # LoRA (and score head) initialisation, dropout
    model = apply_finetuning(
        model, config.finetuning, config.lora_rank, config.alpha, config.lora_dropout, config.lora_target,
        config.gradient_checkpointing, task_type="SEQ_CLS" if head == "score" else "CAUSAL_LM",
        modules_to_save=[head_name(model)] if head == "score" else None,
        adapter=adapter if config.finetuning != "full" else None)
    trainable, total = count_parameters(model)
    log.info("%s %s: %d of %d parameters trainable (%.2f%%)%s", config.finetuning, head, trainable, total,
             100 * trainable / max(total, 1), f", continuing {adapter}" if adapter else "")
    return model
