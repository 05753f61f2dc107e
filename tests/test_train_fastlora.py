"""The fused LoRA op: same outputs and gradients as PEFT's modules, exact dropout rate, fallbacks, bf16 base."""

from __future__ import annotations

import pytest
import torch

from qihuang.train.fastlora import LoRALinearFn, cast_frozen_base, drop_index, frozen_base_dtype, fuse_lora, fuse_model


@pytest.mark.parametrize("p,bias", [(0.0, False), (0.3, True)])
def test_fused_op_matches_the_unfused_formula(p, bias):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, requires_grad=True)
    weight, b = torch.randn(6, 8), (torch.randn(6, requires_grad=True) if bias else None)
    lora_a, lora_b = torch.randn(4, 8, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    torch.manual_seed(1)
    out = LoRALinearFn.apply(x, weight, b, lora_a, lora_b, 0.7, p)
    grad = torch.randn_like(out)
    inputs = (x, lora_a, lora_b) + ((b,) if bias else ())
    fused = torch.autograd.grad(out, inputs, grad)
    torch.manual_seed(1)  # the same draw: the mask the op used
    keep = torch.ones(3 * 5 * 8)
    keep[drop_index(3 * 5 * 8, p, x.device)] = 0.0
    ref = x @ weight.T + (b if bias else 0) + 0.7 * ((x * keep.view(3, 5, 8) / (1 - p)) @ lora_a.T) @ lora_b.T
    expected = torch.autograd.grad(ref, inputs, grad)
    torch.testing.assert_close(out, ref)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want)


def test_drop_index_is_an_exact_bernoulli_pattern():
    torch.manual_seed(3)
    n, p = 1_000_003, 0.05
    drop = drop_index(n, p, torch.device("cpu"))
    assert drop.dtype == torch.long and int(drop.min()) >= 0 and int(drop.max()) < n
    assert bool((drop[1:] > drop[:-1]).all())  # sorted, no repeats
    assert drop.numel() / n == pytest.approx(p, abs=4 * (p * (1 - p) / n) ** 0.5)
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[drop] = True
    both = float((dropped[1:] & dropped[:-1]).float().mean())  # neighbours independent: p^2
    assert both == pytest.approx(p * p, abs=4 * (p * p / n) ** 0.5)
    torch.manual_seed(3)
    assert torch.equal(drop, drop_index(n, p, torch.device("cpu")))
    assert drop_index(n, 0.0, torch.device("cpu")).numel() == 0 and drop_index(0, p, torch.device("cpu")).numel() == 0


def _peft_pair(tiny_llama, dropout: float):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                                 target_modules="all-linear"))
        for name, param in model.named_parameters():  # non-zero B so the adapter matters
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.02)
        models.append(model)
    models[1].load_state_dict(models[0].state_dict())
    return models


def test_fused_model_matches_peft_forward_and_gradients(tiny_llama):
    plain, fused = _peft_pair(tiny_llama, dropout=0.0)
    assert fuse_lora(fused) == 2 * 7  # every linear layer of both decoder layers
    ids = torch.randint(3, 500, (2, 9))
    grads = []
    for model in (plain, fused):
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
    assert plain.state_dict().keys() == fused.state_dict().keys()  # the adapter saves as before


def test_fused_dropout_is_active_in_training_only(tiny_llama):
    plain, fused = _peft_pair(tiny_llama, dropout=0.5)
    fuse_lora(fused)
    ids = torch.randint(3, 500, (1, 9))
    with torch.no_grad():
        plain.eval(), fused.eval()
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
        fused.train()
        torch.manual_seed(5)
        first = fused(input_ids=ids).logits
        torch.manual_seed(6)
        assert not torch.allclose(first, fused(input_ids=ids).logits)  # a fresh mask per call
        with fused.disable_adapter():  # falls back to PEFT's forward: the base model
            disabled = fused(input_ids=ids).logits
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        torch.testing.assert_close(disabled, AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits)


def _lora_grads(model, ids):
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_frozen_base_keeps_fp32_lora_and_close_gradients(tiny_llama):
    fp32, bf16 = _peft_pair(tiny_llama, dropout=0.0)
    fuse_model(fp32), fuse_model(bf16)
    assert cast_frozen_base(bf16, torch.bfloat16) == 2 * 7
    lora = {n: p for n, p in bf16.named_parameters() if p.requires_grad}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())  # adapter + optimizer state stay fp32
    assert bf16.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    ids = torch.randint(3, 500, (2, 9))
    loss32, grads32 = _lora_grads(fp32, ids)
    loss16, grads16 = _lora_grads(bf16, ids)
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    for name, want in grads32.items():
        got = grads16[name]
        assert got.dtype == torch.float32
        assert float((got - want).norm() / want.norm()) < 0.05, name
    with torch.no_grad(), bf16.disable_adapter():  # PEFT's own path on a bf16 base still runs
        assert bf16(input_ids=ids).logits.dtype == torch.float32


def test_frozen_base_dtype_follows_the_cpu_policy(monkeypatch):
    import qihuang.models.load as load
    from qihuang.config import build_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = build_config({"dataset": "x"})
    for faster, want in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(load, "bf16_training_faster", lambda faster=faster: faster)
        assert frozen_base_dtype(config) == want
    monkeypatch.setattr(load, "bf16_training_faster", lambda: True)
    assert frozen_base_dtype(build_config({"dataset": "x", "dtype": "float32"})) is None  # asked for fp32
    assert frozen_base_dtype(build_config({"dataset": "x", "fused_lora": False})) is None
    monkeypatch.setattr(load, "bf16_training_faster", lambda: False)
    assert frozen_base_dtype(build_config({"dataset": "x", "mixed_precision": "bf16"})) == torch.bfloat16


def test_bf16_is_chosen_for_training_only_where_it_measures_faster(monkeypatch, tmp_path):
    """The avx512_bf16 flag is not enough: an Intel Xeon with it and no AMX runs bf16 products at about half
    the fp32 speed. The measured ratio decides, is remembered per CPU and thread count, and a CPU without
    native bf16 is never measured."""
    import json

    import qihuang.models.load as load

    monkeypatch.setenv("QIHUANG_HOME", str(tmp_path))
    monkeypatch.setattr(load, "_bf16_faster", {})
    timed = []

    def gemm(dtype, times):
        timed.append(dtype)
        return times[dtype]

    monkeypatch.setattr(load, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(load, "_gemm_seconds", lambda dtype: gemm(dtype, {}))
    assert load.bf16_training_faster() is False and timed == []  # emulated bf16: not even measured
    monkeypatch.setattr(load, "cpu_supports_bf16", lambda: True)
    slow = {torch.float32: 0.010, torch.bfloat16: 0.018}
    monkeypatch.setattr(load, "_gemm_seconds", lambda dtype: gemm(dtype, slow))
    assert load.bf16_training_faster() is False and timed == [torch.float32, torch.bfloat16]
    (entry,) = json.loads((tmp_path / "cache" / "cpu_bf16.json").read_text(encoding="utf-8")).values()
    assert entry["speedup"] == pytest.approx(0.556, abs=1e-3)
    load._bf16_faster.clear()
    assert load.bf16_training_faster() is False and len(timed) == 2  # read back, not measured again
    (tmp_path / "cache" / "cpu_bf16.json").unlink()
    load._bf16_faster.clear()
    fast = {torch.float32: 0.020, torch.bfloat16: 0.009}
    monkeypatch.setattr(load, "_gemm_seconds", lambda dtype: gemm(dtype, fast))
    assert load.bf16_training_faster() is True
    load._bf16_faster.clear()
    (tmp_path / "cache" / "cpu_bf16.json").write_text("{not json", encoding="utf-8")  # a damaged file is remeasured
    assert load.bf16_training_faster() is True and len(timed) == 6
    monkeypatch.setattr(load, "_bf16_faster", {})
    monkeypatch.setattr(load, "_gemm_seconds", lambda dtype: gemm(dtype, {torch.float32: 0.010, torch.bfloat16: 0.0095}))
    (tmp_path / "cache" / "cpu_bf16.json").unlink()
    assert load.bf16_training_faster() is False  # 5 % faster is within noise: fp32 stays
    monkeypatch.setattr(load, "_gemm_seconds", lambda dtype: gemm(dtype, fast))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an instruction-set limit is another machine: measured anew
    assert load.bf16_training_faster() is True
    assert len(json.loads((tmp_path / "cache" / "cpu_bf16.json").read_text(encoding="utf-8"))) == 2


def test_gemm_timing_is_real():
    import qihuang.models.load as load

    assert 0 < load._gemm_seconds(torch.float32, repeat=1) < 5
