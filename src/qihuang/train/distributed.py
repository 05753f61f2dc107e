"""The accelerator for one training run, and what differs between strategies.

Strategies: ``single`` (one process), ``ddp`` (data parallel, over NCCL or gloo), ``fsdp``
(PyTorch FSDP, parameters/gradients/optimizer states sharded) and ``deepspeed`` (ZeRO-2/3).
``accelerate launch --config_file examples/accelerate/...`` picks one; this module builds the
``Accelerator`` for it and gathers the full weights for the output directory.

FSDP on CPU: accelerate (1.x) turns FSDP on only for GPU-class devices, and on CPU it falls back
to plain data parallel. PyTorch's FSDP2 (``fully_shard``) does run over gloo, so when an FSDP
launch runs on CPU (``use_cpu: true``, as ``examples/accelerate/fsdp_cpu.yaml``) qihuang selects
accelerate's FSDP2 path itself. That is what lets the FSDP test run on a machine without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

from qihuang.errors import ConfigError

SHARDED = ("fsdp", "deepspeed")


def use_cpu() -> bool:
    """CPU when there is no GPU or ``accelerate launch`` asked for it (``use_cpu: true``): then
    a multi-process launch communicates over gloo."""
    import torch

    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def _fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def make_accelerator(grad_accum: int, mixed_precision: str):
    """The ``Accelerator`` for this process (FSDP2 also on CPU, see the module docstring)."""
    from accelerate import Accelerator

    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision,
                              cpu=use_cpu())
    if _fsdp_requested() and accelerator.distributed_type.name == "MULTI_CPU":
        _enable_fsdp_on_cpu(accelerator)
    return accelerator


def _enable_fsdp_on_cpu(accelerator) -> None:
    """Switch a CPU (gloo) multi-process accelerator to accelerate's FSDP2 code path."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables set by accelerate launch
    if getattr(plugin, "fsdp_version", 1) != 2:
        raise ConfigError("FSDP on CPU needs FSDP2: fsdp_version: 2 in the accelerate config, and an accelerate "
                          "that has it (FSDP1's collectives do not run over gloo); see examples/accelerate/fsdp_cpu.yaml")
    if plugin.cpu_ram_efficient_loading:
        raise ConfigError("FSDP on CPU: set fsdp_cpu_ram_efficient_loading: false (every process loads the "
                          "model itself); see examples/accelerate/fsdp_cpu.yaml")
    state = accelerator.state
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def strategy(accelerator) -> str:
    """``single``, ``ddp``, ``fsdp`` or ``deepspeed``."""
    kind = accelerator.distributed_type.name
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        return "deepspeed"
    return "single" if accelerator.num_processes == 1 else "ddp"


def prepare_for_sharding(accelerator, objective, batch_size: int, max_grad_norm: float) -> None:
    """What FSDP and DeepSpeed need to know about the objective before ``accelerator.prepare``.

    FSDP: the objective wraps the model, so it has no ``_no_split_modules`` of its own; they are
    copied from the language model, else FSDP would shard the whole model as one unit (all
    weights gathered at once). DeepSpeed: see :func:`fill_deepspeed_config`."""
    from qihuang.train.objective import base_causal_lm

    model = getattr(objective, "model", None)
    lm = base_causal_lm(model) if model is not None else None
    blocks = getattr(lm, "_no_split_modules", None)
    if blocks and getattr(objective, "_no_split_modules", None) is None:
        objective._no_split_modules = list(blocks)
    if strategy(accelerator) == "deepspeed":
        hidden = getattr(getattr(lm, "config", None), "hidden_size", None)
        fill_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config, batch_size, max_grad_norm, hidden)


def fill_deepspeed_config(ds_config: dict[str, Any], batch_size: int, max_grad_norm: float,
                          hidden_size: int | None) -> dict[str, Any]:
    """Fill the ``"auto"`` values accelerate would take from a dataloader or ``model.config``.

    qihuang batches by itself and hands accelerate the objective (no dataloader, no
    ``.config``), so the per-GPU batch, the clipping norm and ZeRO-3's bucket sizes come from the
    training config and the language model here; accelerate still fills the rest (the global
    batch, gradient accumulation, bf16/fp16)."""
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = batch_size
    if ds_config.get("gradient_clipping", "auto") == "auto":
        ds_config["gradient_clipping"] = max_grad_norm
    zero = ds_config.get("zero_optimization", {})
    if hidden_size:
        for key, value in (("reduce_bucket_size", hidden_size * hidden_size),
                           ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
                           ("stage3_param_persistence_threshold", 10 * hidden_size)):
            if zero.get(key) == "auto":
                zero[key] = value
    return ds_config


def full_state_dict(accelerator, prepared) -> dict[str, Any] | None:
    """The language model's full weights for ``save_pretrained`` under a sharded strategy
    (gathered on the main process; every process must call this), else ``None``.

    Under FSDP2 a PEFT model gathers only its trainable weights (PEFT saves only the adapter
    anyway): the main process never holds a full copy of the frozen base."""
    kind = strategy(accelerator)
    if kind not in SHARDED:
        return None
    if kind == "fsdp" and accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        adapter_only = hasattr(getattr(accelerator.unwrap_model(prepared), "model", None), "peft_config")
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=adapter_only)
        full = get_model_state_dict(prepared, options=options)
    else:
        full = accelerator.get_state_dict(prepared)
    return {k.removeprefix("model."): v for k, v in full.items()} if full else None
