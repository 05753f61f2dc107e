"""Fused RMSNorm and rotary embeddings for training on CPU (same function, fewer kernels).

transformers writes both as chains of small tensor ops (RMSNorm: pow, mean, add, rsqrt, two
products; rotary: slices, a negation, a concatenation, two products and a sum per tensor), each
a pass over the activations plus a saved temporary; on CPU they cost as much as a large share of
the matrix products. :class:`RMSNormFn` and :class:`RotaryFn` compute the same outputs and
gradients with three or four passes each and save only their inputs.

A module is switched only after its own forward and the fused one have given the same outputs
and input gradients on random inputs (checked once per class), so architectures that differ
(e.g. Gemma's ``(1 + weight)`` norm) keep their own code.
"""

from __future__ import annotations

import sys
import types

import torch

_VERIFIED: dict[tuple, bool] = {}  # (class or module name, kind) -> the fused op reproduces it


class RMSNormFn(torch.autograd.Function):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        out = (x * rstd).mul_(weight)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad * x * rstd).reshape(-1, x.shape[-1]).sum(0)
        if ctx.needs_input_grad[0]:
            gw = grad * weight
            dot = torch.linalg.vecdot(gw, x, dim=-1).unsqueeze(-1)
            coef = dot.mul_(rstd.pow(3)).div_(x.shape[-1])
            grad_x = gw.mul_(rstd).addcmul_(x, coef, value=-1.0)
        return grad_x, grad_w, None


class RotaryFn(torch.autograd.Function):
    """``x * cos + rotate_half(x) * sin`` (``rotate_half(x) = cat(-x2, x1)``), for any cos/sin."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        h = x.shape[-1] // 2
        out = x * cos
        out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-1.0)
        out[..., h:].addcmul_(x[..., :h], sin[..., h:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        h = grad.shape[-1] // 2
        grad_x = grad * cos
        grad_x[..., :h].addcmul_(grad[..., h:], sin[..., h:])
        grad_x[..., h:].addcmul_(grad[..., :h], sin[..., :h], value=-1.0)
        return grad_x if ctx.needs_input_grad[0] else None, None, None


def fused_rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """Drop-in for transformers' ``apply_rotary_pos_emb`` (fp32, even head size, constant cos/sin)."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return RotaryFn.apply(q, cos, sin), RotaryFn.apply(k, cos, sin)


def _plain_fp32(*tensors) -> bool:
    return not torch.is_autocast_enabled("cpu") and all(t.dtype == torch.float32 for t in tensors)


# ---- RMSNorm modules ------------------------------------------------------------------------
def _norm_eps(module) -> float | None:
    for attr in ("variance_epsilon", "eps"):
        value = getattr(module, attr, None)
        if isinstance(value, float):
            return value
    return None


def _fused_norm_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or not _plain_fp32(x, self.weight) or x.device.type != "cpu":
        return type(self).forward(self, x, *args, **kwargs)
    return RMSNormFn.apply(x, self.weight, self._qihuang_eps)


def _same(run_a, run_b, make_inputs) -> bool:
    """Whether two functions give the same outputs and input gradients on the same random inputs."""
    results = []
    for run in (run_a, run_b):
        torch.manual_seed(1234)
        inputs = make_inputs()
        outs = run(*inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = torch.autograd.grad(sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs),
                                    [t for t in inputs if t.requires_grad])
        results.append([o.detach() for o in outs] + list(grads))
    try:
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    except (AssertionError, ValueError):
        return False
    return True


def _norm_matches(module) -> bool:
    key = (type(module), "norm")
    if key not in _VERIFIED:
        size = module.weight.shape[0]
        weight = torch.randn(size) * 0.5 + 1.0
        with torch.random.fork_rng():
            _VERIFIED[key] = _same(
                lambda x: _call_with_weight(module, x, weight, fused=False),
                lambda x: _call_with_weight(module, x, weight, fused=True),
                lambda: (torch.randn(2, 3, size, requires_grad=True),))
    return _VERIFIED[key]


def _call_with_weight(module, x, weight, fused: bool):
    saved = module.weight.data
    module.weight.data = weight
    try:
        return RMSNormFn.apply(x, module.weight, module._qihuang_eps) if fused else type(module).forward(module, x)
    finally:
        module.weight.data = saved


def fuse_norms(model) -> int:
    """Use :class:`RMSNormFn` in every fp32 RMSNorm module of ``model`` that it reproduces."""
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        eps = _norm_eps(module)
        if (not type(module).__name__.endswith("RMSNorm") or eps is None or not isinstance(weight, torch.Tensor)
                or weight.dim() != 1 or weight.dtype != torch.float32 or weight.device.type != "cpu"):
            continue
        module._qihuang_eps = eps
        if _norm_matches(module):
            module.forward = types.MethodType(_fused_norm_forward, module)
            count += 1
    return count


# ---- rotary embeddings inside attention modules ---------------------------------------------
def _rotary_matches(module_globals, head_dim: int) -> bool:
    original = module_globals.get("apply_rotary_pos_emb")
    key = (module_globals.get("__name__"), "rotary")
    if key not in _VERIFIED:
        def inputs():
            freqs = torch.rand(1, 5, head_dim // 2) * 3.0
            emb = torch.cat([freqs, freqs], dim=-1)
            return (torch.randn(1, 2, 5, head_dim, requires_grad=True), torch.randn(1, 1, 5, head_dim, requires_grad=True),
                    emb.cos(), emb.sin())

        with torch.random.fork_rng():
            _VERIFIED[key] = _same(original, fused_rotary, inputs)
    return _VERIFIED[key]


def _scoped_rotary_forward(self, *args, **kwargs):
    """The attention's own forward, with ``apply_rotary_pos_emb`` fused for the call (fp32 only)."""
    module_globals = self._qihuang_rotary_globals
    original = module_globals["apply_rotary_pos_emb"]

    def rotary(q, k, cos, sin, *rest, **kw):
        if _plain_fp32(q, k, cos, sin) and not (cos.requires_grad or sin.requires_grad) and q.shape[-1] % 2 == 0:
            return fused_rotary(q, k, cos, sin, *rest, **kw)
        return original(q, k, cos, sin, *rest, **kw)

    module_globals["apply_rotary_pos_emb"] = rotary
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        module_globals["apply_rotary_pos_emb"] = original


def fuse_rotary(model) -> int:
    """Fused rotary embeddings in every attention module whose code calls transformers'
    ``apply_rotary_pos_emb`` (and which :func:`fused_rotary` reproduces)."""
    count = 0
    for module in model.modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        source = sys.modules.get(type(module).__module__)
        module_globals = vars(source) if source is not None else {}
        head_dim = getattr(module, "head_dim", None)
        if not callable(module_globals.get("apply_rotary_pos_emb")) or not isinstance(head_dim, int) or head_dim % 2:
            continue
        if _rotary_matches(module_globals, head_dim):
            module._qihuang_rotary_globals = module_globals
            module.forward = types.MethodType(_scoped_rotary_forward, module)
            count += 1
    return count


# ---- output head + cross-entropy ------------------------------------------------------------
HEAD_CHUNK_ELEMENTS = 1 << 22  # logits per chunk (16 MiB in fp32): reused from the heap, not mapped afresh


class LinearCrossEntropyFn(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T (+ bias)`` against ``target``, a chunk of rows at a time.

    The full ``[rows, vocab]`` logits never exist at once, and nothing of that size is kept for
    the backward pass: each chunk's gradients are computed right after its loss, in the forward
    pass (``d loss / d logits = softmax - onehot``, with the softmax's division folded into the
    product that follows), and the backward pass only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk_rows: int, grads: bool):
        want = [grads and need for need in ctx.needs_input_grad[:3]]  # ``grads``: the caller's grad mode
        grad_h = torch.empty_like(hidden) if want[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and want[2] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_rows):
            h, t = hidden[start:start + chunk_rows], target[start:start + chunk_rows]
            logits = (torch.mm(h, weight.t()) if bias is None else torch.addmm(bias, h, weight.t())).float()
            picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)
            top = logits.amax(1, keepdim=True)
            expd = logits.sub_(top).exp_()  # in place: exp(logit - max), the softmax before normalising
            sums = expd.sum(1)
            total += (sums.log() + top.squeeze(1) - picked).sum()
            if grad_h is None and grad_w is None and grad_b is None:
                continue
            scale = sums.reciprocal().unsqueeze(1)
            if grad_h is not None:  # softmax @ W - W[target]
                grad_h[start:start + chunk_rows] = torch.mm(expd.to(weight.dtype), weight).mul_(scale).sub_(
                    weight.index_select(0, t)).to(hidden.dtype)
            if grad_w is not None or grad_b is not None:
                soft = expd.mul_(scale)
                soft[torch.arange(len(t), device=t.device), t] -= 1.0
                if grad_w is not None:
                    grad_w.addmm_(soft.t(), h.float())
                if grad_b is not None:
                    grad_b += soft.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_loss.to(torch.float32)
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else (grad_w * scale).to(ctx.dtypes[0]),
                None if grad_b is None else (grad_b * scale).to(ctx.dtypes[1]), None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor, chunk_elements: int = HEAD_CHUNK_ELEMENTS) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target, reduction="sum")`` in fp32, computed in
    chunks of rows (:class:`LinearCrossEntropyFn`); ``hidden`` is ``[rows, dim]``, every target valid."""
    chunk_rows = max(1, chunk_elements // max(1, weight.shape[0]))
    return LinearCrossEntropyFn.apply(hidden, weight, bias, target, chunk_rows, torch.is_grad_enabled())
