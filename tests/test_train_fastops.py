"""Fused RMSNorm and rotary embeddings: the same outputs and gradients as transformers' modules."""

from __future__ import annotations

import pytest
import torch

from qihuang.train.fastops import RMSNormFn, RotaryFn, fuse_norms, fuse_rotary, linear_cross_entropy


def test_rmsnorm_fn_matches_the_formula_with_weight_gradient():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, requires_grad=True)
    weight = (torch.randn(16) + 1.0).requires_grad_()
    out = RMSNormFn.apply(x, weight, 1e-6)
    ref = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    grad = torch.randn_like(out)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(out, (x, weight), grad), torch.autograd.grad(ref, (x, weight), grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rotary_fn_matches_rotate_half_for_any_cos_sin():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 8).transpose(1, 2).requires_grad_()  # a non-contiguous view, as in attention
    cos, sin = torch.randn(2, 1, 7, 8), torch.randn(2, 1, 7, 8)  # halves differ: the general formula
    out = RotaryFn.apply(x, cos, sin)
    ref = x * cos + torch.cat([-x[..., 4:], x[..., :4]], dim=-1) * sin
    grad = torch.randn_like(out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_qwen2"])
def test_fused_model_matches_transformers(arch, request):
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(arch)
    models = [AutoModelForCausalLM.from_pretrained(path) for _ in range(2)]
    layers = models[1].config.num_hidden_layers
    assert fuse_norms(models[1]) == 2 * layers + 1 and fuse_rotary(models[1]) == layers
    ids = torch.randint(3, 500, (2, 9))
    grads = []
    for model in models:
        model.train()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    for name, want in grads[0][1].items():  # full fine-tuning: norm weights get gradients too
        torch.testing.assert_close(grads[1][1][name], want, rtol=1e-3, atol=1e-5)


def test_a_norm_that_computes_something_else_is_left_alone():
    class OffsetRMSNorm(torch.nn.Module):  # Gemma-style (1 + weight): not what RMSNormFn computes
        def __init__(self):
            super().__init__()
            self.weight, self.eps = torch.nn.Parameter(torch.zeros(8)), 1e-6

        def forward(self, x):
            return (1 + self.weight) * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    model = torch.nn.Sequential(OffsetRMSNorm())
    assert fuse_norms(model) == 0
    assert "forward" not in vars(model[0])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 50 * 7, 1 << 22])  # one row, uneven chunks, all rows at once
def test_linear_cross_entropy_matches_logits_then_loss(bias, chunk_elements):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    b = torch.randn(50, requires_grad=True) if bias else None
    target = torch.randint(0, 50, (23,))
    inputs = [t for t in (hidden, weight, b) if t is not None]
    ref = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight, b), target, reduction="sum")
    got = linear_cross_entropy(hidden, weight, b, target, chunk_elements=chunk_elements)
    torch.testing.assert_close(got, ref)
    for g, r in zip(torch.autograd.grad(got * 0.3, inputs), torch.autograd.grad(ref * 0.3, inputs)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_linear_cross_entropy_frozen_weight_and_no_grad_mode():
    torch.manual_seed(0)
    hidden, weight = torch.randn(9, 8, requires_grad=True), torch.randn(30, 8)
    target = torch.randint(0, 30, (9,))
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), target, reduction="sum")
    got = linear_cross_entropy(hidden, weight, None, target, chunk_elements=60)
    torch.testing.assert_close(torch.autograd.grad(got, hidden)[0], torch.autograd.grad(ref, hidden)[0])
    with torch.no_grad():
        quiet = linear_cross_entropy(hidden, weight, None, target, chunk_elements=60)
    assert not quiet.requires_grad and quiet.grad_fn is None
    torch.testing.assert_close(quiet, ref.detach())
