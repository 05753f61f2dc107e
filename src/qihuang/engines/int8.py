"""Weight-only int8 linear layers for CPU decoding (opt-in: ``load_engine(..., quantize="int8")``).

Decoding one prompt with a small model reads every weight once per token, so it is bound by
memory traffic: int8 weights (one scale per output channel, symmetric) halve the bytes of bf16.
Activations stay in the model's dtype; the matmul is torch's ``_weight_int8pack_mm`` kernel.
Outputs differ slightly from the unquantized model (about 1% relative error per layer), so this
is not the default; ``benchmarks/generation_bench.py`` reports its speed and agreement.
"""

from __future__ import annotations


def _module():
    import torch

    class Int8Linear(torch.nn.Module):
        """``y = x @ (q * scale).T + bias`` with ``q`` int8 per output channel."""

        def __init__(self, linear: torch.nn.Linear, dtype):
            super().__init__()
            w = linear.weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
            self.register_buffer("qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(dtype))
            self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().to(dtype),
                                                                             requires_grad=False)
            self.in_features, self.out_features = linear.in_features, linear.out_features

        def forward(self, x):
            flat = x.reshape(-1, self.in_features).to(self.scales.dtype).contiguous()
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

    return Int8Linear


def quantize_int8(model, dtype=None):
    """Replace every ``nn.Linear`` of ``model`` (in place) by an int8 weight-only layer computing in
    ``dtype`` (default: the model's dtype). Returns the model."""
    import torch

    dtype = dtype or next(model.parameters()).dtype
    int8_linear = _module()
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, int8_linear(mod, dtype))
    return model
