"""A fused forward/backward for PEFT LoRA linear layers (same maths, less work on CPU).

PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as separate modules: a
Bernoulli draw per input element for dropout, a dropped copy of ``x`` kept for the backward
pass, and a few temporaries for the scaling and the sum. :class:`LoRALinearFn` computes the
same function and the same gradients with one autograd node per layer:

- the dropout mask comes from 64-bit random words, four 16-bit uniforms each (a quarter of the
  generator calls of ``bernoulli_``; the drop rate is ``p`` to within 2^-17), kept as bytes;
- the dropped input is rebuilt from ``x`` and the mask in the backward pass instead of being
  stored (``x`` is stored anyway, and shared by sibling projections);
- ``1/(1-p)`` and ``scaling`` fold into the scalars of in-place ``addmm`` calls.

The adapter's modules and parameters stay PEFT's (only ``forward`` of each LoRA linear layer is
replaced on the instance), so checkpoints and ``save_pretrained`` are unchanged. Layers PEFT
handles differently (several active adapters, DoRA and other variants, merged weights,
quantized or non-float base weights, a non-dropout ``lora_dropout``) keep PEFT's forward.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

_SPAN = 2 ** 16  # the mask's uniforms are 16-bit: the drop rate is p rounded to a multiple of 2^-16


def drop_rate(p: float) -> float:
    """The drop probability :func:`keep_mask` realises for ``p`` (``p`` to within 2^-17)."""
    return round(p * _SPAN) / _SPAN


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean tensor of ``shape``, each element False with probability ``drop_rate(p)``, independently.

    Four 16-bit uniforms per 64-bit random word: a quarter of the generator calls of ``bernoulli_``."""
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    uniform16 = words.view(torch.int16)[:numel]  # full 64-bit words: all four quarters are uniform
    return (uniform16 >= -_SPAN // 2 + round(p * _SPAN)).view(shape)


def _as_float(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0./1. of a boolean mask (through uint8: a vectorised cast, several times faster than from bool)."""
    return mask.view(torch.uint8).to(dtype)


class LoRALinearFn(torch.autograd.Function):
    """``x W^T + b + scale * (dropout_p(x) A^T) B^T`` with one autograd node."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float, p: float):
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
        if p > 0.0:
            mask = keep_mask(flat.shape, p, flat.device)  # saved as bytes, used as floats (faster products)
            inner = (flat * _as_float(mask, flat.dtype)) @ lora_a.t()  # the 1/(1-p) goes into alpha
            alpha = scale / (1.0 - drop_rate(p))
        else:
            mask, inner, alpha = None, flat @ lora_a.t(), scale
        out.addmm_(inner, lora_b.t(), alpha=alpha)
        ctx.save_for_backward(flat, mask, inner, weight, lora_a, lora_b)
        ctx.alpha, ctx.in_shape, ctx.has_bias = alpha, x.shape, bias is not None
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, mask, inner, weight, lora_a, lora_b = ctx.saved_tensors
        alpha = ctx.alpha
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        grad_inner = grad @ lora_b  # d(out)/d(inner) without alpha
        mask = _as_float(mask, flat.dtype) if mask is not None else None
        if ctx.needs_input_grad[0]:
            lora_part = grad_inner @ lora_a
            if mask is not None:
                lora_part.mul_(mask)
            grad_x = torch.addmm(lora_part, grad, weight, beta=alpha).view(ctx.in_shape)
        if ctx.needs_input_grad[1]:
            grad_w = grad.t() @ flat
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        if ctx.needs_input_grad[3]:
            dropped = flat * mask if mask is not None else flat
            grad_a = (grad_inner.t() @ dropped).mul_(alpha)
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ inner).mul_(alpha)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Replacement ``forward`` of a PEFT ``lora.Linear``: fused when the layer is plain LoRA."""
    plan = _plain_adapter(self, x) if not (args or kwargs) else None
    if plan is None:
        return type(self).forward(self, x, *args, **kwargs)
    name, dropout = plan
    base = self.base_layer
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    return LoRALinearFn.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                              float(self.scaling[name]), float(p))


def _plain_adapter(layer, x: torch.Tensor):
    """``(adapter, dropout module)`` when ``layer`` computes plain LoRA on ``x``, else None."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    if torch.is_autocast_enabled(x.device.type):  # autocast decides the matmul dtype: PEFT's path
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    base, weight_a = layer.base_layer, layer.lora_A[name].weight
    if type(base) is not nn.Linear or not (base.weight.dtype == weight_a.dtype == x.dtype):
        return None
    dropout = layer.lora_dropout[name]
    if not isinstance(dropout, (nn.Dropout, nn.Identity)):
        return None
    return name, dropout


def fuse_lora(model) -> int:
    """Use :class:`LoRALinearFn` in every PEFT LoRA linear layer of ``model``; returns how many."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
