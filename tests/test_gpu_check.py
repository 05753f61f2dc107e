"""scripts/gpu_check.sh without a GPU: shellcheck-clean, every command of its dry run parses
with the real option parsers (qihuang's, accelerate's configs, TrainConfig), its fixture builds,
and a real run on a machine without a GPU skips each check with its reason."""

from __future__ import annotations

import py_compile
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_train_ddp import launch_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CHECKS = ["qlora-sft", "deepspeed-zero3", "fsdp-2gpu", "vllm-serve"]


def _script(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**launch_env(), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args, str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


def test_gpu_check_is_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _check_accelerate_config(argv: list[str]) -> None:
    import json

    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / argv[argv.index("--config_file") + 1]
    config = load_config_from_file(str(path))
    if config.distributed_type.name == "DEEPSPEED":
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]).is_file()
        json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
    assert int(argv[argv.index("--num_processes") + 1]) == 2


def _check_qihuang(argv: list[str]) -> str:
    """Parse what the command hands qihuang; returns the subcommand."""
    from train_worker import train_config

    from qihuang.cli import build_parser

    if "tests/train_worker.py" in argv:
        rest = argv[argv.index("tests/train_worker.py") + 1:]
        assert rest[0] == "--kill-at-step" and int(rest[1]) > 0
        train_config(rest[2:])  # the worker takes exactly qihuang train's options
        return "train"
    rest = argv[argv.index("qihuang.cli") + 1:]
    build_parser().parse_args(rest)  # exits (SystemExit) on an unknown option or value
    if rest[0] == "train":
        train_config(rest[1:])
    return rest[0]


def test_every_dry_run_command_parses(tmp_path):
    proc = _script(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith("DRY ")] == CHECKS
    commands = [shlex.split(ln)[1:] for ln in proc.stdout.splitlines() if ln.startswith("CMD ")]
    seen = []
    for argv in commands:
        assert argv[0] == sys.executable
        if "accelerate.commands.launch" in argv:
            _check_accelerate_config(argv)
        if "qihuang.cli" in argv or "tests/train_worker.py" in argv:
            seen.append(_check_qihuang(argv))
            if "tests/train_worker.py" in argv:
                assert (ROOT / "tests/train_worker.py").is_file()
        else:  # the fixture script and the two helpers the script writes into its work dir
            script = Path(argv[1]) if Path(argv[1]).is_absolute() else ROOT / argv[1]
            py_compile.compile(str(script), cfile=str(tmp_path / "compiled.pyc"), doraise=True)
    assert seen == ["train"] * 6 + ["export", "serve"]
    joined = [" ".join(c) for c in commands]
    assert any("--finetuning qlora" in c for c in joined)
    assert any("deepspeed_zero3.yaml --num_processes 2" in c for c in joined)
    assert any("serve --engine vllm" in c for c in joined)
    assert sum("--resume" in c for c in joined) == 3


def test_fixture_builds_a_model_vllm_can_take(tmp_path):
    import importlib.util

    from transformers import AutoConfig

    spec = importlib.util.spec_from_file_location("gpu_check_fixture", ROOT / "scripts/gpu_check_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    model = fixture.build_model(tmp_path / "model")
    config = AutoConfig.from_pretrained(model)
    assert config.hidden_size // config.num_attention_heads == 64
    data = fixture.build_data(tmp_path / "data")
    assert len((data / "train.jsonl").read_text(encoding="utf-8").splitlines()) == 64


def test_without_a_gpu_every_check_is_skipped(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: run scripts/gpu_check.sh itself")
    proc = _script(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {ln.split()[1]: ln for ln in proc.stdout.splitlines() if ln.startswith("SKIP ")}
    assert list(lines) == CHECKS and all("GPU" in ln for ln in lines.values())
    assert "0 passed, 0 failed, 4 skipped" in proc.stdout
    assert (tmp_path / "work/fixture/model/config.json").is_file()
