"""The checkpoint format (qihuang.train.checkpoint) in one process: what a checkpoint holds,
full fine-tuning with tied weights resumes exactly, and checkpoints that cannot resume this run
fail with a clear error. (2-process FSDP, resumed under FSDP and in one process: test_fsdp_cpu.py.)"""

from __future__ import annotations

import json
import shutil

import pytest

from qihuang.errors import ConfigError
from qihuang.train import run
from test_train import CrashAt, _cfg


@pytest.fixture
def dataset(tmp_path):
    from test_train import write_alpaca

    return write_alpaca(tmp_path / "data", n_train=12, n_dev=3)


def _stored(ckpt) -> dict:
    import torch.distributed.checkpoint as dcp

    return dcp.FileSystemReader(str(ckpt / "weights")).read_metadata().state_dict_metadata


def test_a_lora_checkpoint_holds_the_adapter_and_its_optimizer_only(tiny_llama, dataset, tmp_path):
    run(_cfg(tiny_llama, dataset, tmp_path / "run", max_steps=2, save_steps=1, batch_size=3), progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "step-1"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json", "rng_0.pt", "scheduler.pt",
                                                      "trainer_state.json", "weights"]
    assert json.loads((ckpt / "checkpoint.json").read_text()) == {
        "format": "qihuang-checkpoint/1", "step": 1, "engine": "dcp", "strategy": "single", "world_size": 1}
    stored = _stored(ckpt)
    weights = [k for k in stored if k.startswith("model.")]
    # 2 layers x 7 linear layers x (A, B); the tied lm_head / embeddings are frozen and not stored
    assert len(weights) == 28 and all("lora_" in k for k in weights)
    assert {k.rsplit(".", 1)[-1] for k in stored if k.startswith("optim.state.")} == {"exp_avg", "exp_avg_sq", "step"}
    assert json.loads((ckpt / "trainer_state.json").read_text())["step"] == 1
    assert not list(ckpt.parent.glob(".tmp-*"))  # written aside, then renamed


def test_full_finetuning_with_tied_weights_resumes_exactly(tiny_qwen2, dataset, tmp_path):
    common = dict(finetuning="full", max_steps=4, save_steps=2, batch_size=3, learning_rate=1e-3,
                  eval_at_start=False)
    full = run(_cfg(tiny_qwen2, dataset, tmp_path / "a", **common), progress=False).metrics
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_qwen2, dataset, tmp_path / "b", **common), callbacks=[CrashAt(3)], progress=False)
    assert "model.model.model.embed_tokens.weight" in _stored(tmp_path / "b" / "checkpoints" / "step-2")
    resumed = run(_cfg(tiny_qwen2, dataset, tmp_path / "b", resume=True, **common), progress=False).metrics
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    for got, want in zip(resumed["history"], full["history"]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert resumed["dev_loss"] == pytest.approx(full["dev_loss"], rel=1e-6)


def _interrupted(model, dataset, out, **kw):
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(model, dataset, out, max_steps=4, save_steps=2, batch_size=3, **kw), callbacks=[CrashAt(3)],
            progress=False)
    return out / "checkpoints" / "step-2"


def test_a_checkpoint_of_another_configuration_is_refused(tiny_llama, dataset, tmp_path):
    _interrupted(tiny_llama, dataset, tmp_path / "run", lora_rank=4)
    with pytest.raises(ConfigError, match=r"step-2 does not match this model/finetuning \(other shapes"):
        run(_cfg(tiny_llama, dataset, tmp_path / "run", max_steps=4, batch_size=3, lora_rank=8, resume=True),
            progress=False)
    with pytest.raises(ConfigError, match=r"step-2 does not match this model/finetuning \(no "):
        run(_cfg(tiny_llama, dataset, tmp_path / "run", max_steps=4, batch_size=3, lora_rank=4, resume=True,
                 lora_target="q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,k_proj,lm_head"), progress=False)


def test_old_and_deepspeed_checkpoints_are_refused_clearly(tiny_llama, dataset, tmp_path):
    ckpt = _interrupted(tiny_llama, dataset, tmp_path / "run")
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**manifest, "engine": "deepspeed", "strategy": "deepspeed"}))
    resume = _cfg(tiny_llama, dataset, tmp_path / "run", max_steps=4, batch_size=3, resume=True)
    with pytest.raises(ConfigError, match="written under deepspeed and resumes only under DeepSpeed"):
        run(resume, progress=False)
    (ckpt / "checkpoint.json").unlink()
    with pytest.raises(ConfigError, match="written by an earlier qihuang version"):
        run(resume, progress=False)
    shutil.rmtree(ckpt)
    (ckpt.parent / ".tmp-step-2").mkdir()  # an interrupted save is not a checkpoint
    assert run(resume, progress=False).metrics["steps"] == 4
