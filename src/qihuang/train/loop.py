"""The training loop shared by every stage: accelerate-based, resumable, token-weighted.

Batches come from a deterministic plan (``seed``, ``epoch``) sharded over processes, so a
resumed run skips exactly what it trained before; checkpoints (:mod:`qihuang.train.checkpoint`,
one format for every strategy) hold only the trainable weights, optimizer, scheduler, RNG
states and the loop state.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from qihuang.config import TrainConfig
from qihuang.data.collate import batch_plan, shard_batches
from qihuang.errors import ConfigError
from qihuang.records import IGNORE_INDEX
from qihuang.train.callbacks import Callback
from qihuang.train.checkpoint import checkpoints, load_checkpoint, save_checkpoint


@dataclass
class StageData:
    """What a stage hands the loop: features, how to batch them, and each one's loss weight."""

    train: list[dict]
    dev: list[dict]
    collate: Callable[[list[dict]], dict]
    length: Callable[[dict], int] = lambda f: len(f["input_ids"])
    weight: Callable[[dict], int] = lambda f: sum(1 for lab in f["labels"][1:] if lab != IGNORE_INDEX)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of the current epoch already trained (per process)
    tokens: int = 0  # non-padding input tokens trained, all processes
    loss_items: int = 0  # what the loss averages over (sft/pt: labelled tokens; rm/dpo: pairs), all processes
    train_time_s: float = 0.0
    total_steps: int = 0
    history: list[dict] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)
    dev_loss_initial: float | None = None
    stopped_early: str | None = None  # why training ended before total_steps (e.g. the time budget)


class Loop:
    def __init__(self, config: TrainConfig, objective, data: StageData, accelerator, output_dir: Path,
                 callbacks: list[Callback] | None = None):
        self.config, self.data, self.acc = config, data, accelerator
        self.output_dir, self.ckpt_dir = output_dir, output_dir / "checkpoints"
        self.callbacks = callbacks or []
        self.lengths = [data.length(f) for f in data.train]
        self.ga = config.grad_accum
        self.steps_per_epoch = len(self._plan(0)) // self.ga
        self.state = TrainState(total_steps=config.max_steps or math.ceil(config.num_epochs * self.steps_per_epoch))
        params = [p for p in objective.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("nothing to train: the model has no trainable parameters")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                       num_warmup_steps=int(config.warmup_ratio * self.state.total_steps),
                                       num_training_steps=self.state.total_steps)
        self.objective, self.optimizer = accelerator.prepare(objective, optimizer)

    # ---- batches ------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[list[int]]:
        cfg, world = self.config, self.acc.num_processes
        batches = batch_plan(self.lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
        mine = shard_batches(batches, self.acc.process_index, world)
        usable = len(mine) - len(mine) % self.ga
        if usable == 0:
            raise ConfigError(f"field 'dataset': {len(self.data.train)} examples are too few for batch_size "
                              f"{cfg.batch_size} x grad_accum {self.ga} x {world} process(es)")
        return mine[:usable]

    def _batch(self, features: list[dict]) -> dict:
        return {k: v.to(self.acc.device) for k, v in self.data.collate(features).items()}

    def _broadcast(self, event: str, *args) -> None:
        if self.acc.is_main_process or event == "on_step_end":
            for cb in self.callbacks:
                getattr(cb, event)(self.state, *args)

    # ---- training -----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> TrainState:
        if resume:
            self._load_latest()
        state, cfg = self.state, self.config
        if state.step == 0 and cfg.eval_at_start and self.data.dev:
            state.dev_loss_initial = self.evaluate()["dev_loss"]
        self._broadcast("on_train_begin", state.total_steps)
        self.objective.train()
        window_stats = torch.zeros(3, dtype=torch.float64)  # loss_sum, count, tokens
        window_start = time.perf_counter()
        deadline = window_start + cfg.max_minutes * 60 - state.train_time_s if cfg.max_minutes else None
        while state.step < state.total_steps and not state.stopped_early:
            batches = self._plan(state.epoch)
            for k in range(state.micro_in_epoch, len(batches), self.ga):
                window_stats += self._train_step(batches[k:k + self.ga])
                state.step, state.micro_in_epoch = state.step + 1, k + self.ga
                if deadline is not None and self._out_of_time(deadline):
                    state.stopped_early = f"time budget of {cfg.max_minutes:g} min reached"
                if (state.step % cfg.logging_steps == 0 or state.step == state.total_steps
                        or state.stopped_early):
                    self._log(window_stats, time.perf_counter() - window_start)
                    window_stats.zero_()
                    window_start = time.perf_counter()
                if state.step % cfg.eval_every == 0 and state.step < state.total_steps and self.data.dev:
                    self.evaluate()
                if state.step % cfg.save_steps == 0 and state.step < state.total_steps:
                    self.save_checkpoint()
                self._broadcast("on_step_end")
                if state.step >= state.total_steps or state.stopped_early:
                    break
            else:
                state.epoch, state.micro_in_epoch = state.epoch + 1, 0
        if self.data.dev:
            self.evaluate()
        self._broadcast("on_train_end")
        return state

    def _out_of_time(self, deadline: float) -> bool:
        """Whether the time budget is spent (decided on the main process, so all ranks stop together)."""
        flag = torch.tensor([float(time.perf_counter() >= deadline)], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="max").item()) if self.acc.num_processes > 1 else bool(flag.item())

    def _step_count(self, local: int) -> float:
        """What this process divides its summed loss by: the step's loss items over all processes,
        over the number of processes. DDP, FSDP and DeepSpeed average gradients over processes, so
        every item then weighs the same as in one process running all the micro-batches."""
        if self.acc.num_processes == 1:
            return max(1, local)
        total = self.acc.reduce(torch.tensor([float(local)], device=self.acc.device), reduction="sum")
        return max(1.0, float(total.item())) / self.acc.num_processes

    def _train_step(self, window: list[list[int]]) -> torch.Tensor:
        feats = [[self.data.train[i] for i in batch] for batch in window]
        count = self._step_count(sum(self.data.weight(f) for batch in feats for f in batch))
        stats = torch.zeros(3, dtype=torch.float64)
        for batch_feats in feats:
            batch = self._batch(batch_feats)
            with self.acc.accumulate(self.objective):
                out = self.objective(**batch)
                # accelerate divides by grad_accum; the step's loss is sum / count over the window
                self.acc.backward(out["loss_sum"] * (self.ga / count))
                if self.acc.sync_gradients:
                    self.acc.clip_grad_norm_(self.objective.parameters(), self.config.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            stats += torch.tensor([out["loss_sum"].item(), float(out["count"]),
                                   float(batch["attention_mask"].sum())], dtype=torch.float64)
        return stats

    def _log(self, stats: torch.Tensor, seconds: float) -> None:
        total = self.acc.reduce(stats.to(self.acc.device), reduction="sum").cpu()
        self.state.tokens += int(total[2])
        self.state.loss_items += int(total[1])
        self.state.train_time_s += seconds
        logs = {"step": self.state.step, "epoch": round(self.state.epoch + self.state.micro_in_epoch /
                                                         max(1, len(self._plan(self.state.epoch))), 3),
                "loss": float(total[0] / max(1.0, float(total[1]))),
                "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": float(total[2]) / max(seconds, 1e-9)}
        self.state.history.append(logs)
        self._broadcast("on_log", logs)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted dev loss over the whole dev set (all processes)."""
        self.objective.eval()
        dev = self.data.dev
        batches = batch_plan([self.data.length(f) for f in dev], self.config.eval_batch_size or
                             self.config.batch_size, 0, 0, group_by_length=True, shuffle=False)
        stats = torch.zeros(2, dtype=torch.float64)
        for batch in batches[self.acc.process_index::self.acc.num_processes]:
            out = self.objective(**self._batch([dev[i] for i in batch]))
            stats += torch.tensor([out["loss_sum"].item(), float(out["count"])], dtype=torch.float64)
        total = self.acc.reduce(stats.to(self.acc.device), reduction="sum").cpu()
        self.objective.train()
        metrics = {"step": self.state.step, "dev_loss": float(total[0] / max(1.0, float(total[1])))}
        self.state.eval_history.append(metrics)
        self._broadcast("on_evaluate", metrics)
        return metrics

    # ---- checkpoints (format: qihuang.train.checkpoint) ------------------------------------------
    def save_checkpoint(self) -> Path:
        final = save_checkpoint(self.acc, self.objective, self.optimizer, self.scheduler, asdict(self.state),
                                self.ckpt_dir, self.config.save_total_limit)
        self._broadcast("on_save", final)
        return final

    def _load_latest(self) -> None:
        found = checkpoints(self.ckpt_dir)
        if not found:
            if self.acc.is_main_process:
                print(f"no checkpoint in {self.ckpt_dir}: starting from scratch")
            return
        ckpt, total = found[-1], self.state.total_steps
        saved, manifest = load_checkpoint(self.acc, self.objective, self.optimizer, self.scheduler, ckpt)
        self.state = TrainState(**{**saved, "total_steps": total})
        world, note = self.acc.num_processes, ""
        if manifest["world_size"] != world:  # same examples seen: map the data position onto this plan
            seen = self.state.micro_in_epoch * manifest["world_size"]
            self.state.micro_in_epoch = seen // world - (seen // world) % self.ga
            note = f"; written by {manifest['world_size']} process(es), data position mapped to {world}"
        if self.acc.is_main_process:
            print(f"resuming from {ckpt} (step {self.state.step} of {total}, written under "
                  f"{manifest['strategy']}{note})")
