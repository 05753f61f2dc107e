"""Training callbacks: progress bar, metrics file and loss plot.

A callback overrides any of the ``on_*`` hooks; the loop calls them on the main process
only (``on_step_end`` on every process, so a test can stop a run from any rank).
Raising from a hook aborts the run (the latest checkpoint stays resumable).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


class Callback:
    """Base class: every hook is a no-op."""

    def on_train_begin(self, state, total_steps: int) -> None: ...
    def on_log(self, state, logs: dict[str, Any]) -> None: ...
    def on_step_end(self, state) -> None: ...
    def on_evaluate(self, state, metrics: dict[str, Any]) -> None: ...
    def on_save(self, state, checkpoint: Path) -> None: ...
    def on_train_end(self, state) -> None: ...


class ProgressCallback(Callback):
    """A tqdm bar over optimizer steps showing loss, tokens/s and (by tqdm) the ETA."""

    def __init__(self, desc: str = "train"):
        self.desc, self.bar = desc, None

    def on_train_begin(self, state, total_steps):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=state.step, desc=self.desc, unit="step", dynamic_ncols=True)

    def on_log(self, state, logs):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}",
                                 tok_s=f"{logs['tokens_per_s']:.0f}", refresh=False)

    def on_step_end(self, state):
        if self.bar is not None:
            self.bar.update(state.step - self.bar.n)

    def on_evaluate(self, state, metrics):
        if self.bar is not None:
            self.bar.write(f"step {state.step}: dev_loss {metrics['dev_loss']:.4f}")

    def on_train_end(self, state):
        if self.bar is not None:
            self.bar.close()


def plot_losses(history: list[dict], eval_history: list[dict], path: Path) -> Path:
    """``loss.png``: train loss per logged step and dev loss per evaluation (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if history:
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label="train", marker=".")
    if eval_history:
        ax.plot([e["step"] for e in eval_history], [e["dev_loss"] for e in eval_history], label="dev", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("qihuang training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".loss.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path
