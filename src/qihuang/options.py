"""Typed option groups of the commands that are not training (that is :class:`qihuang.config.TrainConfig`).

Each option is one pydantic field with one description and one default; the commands build
their command-line options from these groups with :func:`qihuang.config.add_options`, so an
option has the same name, help and default everywhere it appears:

    ModelOptions       which model to load and how (infer, chat, serve, webui, eval)
    GenerationOptions  sampling and batching
    AnswerOptions      grounding and verification of the Answerer
    EvalOptions        `qihuang eval` run options (``qihuang.eval.run(..., options=EvalOptions(...))``)
    ServeOptions / WebuiOptions / ExportOptions
    BuildOptions       `qihuang data build` (``build_dataset(kb, out, **options.builder_kwargs())``)
    KnowledgeOptions   `qihuang data knowledge`
    SynthOptions       `qihuang data synth` (``synthesize(kb, out, SynthOptions(...))``)
    QuickstartOptions  `qihuang quickstart`
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qihuang.engines.load import BACKENDS
from qihuang.answer.policy import DEFAULT_POLICY, POLICIES, UNGROUNDED
from qihuang.config import Dtype
from qihuang.flags import Cli, split_list
from qihuang.flags import format_errors
from qihuang.errors import ConfigError

ENGINES = tuple(dict.fromkeys(("auto", *BACKENDS)))  # "auto" lets load_engine pick the backend
KNOWLEDGE_MODES = ("answer", "retrieved")
QA_ATTRIBUTES = ("symptoms", "drugs", "department", "indications", "adverse_reactions", "cause",
                 "complications", "examinations", "contraindications", "efficacy")


class Options(BaseModel):
    """Base of the option groups: unknown fields are errors; comma-separated strings fill list fields."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    cli_title: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, info in cls.model_fields.items():
                if name in values and "list" in str(info.annotation):
                    values[name] = split_list(values[name])
        return values

    @classmethod
    def of(cls, options: Self | None = None, **values: Any) -> Self:
        """``options`` with ``values`` replacing some fields (validated), or the group from ``values``."""
        data = {**(options.model_dump() if options is not None else {}), **values}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, None, f"{cls.cli_title or cls.__name__} options")) from None


# ---- fields shared by several groups (one definition each) ------------------------------------
KB_PATH = Field(None, description="knowledge-base file (default: $QIHUANG_HOME/kb.sqlite)")
GROUNDED = Field(None, description="ground answers in the knowledge base (default: on when the KB exists)")
BATCH_SIZE = Field(8, ge=1, description="prompts generated together")
SEED = Field(0, description="random seed (splits, sampling)")
DEV_RATIO = Field(0.05, ge=0.0, lt=1.0, description="share of entities in dev")
TEST_RATIO = Field(0.05, ge=0.0, lt=1.0, description="share of entities in test")
SHAREGPT = Field(False, description="also write ShareGPT files")
TEMPLATE = Field(None, description="prompt template name or file (default: the adapter's/model's saved one, "
                                   "else 'auto')")
TRUST_REMOTE_CODE = Field(False, description="let the model's own Python code run (older ChatGLM checkpoints "
                          "need it). Off by default: only for models whose code you have read or whose "
                          "publisher you trust")
HOST = Field("127.0.0.1", description="address to listen on")
DEPARTMENTS = Field(None, description="your hospital's department list (a text file, one department per line, "
                    "or a YAML list; 'NAME = STANDARD' for a name of your own, e.g. '内科 = 全科医学科'): "
                    "departments are named only from it, a missing one through its nearest parent (default: "
                    "the standard list in resources/departments.yaml)")


class ModelOptions(Options):
    """Which model answers, and how it is loaded."""

    cli_title: ClassVar[str] = "model"
    model: str | None = Field(None, description="base model: 'default' (embedded SmolLM2-135M-Instruct), a local "
                              "directory, a .gguf file or a Hugging Face hub id (default: the adapter's base, "
                              "else 'default')")
    adapter: str | None = Field(None, description="LoRA adapter directory (a training output)")
    template: str | None = TEMPLATE
    engine: Annotated[Literal[ENGINES], Cli(deprecated=("backend",))] = Field(
        "auto", description="generation backend: auto = the best one for the model and machine, hf = transformers, "
        "ct2 = CTranslate2 (int8 on CPU), llamacpp = llama.cpp (.gguf), vllm = GPU serving (`pip install vllm`; loads a merged export); "
        "those not installed are refused")
    dtype: Dtype = Field("auto", description="weights dtype (auto: bf16 on GPUs and CPUs with native bf16, "
                         "else float32)")
    threads: Annotated[int, Cli(aliases=("num-threads",))] = Field(0, ge=0, description="CPU threads for torch (0 = torch's default; 1 is fastest on a busy "
                         "shared machine)")
    trust_remote_code: bool = TRUST_REMOTE_CODE

    def load_engine(self, batch_size: int = 8) -> Any:
        """Load the engine these options describe (sets torch's thread count first when ``threads``)."""
        from qihuang.engines.load import load_engine

        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)
        return load_engine(model=self.model, adapter=self.adapter, template=self.template, backend=self.engine,
                           dtype=self.dtype, batch_size=batch_size, trust_remote_code=self.trust_remote_code)


class GenerationOptions(Options):
    """Sampling and batching of generation."""

    cli_title: ClassVar[str] = "generation"
    max_new_tokens: int = Field(256, ge=1, description="most tokens generated per answer")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: sample from the most likely tokens "
                         "whose probabilities add up to this (1 = off)")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0 = off)")
    repetition_penalty: float = Field(1.0, description="> 1 discourages repeats (1 = off)")
    batch_size: int = BATCH_SIZE

    def params(self) -> Any:
        """The engine's :class:`GenerationParams`."""
        from qihuang.engines.base import GenerationParams

        return GenerationParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                top_p=self.top_p, top_k=self.top_k, repetition_penalty=self.repetition_penalty)


class AnswerOptions(Options):
    """Grounding and verification of answers (the Answerer)."""

    cli_title: ClassVar[str] = "answering"
    grounded: bool | None = GROUNDED
    kb: Annotated[str | None, Cli(aliases=("db",))] = KB_PATH
    system: str | None = Field(None, description="system prompt (default: the template's)")
    on_unsupported: Literal[POLICIES] = Field(
        DEFAULT_POLICY, description="what to do with sentences whose claims the cited facts do not support (wrong "
        "attribute or an entity not in the facts): flag = keep and mark them, drop = remove those sentences or "
        "list items, regenerate = one more constrained attempt, then drop")
    ungrounded: Literal[UNGROUNDED] | None = Field(
        None, description="when the knowledge base has no facts for a question: abstain = a short message "
        "without calling the model, answer = the model answers after a notice (default: abstain with the "
        "embedded default model, answer with any other)")
    departments: Annotated[str | None, Cli(metavar="FILE")] = DEPARTMENTS

    def use_departments(self, kb: Any) -> None:
        """Make ``kb`` name only the departments of :attr:`departments` (nothing to do without a list)."""
        if self.departments is None:
            return
        if kb is None:
            raise ConfigError("--departments needs a knowledge base (grounded answers)")
        kb.use_departments(self.departments)


class EvalOptions(Options):
    """How ``qihuang.eval.run`` goes through a task's examples."""

    cli_title: ClassVar[str] = "evaluation"
    limit: int | None = Field(None, ge=1, description="evaluate only the first N examples")
    batch_size: int = BATCH_SIZE
    grounded: bool | None = GROUNDED
    resume: bool = Field(True, description="reuse the predictions of an interrupted run in the output directory "
                         "(--no-resume starts over)")
    progress: bool = Field(True, description="show a progress bar")
    label: str | None = Field(None, description="name of the run in comparisons (default: the output directory "
                              "name)")


class ServeOptions(Options):
    """The HTTP API server (``qihuang serve``)."""

    cli_title: ClassVar[str] = "server"
    host: str = HOST
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer KEY' (default: $QIHUANG_API_KEY "
                                "if set, else no key)")
    max_batch: int | None = Field(None, ge=1, description="requests generated together in one batch (default: "
                                  "--batch-size)")
    batch_wait_ms: float = Field(10.0, ge=0.0, description="how long a request waits for others to share its "
                                 "batch, in milliseconds")
    max_queue: int = Field(32, ge=0, description="requests that may wait beyond one batch (503 with Retry-After "
                           "beyond)")
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body in bytes (413 beyond)")
    served_name: str | None = Field(None, description="model id shown by /v1/models (default: qihuang-<adapter "
                                    "or model name>)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="server log "
                                                                                 "level")


class WebuiOptions(Options):
    """The Gradio chat page (``qihuang webui``)."""

    cli_title: ClassVar[str] = "web page"
    host: str = HOST
    port: int = Field(7860, ge=0, le=65535, description="port to listen on")
    max_queue: int = Field(8, ge=0, description="requests that may wait")
    title: str = Field("岐黄 qihuang", description="page title")


class ExportOptions(Options):
    """Merging a LoRA adapter into its base model (``qihuang export``)."""

    cli_title: ClassVar[str] = "export"
    adapter: str = Field(description="LoRA adapter directory")
    out: str = Field(description="output directory (must not exist unless --force)")
    model: str | None = Field(None, description="base model (default: the one recorded in the adapter dir)")
    template: str | None = Field(None, description="template to save (default: the adapter's)")
    dtype: Dtype = Field("float32", description="weights dtype of the merged model (auto = float32)")
    force: bool = Field(False, description="replace an existing output directory")
    trust_remote_code: bool = TRUST_REMOTE_CODE


def count_or_file(text: str) -> int | str:
    """``--phrasings``: a count of questions per entity and attribute, or a phrasings YAML file."""
    if text.strip().isdigit():
        return int(text)
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"expected a count or a phrasings YAML file, got {text!r}")
    return text


class BuildOptions(Options):
    """The template-built dataset (``qihuang data build``; :func:`qihuang.datagen.build_dataset`)."""

    cli_title: ClassVar[str] = "data build"
    db: Annotated[str | None, Cli(aliases=("kb",))] = KB_PATH
    max_examples: int | None = Field(None, ge=1, description="stop after this many examples")
    per_entity: int | None = Field(None, ge=1, description="at most this many examples per entity")
    attributes: list[str] | None = Field(None, description="canonical attributes, comma-separated (default: all)")
    kinds: list[str] = Field(["single", "scenario", "dialogue"], description="example kinds, comma-separated")
    phrasings: Annotated[int | str, Cli(type=count_or_file, metavar="N|FILE")] = Field(
        2, description="questions per entity and attribute, or a phrasings YAML file of your own wording (same "
        "shape as resources/phrasings.yaml; default: 2)")
    seed: int = SEED
    balanced: bool = Field(False, description="about equal examples per attribute; only QA-useful entity types "
                           "and attributes")
    sharegpt: bool = SHAREGPT
    knowledge: Literal[KNOWLEDGE_MODES] = Field(
        "answer", description="knowledge block of single questions: the answer's triples, or what retrieval returns "
        "for the question (with the answer's triples and some distractors)")
    test_entities: list[str] | None = Field(None, description="entities forced into the test split, comma-separated")
    dev_ratio: float = DEV_RATIO
    test_ratio: float = TEST_RATIO

    def builder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`qihuang.datagen.builder.build_dataset` (all but the KB and output)."""
        count, book = (self.phrasings, None) if isinstance(self.phrasings, int) else (2, self.phrasings)
        values = self.model_dump(exclude={"db", "phrasings"})
        values["kinds"] = tuple(values["kinds"])
        return {**values, "phrasings": count, "phrasebook": book}


class KnowledgeOptions(Options):
    """Knowledge-tuning examples from your questions (``qihuang data knowledge``)."""

    cli_title: ClassVar[str] = "knowledge tuning"
    questions: str = Field(description="questions: .txt one per line, or .json/.jsonl records")
    db: Annotated[str | None, Cli(aliases=("kb",))] = KB_PATH
    phrasings: Annotated[str | None, Cli(metavar="FILE")] = Field(
        None, description="a phrasings YAML file for the answer wording (default: resources/phrasings.yaml)")
    seed: int = SEED
    dev_ratio: float = DEV_RATIO
    test_ratio: float = TEST_RATIO
    sharegpt: bool = SHAREGPT


class SynthOptions(Options):
    """LLM-assisted synthesis (``qihuang data synth``; :func:`qihuang.datagen.synth.synthesize`)."""

    cli_title: ClassVar[str] = "synthesis"
    base_url: str = Field(description="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    model: str = Field(description="model name sent to the endpoint")
    n: int = Field(100, ge=1, description="number of fact samples to send")
    concurrency: int = Field(8, ge=1, description="requests in flight")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    retries: int = Field(5, ge=0, description="retries per request on 429, 5xx, timeouts and dropped connections "
                         "(the openai client's, honouring Retry-After)")
    seed: int = SEED
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature sent to the model")
    sharegpt: bool = SHAREGPT
    dev_ratio: float = DEV_RATIO
    test_ratio: float = TEST_RATIO
    prompts_path: str | None = Field(None, description="prompts YAML (default: resources/synth_prompts.yaml)")


class QuickstartOptions(Options):
    """Options of the main job (``qihuang quickstart``)."""

    cli_title: ClassVar[str] = "quickstart"
    model: str = Field("default", description="base model: 'default', a local dir, a .gguf or a hub id")
    source: str = Field("cmekg", description="KB source when the KB is empty: 'cmekg' or a file")
    db: Annotated[str | None, Cli(aliases=("kb",))] = KB_PATH
    out: str | None = Field(None, description="output directory (default: $QIHUANG_HOME/quickstart)")
    examples: int = Field(1200, ge=1, description="instruction examples to build")
    test_questions: int = Field(40, ge=1, description="held-out KB-QA questions")
    max_steps: Annotated[int | None, Cli(deprecated=("steps",))] = Field(
        None, ge=1, description="training steps (default: as many as --max-minutes allows)")
    # 46-51 steps of batch 8 on 2 cores of an Intel Xeon (fp32): tuned + grounded recall 78-84 %, and a fresh
    # clone's whole job, install included, 9 min 47 s there; an AVX2-only CPU gets ~31 (README: The main job)
    max_minutes: Annotated[float, Cli(deprecated=("budget-minutes",))] = Field(
        5.0, gt=0, description="training time budget in minutes")
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate")
    lora_rank: int = Field(16, ge=1, description="LoRA rank r")
    batch_size: int = Field(8, ge=1, description="training examples per step")
    cutoff_len: int = Field(384, gt=8, description="maximum tokens per training example")
    max_new_tokens: int = Field(64, ge=1, description="answer length in evaluation")
    eval_batch_size: int = Field(16, ge=1, description="questions answered together in evaluation")
    seed: int = SEED
    attributes: list[str] = Field(list(QA_ATTRIBUTES), description="attributes of the questions, comma-separated")
    fresh: bool = Field(False, description="redo every step instead of reusing finished ones")

    @property
    def out_dir(self) -> Path:
        from qihuang.paths import home

        return Path(self.out) if self.out else home() / "quickstart"
