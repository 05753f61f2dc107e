"""Training objectives: modules whose ``forward(**batch)`` returns ``{"loss_sum", "count"}``.

The loop divides the summed loss by the count over a whole optimizer step, so every trained
token weighs the same whatever the batch composition. Wrapping the language model in the
objective means DDP / DeepSpeed / FSDP see one module and synchronise it normally.
"""

from __future__ import annotations

import torch
from torch import nn

from qihuang.data.collate import IGNORE_INDEX


def base_causal_lm(model):
    """The transformers CausalLM inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def causal_mask_or_none(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """``None`` when every row is right-padded (ones, then zeros), else ``attention_mask``.

    In a causal model no real token can attend to a padding token that comes after it, so the
    plain causal mask gives the same outputs at every real position; without a padding mask the
    attention kernel takes its causal fast path and skips the masked half."""
    if attention_mask is None or bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        return None
    return attention_mask


class CausalLMObjective(nn.Module):
    """Next-token cross-entropy on labelled positions only.

    The output head runs only where a label exists (answer tokens), not over the whole
    sequence: with a large vocabulary this is most of the cost of a forward pass. With
    ``fused_lora``, PEFT LoRA layers run as one fused op each (:mod:`qihuang.train.fastlora`).
    """

    def __init__(self, model, fused_lora: bool = False):
        super().__init__()
        self.model = model
        if fused_lora:
            from qihuang.train.fastlora import fuse_model

            fuse_model(model)
        lm = base_causal_lm(model)
        self._selective = (hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None
                           and getattr(lm.config, "final_logit_softcapping", None) is None)

    def forward(self, input_ids, attention_mask, labels) -> dict[str, torch.Tensor]:
        target = labels[:, 1:]
        keep = target != IGNORE_INDEX
        attention_mask = causal_mask_or_none(attention_mask)
        if self._selective:
            lm = base_causal_lm(self.model)
            hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state
            logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logits = logits[:, :-1][keep]
        loss_sum = nn.functional.cross_entropy(logits.float(), target[keep], reduction="sum")
        return {"loss_sum": loss_sum, "count": keep.sum()}
