"""Typed configuration: the single source of truth for every option.

Each field's description is its documentation. :func:`add_options` generates the command-line
options of every command from pydantic models (:class:`TrainConfig` here, the option groups of
:mod:`qihuang.options`), and :func:`options_from_args` reads them back, validated once (errors
name the option). Training values come from defaults < a YAML file < command-line options <
``key=value`` overrides.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from qihuang.errors import ConfigError
from qihuang.models.load import _DTYPES as DTYPES

STAGES = ("sft", "pt", "rm", "dpo")
Dtype = Literal[DTYPES]  # one list of weight dtypes for every command


@dataclass(frozen=True)
class Cli:
    """Command-line details of a field, given as ``Annotated[T, Cli(...)]``: extra option names
    (``aliases``), hidden names that still work but warn (``deprecated``), an argparse ``type``
    converter and a ``metavar``."""

    aliases: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()
    type: Callable[[str], Any] | None = None
    metavar: str | None = None


class TrainConfig(BaseModel):
    """Everything one training run needs. ``qihuang.train.run(TrainConfig(...))``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # what to train
    stage: Literal["sft", "pt", "rm", "dpo"] = Field("sft", description="training stage")
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


def _format_errors(exc: ValidationError, source: str | None, what: str = "training config",
                   flags: bool = False) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            got = f" (got {err['input']!r})" if err["type"] != "missing" and not isinstance(err["input"], dict) else ""
            name = f"--{loc.replace('_', '-')}" if flags else f"field {loc!r}"
            parts.append(f"{name}: {msg}{got}")
        else:
            parts.append(msg)
    prefix = f"{source}: " if source else ""
    return prefix + f"invalid {what}: " + "; ".join(parts)


def build_config(values: dict[str, Any], source: str | None = None) -> TrainConfig:
    """Validate a mapping into a :class:`TrainConfig`; errors name the field (and file)."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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


# ---- command-line options generated from pydantic models --------------------------------------
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class BoolOption(argparse.Action):
    """``--flag``, ``--flag true|false`` and ``--no-flag``."""

    def __init__(self, option_strings, dest, **kwargs):
        negated = [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        kwargs.pop("nargs", None)
        super().__init__([*option_strings, *negated], dest, nargs="?", metavar="true|false", **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string and option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        if value is not None and value.lower() not in _TRUE + _FALSE:
            parser.error(f"{option_string} takes true or false, got {value!r} (write key=value overrides "
                         "before the options, or give the flag its value)")
        setattr(namespace, self.dest, value is None or value.lower() in _TRUE)


class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: stores into the new one and warns."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        print(f"warning: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, value)


def split_list(value: Any) -> Any:
    """``"a, b，c"`` -> ``["a", "b", "c"]`` (ASCII or full-width commas); other values unchanged."""
    if isinstance(value, str):
        return [v.strip() for v in value.replace("，", ",").split(",") if v.strip()]
    return value


def _option_kwargs(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _option_kwargs(inner[0]) if len(inner) == 1 else {}
    if origin is Literal:
        return {"choices": list(args)}
    if annotation is bool:
        return {"action": BoolOption}
    if annotation in (int, float):
        return {"type": annotation}
    if origin is list:
        return {"metavar": "A,B,..."}  # comma-separated, split by the model's validator
    return {}  # str


def _help(info: FieldInfo) -> str:
    """The field's description, with its default appended once (unless the text already says it)."""
    text = info.description or ""
    default = info.default
    said = "(default" in text.lower() or "default:" in text.lower()
    if info.is_required() or said or default is None or default is False or default == []:
        return text.replace("%", "%%")
    if isinstance(default, (list, tuple)):
        default = ",".join(map(str, default))
    return f"{text} (default: {'on' if default is True else default})".replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, *models: type[BaseModel], defaults: bool = True,
                exclude: tuple[str, ...] = (), extra_flags: dict[str, list[str]] | None = None,
                underscores: bool = False) -> None:
    """Add one option per field of each model (an argument group titled by the model's ``cli_title``).

    A field already added by an earlier model (the groups share some, e.g. ``batch_size``) is added
    once. ``defaults=False`` leaves unset options out of the parsed namespace (``qihuang train``
    layers YAML values under them); otherwise each option's default is its field's default.
    ``extra_flags`` gives more spellings of a field (``{"model": ["--model_name_or_path"]}``);
    ``underscores`` also accepts ``--field_name`` beside ``--field-name``.
    """
    added: set[str] = getattr(parser, "_qihuang_fields", set())
    parser._qihuang_fields = added  # type: ignore[attr-defined]
    for model in models:
        title = getattr(model, "cli_title", "") or None
        group = parser.add_argument_group(title) if title else parser
        for name, info in model.model_fields.items():
            if name in exclude or name in added:
                continue
            added.add(name)
            extra = (extra_flags or {}).get(name, []) + ([f"--{name}"] if underscores and "_" in name else [])
            _add_field(group, name, info, defaults, extra)


def _add_field(group, name: str, info: FieldInfo, defaults: bool, extra: list[str]) -> None:
    cli = next((m for m in info.metadata if isinstance(m, Cli)), Cli())
    flags = [f"--{name.replace('_', '-')}"]
    flags += [f"--{a}" for a in cli.aliases] + [f for f in extra if f not in flags]
    kwargs = _option_kwargs(info.annotation)
    if cli.type is not None:
        kwargs["type"] = cli.type
    if cli.metavar:
        kwargs["metavar"] = cli.metavar
    if info.is_required():
        kwargs["required"] = True
    elif defaults:
        kwargs["default"] = info.get_default(call_default_factory=True)
    else:
        kwargs["default"] = argparse.SUPPRESS
    group.add_argument(*flags, dest=name, help=_help(info), **kwargs)
    for old in cli.deprecated:
        old_kwargs = {k: v for k, v in kwargs.items() if k in ("type", "choices")}
        group.add_argument(f"--{old}", dest=name, help=argparse.SUPPRESS, action=_Deprecated, new=flags[0],
                           default=argparse.SUPPRESS, **old_kwargs)


M = typing.TypeVar("M", bound=BaseModel)


def options_from_args(model: type[M], args: argparse.Namespace | dict[str, Any], **overrides: Any) -> M:
    """The ``model`` built from the parsed options that are its fields (and ``overrides``);
    invalid values raise :class:`ConfigError` naming the option."""
    values = args if isinstance(args, dict) else vars(args)
    picked = {k: v for k, v in values.items() if k in model.model_fields}
    picked.update(overrides)
    try:
        return model.model_validate(picked)
    except ValidationError as exc:
        title = getattr(model, "cli_title", "") or model.__name__
        raise ConfigError(_format_errors(exc, None, f"{title} options", flags=True)) from None
