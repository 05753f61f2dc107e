"""Training checkpoints: one format, written and resumed the same way under every strategy.

``<output>/checkpoints/step-N/``::

    checkpoint.json      format version, step, and the strategy + world size it was written under
    weights/             trainable parameters and optimizer state, keyed by parameter name, in
                         torch.distributed.checkpoint (DCP) form: .metadata + one __<rank>_0.distcp
                         file per process (under FSDP each process writes only its own shard)
    scheduler.pt         the learning-rate schedule
    rng_<rank>.pt        each process's Python and torch random states
    trainer_state.json   the loop's state (step, epoch, data position, loss history); written last

Single process, DDP and FSDP write the same files, and DCP reshards on load: a checkpoint
written by 2 FSDP processes resumes in one process (or 4), and the other way round. Only
trainable parameters are stored, so a LoRA checkpoint holds the adapter and its optimizer state,
not the base model. A checkpoint is written to ``.tmp-step-N`` and renamed when every process
has finished, so an interrupted save is never mistaken for a checkpoint.

DeepSpeed is the one exception inside this layout: ZeRO keeps its optimizer partitions in its
own engine, so under DeepSpeed ``weights/`` holds DeepSpeed's checkpoint (accelerate's
``save_state``) and resumes under DeepSpeed only; ``checkpoint.json`` says which ``engine`` wrote it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from qihuang.errors import ConfigError
from qihuang.train.distributed import strategy

FORMAT = "qihuang-checkpoint/1"
CKPT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"
MANIFEST = "checkpoint.json"
WEIGHTS = "weights"


def checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.name.startswith(CKPT_PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def _engine(accelerator) -> str:
    return "deepspeed" if strategy(accelerator) == "deepspeed" else "dcp"


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _state_dicts(accelerator, model, optimizer) -> tuple[dict, dict]:
    """Trainable weights and optimizer state, keyed by parameter name (sharded under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_sd, optim_sd = get_state_dict(model, _inner(optimizer), options=StateDictOptions(ignore_frozen_params=True))
    # ignore_frozen_params misses the second name of a tied weight (a frozen lm_head tied to the embeddings)
    plain = accelerator.unwrap_model(model).named_parameters(remove_duplicate=False)
    trainable = {name for name, param in plain if param.requires_grad}
    return {k: v for k, v in model_sd.items() if k in trainable}, optim_sd


def save_checkpoint(accelerator, model, optimizer, scheduler, state: dict[str, Any], ckpt_dir: Path,
                    keep: int) -> Path:
    """Write ``step-<state['step']>`` (every process must call this); keep the latest ``keep``."""
    step = state["step"]
    final, tmp = ckpt_dir / f"{CKPT_PREFIX}{step}", ckpt_dir / f".tmp-{CKPT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if _engine(accelerator) == "deepspeed":
        accelerator.save_state(str(tmp / WEIGHTS))
    else:
        import torch.distributed.checkpoint as dcp

        model_sd, optim_sd = _state_dicts(accelerator, model, optimizer)
        with _single_process_quiet():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / WEIGHTS),
                     no_dist=accelerator.num_processes == 1)
    torch.save(_rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        manifest = {"format": FORMAT, "step": step, "engine": _engine(accelerator),
                    "strategy": strategy(accelerator), "world_size": accelerator.num_processes}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)  # a stale one from a run that was resumed before it
        os.replace(tmp, final)
        for old in checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``ckpt``, with a clear error for other formats."""
    path = ckpt / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{ckpt}: no {MANIFEST}; this checkpoint was written by an earlier qihuang version "
                          "and cannot be resumed (start again with --overwrite)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{path}: field 'format': expected {FORMAT!r}, got {manifest.get('format')!r}")
    return manifest


def load_checkpoint(accelerator, model, optimizer, scheduler, ckpt: Path) -> tuple[dict, dict]:
    """Restore weights, optimizer, scheduler and this process's RNG from ``ckpt`` (every process
    must call this); returns the saved loop state and the manifest."""
    manifest = read_manifest(ckpt)
    engine = _engine(accelerator)
    if manifest["engine"] != engine:
        raise ConfigError(f"{ckpt} was written under {manifest['strategy']} and resumes only under DeepSpeed "
                          "(DeepSpeed's optimizer partitions are its own); launch with the same strategy")
    if engine == "deepspeed":
        accelerator.load_state(str(ckpt / WEIGHTS))
    else:
        _load_dcp(accelerator, model, optimizer, ckpt)
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rng_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():  # absent when resuming with more processes than wrote the checkpoint
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")), manifest


def _load_dcp(accelerator, model, optimizer, ckpt: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    # this run's layout: DCP loads into it, resharding what another world size wrote
    model_sd, optim_sd = _state_dicts(accelerator, model, optimizer)
    stored = dcp.FileSystemReader(str(ckpt / WEIGHTS)).read_metadata().state_dict_metadata
    missing = sorted(k for k in model_sd if f"model.{k}" not in stored)
    resized = sorted(k for k in model_sd if f"model.{k}" in stored
                     and tuple(getattr(stored[f"model.{k}"], "size", ())) != tuple(model_sd[k].shape))
    if missing or resized:
        what = f"no {missing[:3]}" if missing else f"other shapes for {resized[:3]}"
        raise ConfigError(f"{ckpt} does not match this model/finetuning ({what}); resume with the "
                          "configuration that wrote it")
    with _single_process_quiet():
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(ckpt / WEIGHTS),
                 no_dist=accelerator.num_processes == 1)
    set_state_dict(model, _inner(optimizer), model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(ignore_frozen_params=True, strict=False))


@contextmanager
def _single_process_quiet():
    """DCP warns on every single-process save/load that it assumes one process: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
