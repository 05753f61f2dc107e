"""Reward modelling (``--stage rm``): a scalar head over the base model, trained on preference pairs.

The model is ``AutoModelForSequenceClassification`` with one label; its reward for a
conversation is the head applied to the hidden state of the answer's last token (the EOS that
ends it). The loss is the pairwise ``-log sigmoid(r_chosen - r_rejected)``. With LoRA the
score head is trained in full (``modules_to_save``); ``--finetuning full`` trains everything.
A LoRA training output (e.g. an SFT adapter) as ``model`` is merged into its base first.
Pairwise accuracy on the dev pairs goes to ``metrics.json`` (``dev_reward_accuracy``).

Scoring with a trained reward model::

    from qihuang.train.rm import load_reward_model, reward_scores
    model, tokenizer, template = load_reward_model("outputs/rm-lora")
    reward_scores(model, tokenizer, template, [[{"role": "user", "content": q},
                                                {"role": "assistant", "content": a}]])
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qihuang.config import TrainConfig
from qihuang.records import IGNORE_INDEX
from qihuang.data.prompts import Template
from qihuang.models.lora import quiet_peft
from qihuang.models.prepare import head_name, load_sequence_classifier, prepare_model
from qihuang.train.preference import PairMetrics, prepare_pair_data


def prepare_data(config: TrainConfig, tokenizer, template: Template):
    """Tokenized chosen/rejected pairs (labels mark the final answer, whose last token is scored)."""
    return prepare_pair_data(config, tokenizer, template)


def load_model(config: TrainConfig, tokenizer):
    """The reward model ready to train: LoRA (+ the score head in full), QLoRA or full."""
    return prepare_model(config, tokenizer, head="score")


def last_label_positions(labels: torch.Tensor) -> torch.Tensor:
    """Index of the last labelled token of every row (the answer's EOS)."""
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, positions, -1).max(dim=1).values


def sequence_rewards(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """``[rows]`` rewards: the head on the hidden state of each row's last answer token."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(hf, hf.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_label_positions(labels)]
    return getattr(hf, head_name(model))(last).squeeze(-1).float()


class RewardObjective(nn.Module):
    """Pairwise loss ``-log sigmoid(r_chosen - r_rejected)`` summed over the batch's pairs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, metrics: PairMetrics | None = None) -> dict:
        rewards = sequence_rewards(self.model, input_ids, attention_mask, labels)
        n = input_ids.shape[0] // 2
        chosen, rejected = rewards[:n], rewards[n:]
        if metrics is not None:
            metrics.add(chosen, rejected, self.training)
        loss = -nn.functional.logsigmoid(chosen - rejected)
        return {"loss_sum": loss.sum(), "count": torch.tensor(n, device=loss.device)}


def build_objective(model, config: TrainConfig, tokenizer) -> RewardObjective:
    return RewardObjective(model)


# ---- using a trained reward model -------------------------------------------------------------
def load_reward_model(output_dir: str | Path, dtype: str = "auto"):
    """``(model, tokenizer, template)`` of a ``--stage rm`` output directory (LoRA or full)."""
    from qihuang.data.prompts import get_template, load_template
    from qihuang.models.load import is_adapter_dir, load_tokenizer, read_meta

    out = Path(output_dir)
    if is_adapter_dir(out):
        from peft import PeftModel

        base = read_meta(out).get("base_model", "default")
        with quiet_peft():
            model = PeftModel.from_pretrained(load_sequence_classifier(base, dtype), str(out))
    else:
        model = load_sequence_classifier(str(out), dtype)
    tokenizer = load_tokenizer(out)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer, load_template(out) or get_template("auto")


@torch.no_grad()
def reward_scores(model, tokenizer, template: Template, conversations: list[list[dict]],
                  knowledge: list | None = None, batch_size: int = 8) -> list[float]:
    """Rewards of complete conversations (each ending with the assistant answer to score)."""
    from qihuang.data.collate import pad_batch
    from qihuang.data.pairwise import last_answer_only

    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        feats = []
        for i, messages in enumerate(conversations[start:start + batch_size]):
            ids, labels = template.encode_supervised(tokenizer, messages,
                                                     knowledge=knowledge[start + i] if knowledge else None)
            feats.append({"input_ids": ids, "labels": last_answer_only(labels)})
        batch = {k: v.to(device) for k, v in pad_batch(feats, tokenizer.pad_token_id).items()}
        scores += sequence_rewards(model, **batch).tolist()
    return scores
