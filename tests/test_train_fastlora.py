"""The fused LoRA op: same outputs and gradients as PEFT's modules, exact dropout rate, fallbacks."""

from __future__ import annotations

import pytest
import torch

from qihuang.train.fastlora import LoRALinearFn, drop_rate, fuse_lora, keep_mask


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
    keep = keep_mask(torch.Size([15, 8]), p, x.device).view(3, 5, 8) if p else torch.ones(3, 5, 8, dtype=torch.bool)
    ref = x @ weight.T + (b if bias else 0) + 0.7 * ((x * keep / (1 - drop_rate(p))) @ lora_a.T) @ lora_b.T
    expected = torch.autograd.grad(ref, inputs, grad)
    torch.testing.assert_close(out, ref)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want)


def test_keep_mask_rate_and_determinism():
    torch.manual_seed(3)
    mask = keep_mask(torch.Size([1001, 999]), 0.05, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (1001, 999)
    assert float(mask.float().mean()) == pytest.approx(0.95, abs=2e-3)
    assert drop_rate(0.05) == pytest.approx(0.05, abs=2 ** -17) and drop_rate(0.0) == 0.0
    torch.manual_seed(3)
    assert torch.equal(mask, keep_mask(torch.Size([1001, 999]), 0.05, torch.device("cpu")))


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
