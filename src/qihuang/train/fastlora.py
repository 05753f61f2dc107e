"""A fused forward/backward for PEFT LoRA linear layers (same maths, less work on CPU).

PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate modules: a
Bernoulli draw per input element for dropout, a dropped copy of ``x`` kept for the backward
pass, and a few temporaries for the scaling and the sum. :class:`LoRALinearFn` computes the
same function and the same gradients with one autograd node per layer:

- dropout draws only *which* elements drop: the gaps between dropped elements are geometric,
  so about ``p * n`` uniforms (not ``n``) give an exact i.i.d. Bernoulli(``p``) pattern, kept as
  flat indices (a twentieth of the elements at ``p = 0.05``) and applied by zeroing them in a copy;
- the dropped input is rebuilt from ``x`` and the indices in the backward pass instead of being
  stored (``x`` is stored anyway, and shared by sibling projections);
- ``1/(1-p)`` and ``scaling`` fold into the scalars of in-place ``addmm`` calls;
- every product is an explicit ``torch.mm``/``addmm``: in fp32 those run in MKL's GEMM, while
  ``a @ b.t()`` (``torch.matmul``) may take oneDNN's path, which copies the weight into freshly
  mapped memory on every call (page faults, ~5% slower on an AVX2 CPU);
- the frozen base weight may be bfloat16 while ``x``, the LoRA weights and their gradients stay
  float32 (:func:`cast_frozen_base`): the two big products per layer run in bf16, the rest in fp32.

The adapter's modules and parameters stay PEFT's (only ``forward`` of each LoRA linear layer is
replaced on the instance), so checkpoints and ``save_pretrained`` are unchanged. Layers PEFT
handles differently (several active adapters, DoRA and other variants, merged weights,
quantized or non-float base weights, a non-dropout ``lora_dropout``) keep PEFT's forward.
:func:`fuse_model` also swaps RMSNorm and rotary embeddings for fused versions
(:mod:`qihuang.train.fastops`).
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def drop_index(numel: int, p: float, device: torch.device) -> torch.Tensor:
    """Sorted flat indices in ``[0, numel)``, each index present independently with probability ``p``.

    The number of kept elements before each dropped one is geometric: ``floor(log(U) / log(1-p))``
    for ``U`` uniform on (0, 1] has ``P(k) = (1-p)^k p``. Drawing those gaps costs ~``p * numel``
    uniforms instead of ``numel``."""
    if p <= 0.0 or numel == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    log_keep, found, start = math.log1p(-p), [], 0
    while True:
        expected = (numel - start) * p
        draws = int(expected + 6.0 * math.sqrt(expected) + 16)
        gaps = torch.rand(draws, device=device).neg_().add_(1.0).log_().div_(log_keep).floor_().long().add_(1)
        pos = gaps.cumsum_(0).add_(start - 1)
        cut = int(torch.searchsorted(pos, numel))
        found.append(pos[:cut])
        if cut < draws:
            return torch.cat(found) if len(found) > 1 else found[0]
        start = int(pos[-1]) + 1


def _dropped(flat: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    """``flat`` with the elements at flat indices ``drop`` set to zero (a copy), or ``flat`` itself."""
    if drop is None:
        return flat
    out = flat.clone()
    out.view(-1).index_fill_(0, drop, 0.0)
    return out


def _base_mm(a: torch.Tensor, weight: torch.Tensor, transpose: bool) -> torch.Tensor:
    """``a @ weight.T`` (or ``a @ weight``) in the weight's dtype, returned in ``a``'s dtype."""
    w = weight.t() if transpose else weight
    if weight.dtype == a.dtype:
        return torch.mm(a, w)
    return torch.mm(a.to(weight.dtype), w).to(a.dtype)


class LoRALinearFn(torch.autograd.Function):
    """``x W^T + b + scale * (dropout_p(x) A^T) B^T`` with one autograd node.

    ``W`` (frozen) may be in a lower precision than ``x``, ``A`` and ``B``: its two products
    (forward, and the input gradient) then run in ``W``'s dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float):
        flat = x.reshape(-1, x.shape[-1])
        mixed = weight.dtype != flat.dtype
        if mixed:
            out = _base_mm(flat, weight, transpose=True)
            if bias is not None:
                out.add_(bias.to(out.dtype))
        else:
            out = torch.mm(flat, weight.t()) if bias is None else torch.addmm(bias, flat, weight.t())
        drop = drop_index(flat.numel(), p, flat.device) if p > 0.0 else None
        alpha = scale / (1.0 - p) if drop is not None else scale
        inner = torch.mm(_dropped(flat, drop), lora_a.t())  # the 1/(1-p) goes into alpha
        out.addmm_(inner, lora_b.t(), alpha=alpha)
        ctx.save_for_backward(flat, drop, inner, weight, lora_a, lora_b)
        ctx.alpha, ctx.in_shape, ctx.has_bias, ctx.mixed = alpha, x.shape, bias is not None, mixed
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, drop, inner, weight, lora_a, lora_b = ctx.saved_tensors
        alpha = ctx.alpha
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        grad_inner = torch.mm(grad, lora_b)  # d(out)/d(inner) without alpha
        if ctx.needs_input_grad[0]:
            lora_part = torch.mm(grad_inner, lora_a)
            if drop is not None:
                lora_part.view(-1).index_fill_(0, drop, 0.0)
            if ctx.mixed:
                grad_x = lora_part.mul_(alpha).add_(_base_mm(grad, weight, transpose=False))
            else:
                grad_x = torch.addmm(lora_part, grad, weight, beta=alpha)
            grad_x = grad_x.view(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            grad_w = torch.mm(grad.t(), flat).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[3]:
            grad_a = torch.mm(grad_inner.t(), _dropped(flat, drop)).mul_(alpha)
        if ctx.needs_input_grad[4]:
            grad_b = torch.mm(grad.t(), inner).mul_(alpha)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replacement ``forward`` of a PEFT ``lora.Linear``: fused when the layer is plain LoRA."""
    plan = _plain_adapter(self, x) if not (args or kwargs) else None
    base = self.base_layer
    if plan is None:
        if getattr(self, "_qihuang_cast_base", False) and base.weight.dtype != x.dtype:
            # a base cast by cast_frozen_base, outside the fused path: PEFT's forward in the weight's dtype
            return type(self).forward(self, x.to(base.weight.dtype), *args, **kwargs).to(x.dtype)
        return type(self).forward(self, x, *args, **kwargs)
    name, dropout = plan
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    if torch.is_autocast_enabled(x.device.type):  # a bf16 base under autocast: our precision, not autocast's
        with torch.autocast(x.device.type, enabled=False):
            return LoRALinearFn.apply(x.float(), base.weight, base.bias, self.lora_A[name].weight,
                                      self.lora_B[name].weight, float(self.scaling[name]), float(p))
    return LoRALinearFn.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                              float(self.scaling[name]), float(p))


def _plain_adapter(layer, x: torch.Tensor):
    """``(adapter, dropout module)`` when ``layer`` computes plain LoRA on ``x``, else None."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    base, weight_a = layer.base_layer, layer.lora_A[name].weight
    if type(base) is not nn.Linear or base.weight.dtype not in _FLOATS:
        return None
    if torch.is_autocast_enabled(x.device.type):  # only a frozen low-precision base keeps the fused path
        if base.weight.requires_grad or base.weight.dtype == weight_a.dtype or weight_a.dtype != torch.float32:
            return None
    elif not (weight_a.dtype == x.dtype and (base.weight.dtype == x.dtype or not base.weight.requires_grad)):
        return None
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, (nn.Dropout, nn.Identity)):
        return None
    return name, dropout


def _lora_layers(model):
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return []
    return [m for m in model.modules() if type(m) is LoraLinear]


def fuse_lora(model) -> int:
    """Use :class:`LoRALinearFn` in every PEFT LoRA linear layer of ``model``; returns how many."""
    layers = _lora_layers(model)
    for module in layers:
        module.forward = types.MethodType(_fused_forward, module)
    return len(layers)


def fuse_model(model) -> dict[str, int]:
    """:func:`fuse_lora` plus fused RMSNorm and rotary embeddings where they compute the same
    function (checked once per class on random inputs); how many modules of each kind."""
    from qihuang.train.fastops import fuse_norms, fuse_rotary

    return {"lora": fuse_lora(model), "rmsnorm": fuse_norms(model), "rotary": fuse_rotary(model)}


def cast_frozen_base(model, dtype: torch.dtype | None) -> int:
    """Store the frozen base weights of ``model``'s LoRA linear layers in ``dtype`` (e.g. bf16);
    LoRA weights, their optimizer state and the activations stay as they are. How many cast."""
    if dtype is None:
        return 0
    count = 0
    for module in _lora_layers(model):
        weight = module.base_layer.weight
        if isinstance(module.base_layer, nn.Linear) and not weight.requires_grad and weight.dtype != dtype \
                and weight.dtype in _FLOATS:
            module.base_layer.to(dtype)
            module._qihuang_cast_base = True
            count += 1
    return count


def frozen_base_dtype(config) -> torch.dtype | None:
    """The dtype for the frozen base of a fused LoRA run on CPU: bf16 when ``dtype`` is auto and the CPU
    has native bf16 that also measures faster than fp32 (:func:`qihuang.models.load.bf16_training_faster`,
    part of the one dtype policy), or when ``mixed_precision`` asks for bf16; None (keep fp32) otherwise:
    on AVX2-only CPUs, and on those whose bf16 products are slower (an Intel Xeon with avx512_bf16, no AMX)."""
    if config.finetuning != "lora" or not config.fused_lora or torch.cuda.is_available():
        return None
    from qihuang.models.load import bf16_training_faster

    wanted = config.mixed_precision == "bf16" or (config.dtype == "auto" and config.mixed_precision == "no"
                                                  and bf16_training_faster())
    return torch.bfloat16 if wanted else None
