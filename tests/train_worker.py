"""``[accelerate launch] tests/train_worker.py --kill-at-step K TRAIN_OPTIONS...``: train as
``qihuang train TRAIN_OPTIONS...`` does (same options, parsed by its parser), but every process
kills itself with SIGKILL right after optimizer step K, as a crashed or pre-empted job dies (no
cleanup, no final save). Used by tests/test_fsdp_cpu.py and scripts/gpu_check.sh."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from qihuang.train.callbacks import Callback


class KillAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def train_config(options: list[str]):
    """The TrainConfig ``qihuang train OPTIONS`` would run."""
    from qihuang.cli import build_parser
    from qihuang.config import TrainConfig, load_config, parse_overrides

    args = build_parser().parse_args(["train", *options])
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.model_fields}
    values.update({k[3:]: v for k, v in vars(args).items() if k.startswith("lf_")})
    values.update(parse_overrides(getattr(args, "overrides", [])))
    return load_config(getattr(args, "config_file", None), values)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill-at-step", type=int, required=True)
    known, rest = parser.parse_known_args(sys.argv[1:])
    from qihuang.train import run

    run(train_config(rest), callbacks=[KillAt(known.kill_at_step)], progress=False)
