"""``accelerate launch tests/train_worker.py CONFIG.json [KILL_AT_STEP]``: train as ``qihuang train``
does, optionally killed with SIGKILL by every process right after optimizer step KILL_AT_STEP, as a
crashed or pre-empted job is (no cleanup, no final save). Used by tests/test_fsdp_cpu.py."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from qihuang.train import run
from qihuang.train.callbacks import Callback


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    config = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    run(config, callbacks=[KillAt(kill_at)] if kill_at else [], progress=False)
