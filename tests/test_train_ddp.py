"""A 2-process CPU DDP (gloo) run through ``accelerate launch`` with the shipped config."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import write_alpaca

ROOT = Path(__file__).resolve().parents[1]


def launch_env() -> dict[str, str]:
    """The environment of an ``accelerate launch`` subprocess: one thread per process, and this
    checkout's qihuang (not another one installed in the environment)."""
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_ddp(tiny_llama, tmp_path):
    data = write_alpaca(tmp_path / "data", n_train=16, n_dev=4)
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "examples/accelerate/ddp_cpu.yaml"),
           "--main_process_port", str(_free_port()), "-m", "qihuang.cli", "train", "--model", str(tiny_llama),
           "--dataset", str(data), "--output", str(out), "--max-steps", "4", "--save-steps", "2",
           "--batch-size", "2", "--learning-rate", "5e-3", "--logging-steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=launch_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4
    assert metrics["dev_loss"] < metrics["dev_loss_initial"]
    ckpt = out / "checkpoints" / "step-2"
    assert (ckpt / "rng_0.pt").is_file() and (ckpt / "rng_1.pt").is_file()  # one RNG state per process
    assert json.loads((ckpt / "checkpoint.json").read_text())["strategy"] == "ddp"
    assert (out / "adapter_model.safetensors").is_file()
    assert proc.stdout.count("trained 4 steps") == 1  # only the main process reports
