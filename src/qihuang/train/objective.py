"""Training objectives: modules whose ``forward(**batch)`` returns ``{"loss_sum", "count"}``.

The loop divides the summed loss by the count over a whole optimizer step, so every trained
token weighs the same whatever the batch composition. Wrapping the language model in the
objective means DDP / DeepSpeed / FSDP see one module and synchronise it normally.
"""

from __future__ import annotations

import torch
from torch import nn

from qihuang.records import IGNORE_INDEX
from qihuang.train.fastops import linear_cross_entropy


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


def selective_head(lm) -> bool:
    """Whether the output head of ``lm`` (a transformers CausalLM) can be run on chosen hidden
    states apart from the decoder: it has both, and no final logit soft-capping (Gemma-2) that
    only its own forward applies."""
    return (hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None
            and getattr(lm.config, "final_logit_softcapping", None) is None)


def label_hidden(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(hidden, targets, keep)``: the decoder's last hidden states at the labelled positions (those
    that predict a label), their target tokens and the ``[rows, len - 1]`` mask of those positions.
    Needs a :func:`selective_head` model."""
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    decoder = base_causal_lm(model).get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[:, :-1][keep], target[keep], keep


def label_logits(model, input_ids, attention_mask, labels,
                 selective: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, targets, keep)``: next-token logits at the labelled positions only, their target
    tokens, and the ``[rows, len - 1]`` mask of those positions.

    With a :func:`selective_head` the output head runs only on those positions, not over the whole
    sequence: with a large vocabulary it is most of the cost of a forward pass. Otherwise the
    model's full forward is used and its logits are indexed. ``selective`` skips the check."""
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    lm = base_causal_lm(model)
    if selective is None:
        selective = selective_head(lm)
    if selective:
        logits = lm.get_output_embeddings()(label_hidden(model, input_ids, attention_mask, labels)[0])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][keep]
    return logits, target[keep], keep


def sequence_logps(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """``[rows]`` sums of ``log p(token)`` over the labelled tokens of each row (:func:`label_logits`)."""
    logits, target, keep = label_logits(model, input_ids, attention_mask, labels)
    token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    return torch.zeros(labels.shape[0], device=token_logps.device, dtype=token_logps.dtype) \
        .index_add(0, rows, token_logps)


def _plain_linear(module) -> bool:
    """Whether ``module`` is a plain ``nn.Linear`` whose full weight is at hand (not, e.g., a LoRA
    wrapper, or a weight that DeepSpeed ZeRO-3 gathers only when the module itself is called)."""
    return type(module) is nn.Linear and tuple(module.weight.shape) == (module.out_features, module.in_features)


class CausalLMObjective(nn.Module):
    """Next-token cross-entropy on labelled positions only.

    The output head runs only where a label exists (answer tokens), fused with the loss and in
    chunks of rows when it is a plain linear layer (:func:`qihuang.train.fastops.linear_cross_entropy`:
    no ``[labels, vocab]`` logits are kept), else as the model's own head (:func:`label_logits`). With
    ``fused_lora``, PEFT LoRA layers run as one fused op each (:mod:`qihuang.train.fastlora`).
    """

    def __init__(self, model, fused_lora: bool = False):
        super().__init__()
        self.model = model
        if fused_lora:
            from qihuang.train.fastlora import fuse_model

            fuse_model(model)
        self._selective = selective_head(base_causal_lm(model))

    def forward(self, input_ids, attention_mask, labels) -> dict[str, torch.Tensor]:
        mask = causal_mask_or_none(attention_mask)
        head = base_causal_lm(self.model).get_output_embeddings() if self._selective else None
        if not _plain_linear(head):  # e.g. a LoRA-wrapped head: the model's own head, then the loss
            logits, target, keep = label_logits(self.model, input_ids, mask, labels, self._selective)
            return {"loss_sum": nn.functional.cross_entropy(logits.float(), target, reduction="sum"),
                    "count": keep.sum()}
        hidden, target, keep = label_hidden(self.model, input_ids, mask, labels)
        return {"loss_sum": linear_cross_entropy(hidden, head.weight, head.bias, target), "count": keep.sum()}
