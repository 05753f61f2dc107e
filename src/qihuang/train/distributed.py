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
    if plugin.fsdp_version != 2:
        raise ConfigError("FSDP on CPU needs fsdp_version: 2 in the accelerate config (FSDP1 has no gloo "
                          "support for its collectives); see examples/accelerate/fsdp_cpu.yaml")
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


def prepare_for_sharding(objective) -> None:
    """Let FSDP's transformer-based wrap policy see the language model's block classes.

    The objective wraps the model, so it has no ``_no_split_modules`` of its own; without them
    FSDP would shard the whole model as one unit (all weights gathered at once)."""
    from qihuang.train.objective import base_causal_lm

    model = getattr(objective, "model", None)
    blocks = getattr(base_causal_lm(model), "_no_split_modules", None) if model is not None else None
    if blocks and getattr(objective, "_no_split_modules", None) is None:
        objective._no_split_modules = list(blocks)


def full_state_dict(accelerator, prepared) -> dict[str, Any] | None:
    """The language model's full weights for ``save_pretrained`` under a sharded strategy
    (gathered on the main process; every process must call this), else ``None``."""
    if strategy(accelerator) not in SHARDED:
        return None
    full = accelerator.get_state_dict(prepared)
    return {k.removeprefix("model."): v for k, v in full.items()} if full else None
