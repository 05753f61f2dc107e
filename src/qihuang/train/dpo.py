"""Direct preference optimisation (``--stage dpo``), usually starting from an SFT output.

``model`` may be a base model, a full fine-tuned directory or a LoRA output (e.g. ``qihuang
train --stage sft``'s adapter). With LoRA, a LoRA output is *continued*: the policy is its base
with that adapter trainable, so the DPO output is again one adapter over the same base (serve
it like the SFT adapter). ``--finetuning full`` merges an adapter and trains every weight.

The reference model (``ref_model``, default: ``model`` itself, i.e. the SFT policy) is used
once, before training: its log-probabilities of every chosen and rejected answer are computed
in one no-grad pass and stored with the features, then it is freed. No second model is held
during training, LoRA or full, and each step runs only the policy's forward and backward.

Loss (sigmoid DPO, ``beta`` = ``pref_beta``), per pair with ``r = beta * (log pi - log ref)``
summed over the answer tokens: ``-log sigmoid(r_chosen - r_rejected)``. The rewards, their
margin and accuracy (how often ``r_chosen > r_rejected``) on the dev pairs go to
``metrics.json`` (``dev_reward_*``).
"""

from __future__ import annotations

import torch
from torch import nn

from qihuang.config import TrainConfig
from qihuang.data.collate import pad_batch
from qihuang.data.prompts import Template
from qihuang.models.prepare import load_merged_causal_lm, prepare_model, split_model_ref
from qihuang.train.objective import sequence_logps
from qihuang.train.preference import PairMetrics, prepare_pair_data


# ---- data: pairs + reference log-probabilities ----------------------------------------------------
def prepare_data(config: TrainConfig, tokenizer, template: Template):
    """Tokenized pairs, each with the reference model's log-probabilities of both answers."""
    data = prepare_pair_data(config, tokenizer, template)
    ref = config.ref_model or config.model
    add_reference_logps(ref, data.train + data.dev, tokenizer.pad_token_id, config.dtype,
                        config.eval_batch_size or config.batch_size, config.trust_remote_code)
    data.info.note(reference_model=ref)
    return data


@torch.no_grad()
def add_reference_logps(ref_model: str, features: list[dict], pad_id: int, dtype: str = "auto",
                        batch_size: int = 8, trust_remote_code: bool = False) -> None:
    """Store ``ref_chosen_logp`` / ``ref_rejected_logp`` in every feature (one pass, then freed)."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    model = load_merged_causal_lm(ref_model, dtype, trust_remote_code=trust_remote_code)
    model = model.to(PartialState().device).eval()
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["chosen_input_ids"]))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="reference log-probs", unit="batch", disable=len(batches) < 20, leave=False):
        rows = [{"input_ids": features[i][f"{side}_input_ids"], "labels": features[i][f"{side}_labels"]}
                for side in ("chosen", "rejected") for i in batch]
        tensors = {k: v.to(model.device) for k, v in pad_batch(rows, pad_id).items()}
        logps = sequence_logps(model, **tensors).double().cpu().tolist()
        for j, i in enumerate(batch):
            features[i]["ref_chosen_logp"] = logps[j]
            features[i]["ref_rejected_logp"] = logps[len(batch) + j]
    del model


# ---- model ------------------------------------------------------------------------------------------
def load_model(config: TrainConfig, tokenizer):
    """The policy: a LoRA output is continued (LoRA/QLoRA) or merged (full); else a fresh setup."""
    return prepare_model(config, tokenizer, continue_adapter=True)


def output_meta(config: TrainConfig) -> dict:
    """A LoRA DPO output is the SFT adapter continued: it holds SFT + DPO and loads on the SFT
    adapter's own base (loading it on top of the SFT adapter would apply the SFT delta twice)."""
    from qihuang.train.run import resolved_ref

    base, adapter = split_model_ref(config.model)
    if adapter is None or config.finetuning == "full":
        return {"base_model": resolved_ref(config.model)}
    return {"base_model": resolved_ref(base), "continued_from": resolved_ref(adapter)}


# ---- objective ----------------------------------------------------------------------------------------
class DPOObjective(nn.Module):
    """Sigmoid DPO loss summed over pairs, against precomputed reference log-probabilities."""

    def __init__(self, model, beta: float):
        super().__init__()
        self.model, self.beta = model, beta

    def forward(self, input_ids, attention_mask, labels, ref_chosen_logp, ref_rejected_logp,
                metrics: PairMetrics | None = None) -> dict:
        logps = sequence_logps(self.model, input_ids, attention_mask, labels)
        n = input_ids.shape[0] // 2
        chosen = self.beta * (logps[:n] - ref_chosen_logp.to(logps.dtype))
        rejected = self.beta * (logps[n:] - ref_rejected_logp.to(logps.dtype))
        if metrics is not None:
            metrics.add(chosen, rejected, self.training)
        loss = -nn.functional.logsigmoid(chosen - rejected)
        return {"loss_sum": loss.sum(), "count": torch.tensor(n, device=loss.device)}


def build_objective(model, config: TrainConfig, tokenizer) -> DPOObjective:
    return DPOObjective(model, config.pref_beta)
