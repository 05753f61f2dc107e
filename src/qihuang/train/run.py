"""``qihuang.train.run(config)``: one workflow for every stage.

tokenizer -> template -> stage data -> model (+ LoRA) -> objective -> loop -> output dir.

A stage is the module ``qihuang.train.<stage>`` for each name in :data:`qihuang.config.STAGES` (the one
stage list), with ``prepare_data(config, tokenizer, template) ->
StageData`` and, optionally, ``load_model(config, tokenizer)`` (default:
:func:`qihuang.models.prepare.prepare_model`, which a stage's own calls with its options) and
``build_objective(model, config, tokenizer)`` to replace the shared defaults (e.g. a reward
head or a DPO reference model). Adding a stage is a new module plus its name in that list.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qihuang import __version__
from qihuang.config import STAGES, TrainConfig, build_config
from qihuang.errors import ConfigError
from qihuang.fileio import atomic_write_json
from qihuang.train.callbacks import Callback, ProgressCallback, plot_losses

if TYPE_CHECKING:  # the loop imports torch: loaded only when training starts
    from qihuang.train.loop import StageData, TrainState

CONFIG_FILE = "train_config.yaml"


@dataclass
class TrainResult:
    """Where the run wrote its output, and its metrics (also in ``metrics.json``)."""

    output_dir: Path
    metrics: dict[str, Any]
    state: TrainState


def stage_module(stage: str):
    """The module implementing ``stage`` (clear error if that stage is not available)."""
    if stage not in STAGES:
        raise ConfigError(f"field 'stage': unknown stage {stage!r}; choose one of {sorted(STAGES)}")
    module = f"qihuang.train.{stage}"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise ConfigError(f"field 'stage': stage {stage!r} is not available in this version") from None
        raise


def build_objective(model, config: TrainConfig, tokenizer):
    from qihuang.train.fastlora import cast_frozen_base, frozen_base_dtype
    from qihuang.train.objective import CausalLMObjective

    cast_frozen_base(model, frozen_base_dtype(config))  # bf16 frozen base where the CPU has native bf16
    return CausalLMObjective(model, fused_lora=config.fused_lora)


def _prepare_output(config: TrainConfig, accelerator) -> Path:
    out = config.output_dir
    occupied = out.exists() and any(out.iterdir())
    accelerator.wait_for_everyone()  # every process looks before the main one writes there
    if occupied and not (config.resume or config.overwrite):
        raise ConfigError(f"field 'output': {out} is not empty; pass --resume to continue it or --overwrite")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / CONFIG_FILE)
    return out


def run(config: TrainConfig | dict[str, Any], callbacks: list[Callback] | None = None,
        progress: bool = True) -> TrainResult:
    """Train according to ``config`` and write the output directory; returns its metrics."""
    if not isinstance(config, TrainConfig):
        config = build_config(dict(config))
    from qihuang.train.heap import keep_freed_memory

    keep_freed_memory()  # before the model is loaded: activations then reuse warm pages
    if config.num_threads is None:
        return _run(config, callbacks, progress)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _run(config, callbacks, progress)
    finally:
        torch.set_num_threads(previous)


def _run(config: TrainConfig, callbacks: list[Callback] | None, progress: bool) -> TrainResult:
    from accelerate.utils import set_seed

    from qihuang.data.prompts import get_template
    from qihuang.models.load import load_tokenizer
    from qihuang.models.lora import check_qlora_available
    from qihuang.models.prepare import prepare_model
    from qihuang.train.checkpoint import checkpoints
    from qihuang.train.distributed import full_state_dict, make_accelerator, prepare_for_sharding
    from qihuang.train.loop import Loop
    from qihuang.train.mix import mix_in

    stage = stage_module(config.stage)
    if config.finetuning == "qlora":
        check_qlora_available()
    accelerator = make_accelerator(config.grad_accum, config.mixed_precision)
    out = _prepare_output(config, accelerator)
    set_seed(config.seed)
    tokenizer = load_tokenizer(config.model, trust_remote_code=config.trust_remote_code)
    template = get_template(config.template)
    data: StageData = stage.prepare_data(config, tokenizer, template)
    mixed = mix_in(data, config, stage, tokenizer, template) if config.mix else []
    model = getattr(stage, "load_model", prepare_model)(config, tokenizer)
    objective = getattr(stage, "build_objective", build_objective)(model, config, tokenizer)
    prepare_for_sharding(accelerator, objective, config.batch_size, config.max_grad_norm)
    cbs = ([ProgressCallback(config.stage)] if progress else []) + list(callbacks or [])
    loop = Loop(config, objective, data, accelerator, out, cbs)
    state = loop.train(resume=config.resume and bool(checkpoints(out / "checkpoints")))
    metrics = {**_metrics(config, state, data, objective), "num_processes": accelerator.num_processes,
               **({"mix": mixed} if mixed else {})}
    state_dict = full_state_dict(accelerator, loop.objective)  # sharded weights gathered (all ranks)
    if accelerator.is_main_process:
        _write_output(out, config, accelerator.unwrap_model(loop.objective).model, tokenizer, template,
                      metrics, state, state_dict)
    accelerator.wait_for_everyone()
    return TrainResult(out, metrics, state)


def _metrics(config: TrainConfig, state: TrainState, data: StageData, objective) -> dict[str, Any]:
    from qihuang.models.lora import count_parameters

    trainable, total = count_parameters(objective)
    return {
        "stage": config.stage, "finetuning": config.finetuning, "steps": state.step,
        "epochs": state.epoch + (state.micro_in_epoch > 0),
        "train_loss": state.history[-1]["loss"] if state.history else None,
        "dev_loss": state.eval_history[-1]["dev_loss"] if state.eval_history else None,
        "dev_loss_initial": state.dev_loss_initial,
        "tokens": state.tokens, "train_time_s": round(state.train_time_s, 3), "stopped_early": state.stopped_early,
        "tokens_per_s": state.tokens / state.train_time_s if state.train_time_s else None,
        "loss_items": state.loss_items,
        "loss_items_per_s": state.loss_items / state.train_time_s if state.train_time_s else None,
        "trainable_params": trainable, "total_params": total, **data.info,
        "history": state.history, "eval_history": state.eval_history,
    }


def resolved_ref(ref: str) -> str:
    """A model reference as recorded in output metadata: local paths absolute, hub ids as given."""
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def _base_model_ref(config: TrainConfig) -> dict:
    """``base_model`` (what the output loads on) for the metadata; a stage may say otherwise
    (``output_meta``: DPO continuing an SFT adapter records the adapter's own base)."""
    hook = getattr(stage_module(config.stage), "output_meta", None)
    return hook(config) if hook is not None else {"base_model": resolved_ref(config.model)}


def _write_output(out: Path, config: TrainConfig, model, tokenizer, template, metrics, state,
                  state_dict: dict | None) -> None:
    from qihuang.data.prompts import save_template
    from qihuang.models.load import META_FILE

    model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out)
    save_template(template, out)
    atomic_write_json(out / META_FILE, {
        **_base_model_ref(config), "stage": config.stage, "finetuning": config.finetuning,
        "template": template.name, "grounded": config.grounded, "qihuang_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_json(out / "metrics.json", metrics)
    plot_losses(state.history, state.eval_history, out / "loss.png")
