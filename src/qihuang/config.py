"""The training configuration: :class:`TrainConfig`, YAML files and ``key=value`` overrides.

Each field's description is its documentation (the command-line options of ``qihuang train`` are
generated from the fields by :mod:`qihuang.flags`, as every command's are). Training values come
from defaults < a YAML file < command-line options < ``key=value`` overrides. :data:`STAGES` is the
one list of training stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qihuang.errors import ConfigError
from qihuang.fileio import parse_yaml
from qihuang.flags import Cli, format_errors, split_list
from qihuang.models.load import _DTYPES as DTYPES



STAGES = ("sft", "pt", "rm", "dpo")  # the training stages: qihuang.train.<stage> implements each
Dtype = Literal[DTYPES]  # one list of weight dtypes for every command


class TrainConfig(BaseModel):
    """Everything one training run needs. ``qihuang.train.run(TrainConfig(...))``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # what to train
    stage: Literal[STAGES] = Field("sft", description="training stage")
    model: str = Field("default", description="base model: 'default' (SmolLM2-135M-Instruct), a local "
                       "directory, a .gguf file or a Hugging Face hub id")
    dataset: str | None = Field(None, description="dataset directory (train.jsonl/dev.jsonl or dataset_info.json), "
                                "a data file, or a NAME looked up in dataset_dir (pt: text files or a directory)")
    dataset_dir: str | None = Field(None, description="where dataset NAMEs are looked up "
                                    "(default: $QIHUANG_HOME/datasets)")
    trust_remote_code: bool = Field(False, description="let the model run Python code shipped with it (older "
                                    "ChatGLM checkpoints need it). Off by default: that code runs on this machine "
                                    "with your permissions, so enable it only for a model you trust")
    template: str = Field("auto", description="prompt template name (see resources/templates.yaml) or file")
    grounded: bool = Field(False, description="put each example's knowledge triples in the prompt")
    max_samples: int | None = Field(None, gt=0, description="use at most this many training examples")
    val_size: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of train held out as dev when the "
                            "dataset has no dev split")
    mix: list[str] = Field([], description="general data mixed into training, FILE_OR_NAME:RATIO (a file, "
                           "directory or NAME as for dataset, read by the same stage): adds RATIO x the number of "
                           "training examples drawn from it, seeded (repeated if it has fewer); several allowed "
                           "(repeat --mix or separate with commas), e.g. --mix alpaca_zh.json:0.3")
    # how to train
    finetuning: Literal["lora", "full", "qlora"] = Field("lora", description="LoRA adapter, full "
                                                         "fine-tuning, or 4-bit QLoRA (CUDA only)")
    lora_rank: int = Field(16, gt=0, description="LoRA rank r")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default: 2 x rank)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    lora_target: list[str] = Field(["all"], description="modules to adapt, comma-separated; 'all' = "
                                   "every linear layer except the output head")
    cutoff_len: int = Field(1024, gt=8, description="maximum tokens per example (pt: block size)")
    learning_rate: float | None = Field(None, gt=0, description="peak learning rate (default: 2e-4 "
                                        "for LoRA, 2e-5 for full)")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="learning-rate schedule")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="fraction of steps for linear warmup")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    batch_size: int = Field(4, gt=0, description="examples per device per step")
    grad_accum: int = Field(1, gt=0, description="gradient accumulation steps")
    num_epochs: float = Field(3.0, gt=0, description="epochs (ignored when max_steps is set)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="time budget: stop (and save) once training "
                                      "has run this many minutes, whatever the step")
    seed: int = Field(42, description="random seed (data order, dropout, LoRA init)")
    dtype: Dtype = Field("auto", description="weight dtype (auto: float32 on CPU)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast precision")
    num_threads: Annotated[int | None, Cli(aliases=("threads",))] = Field(None, gt=0, description="CPU threads for torch (default: torch's "
                                    "choice; 1 is often fastest on a CPU shared with other jobs)")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory")
    fused_lora: bool = Field(True, description="compute each LoRA layer as one fused op (same maths as PEFT's, "
                             "less time and memory; sft/pt)")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    # preference stages (rm, dpo)
    pref_beta: float = Field(0.1, gt=0, description="DPO beta (strength of the KL constraint)")
    ref_model: str | None = Field(None, description="DPO reference model (default: the starting "
                                     "model, e.g. the SFT output that DPO continues)")
    # output, evaluation, checkpoints
    output: str | None = Field(None, description="output directory (default: outputs/<stage>-<finetuning>)")
    overwrite: bool = Field(False, description="allow writing into a non-empty output directory")
    resume: bool = Field(False, description="continue from the latest checkpoint in the output directory")
    save_steps: int = Field(100, gt=0, description="save a checkpoint every N steps")
    save_total_limit: int = Field(2, gt=0, description="keep only the latest N checkpoints")
    eval_steps: int | None = Field(None, gt=0, description="dev loss every N steps (default: save_steps)")
    eval_at_start: bool = Field(True, description="measure the untuned dev loss before training")
    logging_steps: int = Field(5, gt=0, description="log train loss every N steps")
    eval_batch_size: int | None = Field(None, gt=0, description="dev batch size (default: batch_size)")

    @field_validator("lora_target", "mix", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("mix")
    @classmethod
    def _check_mix(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_mix(item)
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.dataset is None:
            raise ValueError("field 'dataset': a dataset is required")
        if not self.lora_target:
            raise ValueError("field 'lora_target': name at least one module or 'all'")
        return self

    # ---- derived values -------------------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-5 if self.finetuning == "full" else 2e-4)

    @property
    def alpha(self) -> float:
        return self.lora_alpha or 2.0 * self.lora_rank

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"outputs/{self.stage}-{self.finetuning}")

    @property
    def eval_every(self) -> int:
        return self.eval_steps or self.save_steps

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), allow_unicode=True, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (atomically)."""
        from qihuang.fileio import atomic_write_text

        return atomic_write_text(path, self.to_yaml())


def parse_mix(item: str) -> tuple[str, float]:
    """``"general.jsonl:0.3"`` -> ``("general.jsonl", 0.3)`` (a ``--mix`` entry; ValueError says what is wrong)."""
    name, sep, ratio = str(item).rpartition(":")
    try:
        value = float(ratio)
    except ValueError:
        value = float("nan")
    if not sep or not name.strip() or not 0 < value <= 100:
        raise ValueError(f"{item!r} is not FILE_OR_NAME:RATIO with 0 < RATIO <= 100")
    return name.strip(), value


def build_config(values: dict[str, Any], source: str | None = None) -> TrainConfig:
    """Validate a mapping into a :class:`TrainConfig`; errors name the field (and file)."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lora_rank=8", "grounded=true"]`` -> ``{"lora_rank": 8, "grounded": True}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        key = key.strip().replace("-", "_")
        from qihuang.train.aliases import aliases

        if key not in TrainConfig.model_fields and key not in aliases().names():
            raise ConfigError(f"override {item!r}: unknown field {key!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> TrainConfig:
    """Defaults < YAML file ``path`` < ``overrides`` (a mapping or ``key=value`` strings).
    LLaMA-Factory spellings (``resources/llamafactory.yaml``) are accepted in both."""
    from qihuang.train.aliases import translate

    values = translate(read_yaml(path), str(path)) if path else {}
    unknown = sorted(set(values) - set(TrainConfig.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}")
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values.update(translate(overrides or {}))
    return build_config(values, str(path) if path else None)


