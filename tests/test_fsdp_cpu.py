"""FSDP without a GPU: ``accelerate launch`` with examples/accelerate/fsdp_cpu.yaml (FSDP2, full
sharding, 2 CPU processes over gloo) on a tiny random Llama with LoRA.

One single-process run is the reference. The FSDP run is killed (SIGKILL, every process) after
step 5, past its step-4 checkpoint, and resumed with ``qihuang train --resume`` to step 6; a copy
of the killed run is resumed in one process instead. Both give the reference's loss at every step
(the FSDP steps 1-5 are uninterrupted FSDP training, so this is also FSDP == one process), and the
FSDP output is the reference's adapter, which ``export`` merges and ``infer`` answers with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train import write_alpaca
from test_train_ddp import _free_port, launch_env

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
# dtype pinned to fp32: with "auto", a CPU with native bf16 gets a bf16 frozen base
# (train.fastlora.frozen_base_dtype), whose rounding differs between a sharded and a single-process run by
# more than the 1e-6 this test holds the two to (seen: 3.6e-6 relative at step 4 on an AMD EPYC with avx512_bf16)
COMMON = {"max_steps": 6, "save_steps": 2, "batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
          "lora_dropout": 0.0, "cutoff_len": 128, "eval_at_start": False, "dtype": "float32"}
pytestmark = pytest.mark.slow


def _launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "examples/accelerate/fsdp_cpu.yaml"),
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=launch_env(), cwd=cwd)


def _losses(metrics: dict) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in metrics["history"]]


def _assert_same_run(got: dict, ref: dict) -> None:
    assert [s for s, _ in _losses(got)] == [s for s, _ in _losses(ref)] == list(range(1, 7))
    for (step, loss), (_, want) in zip(_losses(got), _losses(ref)):
        assert loss == pytest.approx(want, rel=1e-6), f"step {step}"
    assert got["dev_loss"] == pytest.approx(ref["dev_loss"], rel=1e-6)


def _assert_sharded(ckpt: Path) -> None:
    import torch.distributed.checkpoint as dcp

    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    assert manifest["strategy"] == "fsdp" and manifest["world_size"] == 2 and manifest["engine"] == "dcp"
    assert sorted(p.name for p in (ckpt / "weights").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = dcp.FileSystemReader(str(ckpt / "weights")).read_metadata().state_dict_metadata
    lora_a = [k for k in meta if k.startswith("model.") and "lora_A" in k]
    assert lora_a and all(len(meta[k].chunks) == 2 for k in lora_a)  # each process wrote half of each
    assert not any("lora" not in k for k in meta if k.startswith("model."))  # frozen base weights not stored
    assert any(k.startswith("optim.state.") and k.endswith("exp_avg") for k in meta)


def test_fsdp_cpu_matches_one_process_and_resumes(tiny_llama, tmp_path, capsys):
    from safetensors.torch import load_file

    from qihuang.cli import main
    from qihuang.train import run

    data = write_alpaca(tmp_path / "data", n_train=16, n_dev=4)
    base = {"model": str(tiny_llama), "dataset": str(data), **COMMON}
    # one process, 2 micro-batches per step = the 2 processes' batches of each FSDP step
    ref = run({**base, "output": str(tmp_path / "ref"), "grad_accum": 2, "num_threads": 1}, progress=False).metrics

    fsdp = tmp_path / "fsdp"
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump({**base, "output": str(fsdp)}))
    train = ["--config", str(tmp_path / "fsdp.yaml")]
    killed = _launch([str(ROOT / "tests/train_worker.py"), "--kill-at-step", "5", *train], tmp_path)
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert not (fsdp / "metrics.json").exists()
    assert sorted(p.name for p in (fsdp / "checkpoints").iterdir()) == ["step-2", "step-4"]
    _assert_sharded(fsdp / "checkpoints" / "step-4")
    shutil.copytree(fsdp, tmp_path / "single")

    resumed = _launch(["-m", "qihuang.cli", "train", *train, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step 4 of 6, written under fsdp" in resumed.stdout and resumed.stdout.count("trained 6 steps") == 1
    metrics = json.loads((fsdp / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 6
    _assert_same_run(metrics, ref)

    # the same checkpoint resumes in one process (2 processes' data position mapped onto 1)
    single = run({**base, "output": str(tmp_path / "single"), "grad_accum": 2, "num_threads": 1, "resume": True},
                 progress=False).metrics
    assert single["num_processes"] == 1
    _assert_same_run(single, ref)

    # the output: the gathered adapter is the reference's; export merges it, infer answers with both
    got, want = load_file(fsdp / "adapter_model.safetensors"), load_file(tmp_path / "ref/adapter_model.safetensors")
    assert got.keys() == want.keys() and all(got[k].allclose(want[k], rtol=1e-4, atol=1e-6) for k in want)
    assert main(["export", "--adapter", str(fsdp), "--out", str(tmp_path / "merged")]) == 0
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"instruction": q}, ensure_ascii=False) + "\n"
                                 for q in ("偏头痛的症状有哪些？", "感冒应该吃什么药？")), encoding="utf-8")
    answers = {}
    for name, model in (("merged", ["--model", str(tmp_path / "merged")]), ("adapter", ["--adapter", str(fsdp)])):
        out = tmp_path / f"{name}.jsonl"
        # fp32: in bf16 (auto on CPUs with native bf16) merged and unmerged weights round differently
        assert main(["infer", "--input", str(questions), "--output", str(out), *model, "--no-grounded",
                     "--max-new-tokens", "8", "--batch-size", "2", "--dtype", "float32", "--quiet"]) == 0
        answers[name] = [json.loads(line)["prediction"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(answers["merged"]) == 2 and answers["merged"] == answers["adapter"]
    assert "2 answered" in capsys.readouterr().out
