"""Optional vLLM backend (``--engine vllm``) for GPU serving and batch inference at scale.

Same :class:`~qihuang.engines.base.Engine` contract as the transformers backend. Give it a merged
model directory (``qihuang export``) or a base model plus a LoRA adapter (served with vLLM's LoRA
support). Needs ``pip install vllm`` on a CUDA machine; it is documented but not exercised by the
CPU test suite. An encoded :class:`~qihuang.engines.base.Prompt` goes to vLLM as its token ids.
``stream`` returns the whole answer as one piece (the offline ``vllm.LLM`` API does not stream);
``qihuang serve --engine vllm`` still speaks SSE. Token counts and finish reasons come from vLLM's
outputs; a batch already handed to ``vllm.LLM.generate`` runs to its end (requests cancelled
before it starts are skipped).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

from qihuang.engines.base import (Cancel, GenerationParams, GenerationResult, Prompt, PromptLike, cancelled_result,
                                  is_cancelled)
from qihuang.engines.streaming import clean_text
from qihuang.errors import ConfigError


def _template_for(template: str | None, adapter: str | None, base: str):
    from qihuang.data.prompts import get_template, load_template

    if template is not None:
        return get_template(template)
    return (load_template(adapter) if adapter else None) or \
        (load_template(base) if Path(base).is_dir() else None) or get_template("auto")


class VLLMEngine:
    """Engine over ``vllm.LLM``."""

    def __init__(self, llm, tokenizer, template, model_name: str, lora_request=None):
        self.llm, self.tokenizer, self.template = llm, tokenizer, template
        self.model_name, self.lora_request = model_name, lora_request

    @classmethod
    def load(cls, model: str | None = "default", adapter: str | None = None, template: str | None = None,
             dtype: str = "auto", **llm_kwargs) -> VLLMEngine:
        """Start vLLM on ``model`` (resolved like the HF backend) with an optional LoRA ``adapter``."""
        try:
            import vllm
        except ImportError as exc:
            raise ConfigError("--engine vllm needs vLLM (`pip install vllm`, CUDA GPU); "
                              "use --engine hf on CPU") from exc
        from qihuang.models.load import is_adapter_dir, read_meta, resolve_model

        if adapter is None and is_adapter_dir(model):
            model, adapter = None, model
        if model is None:
            model = read_meta(adapter).get("base_model", "default") if adapter else "default"
        base = resolve_model(model)
        llm = vllm.LLM(model=base, dtype=dtype, enable_lora=adapter is not None, **llm_kwargs)
        lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("qihuang-adapter", 1, str(adapter))
        return cls(llm, llm.get_tokenizer(), _template_for(template, adapter, base), str(adapter or model), lora)

    def _sampling(self, params: GenerationParams, **extra):
        from vllm import SamplingParams

        stops = params.stop_with_template(self.template, self.tokenizer)
        return SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                              top_p=params.top_p, top_k=params.top_k if params.top_k > 0 else -1,
                              repetition_penalty=params.repetition_penalty, stop=stops or None,
                              seed=params.seed, **extra)

    @property
    def context_length(self) -> int:
        """vLLM's ``max_model_len`` for the loaded model."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    def encode(self, text: str) -> Prompt:
        return Prompt(text, tuple(self.tokenizer(text)["input_ids"]))

    def count_tokens(self, text: str) -> int:
        return self.encode(text).tokens

    def generate(self, prompts: Sequence[PromptLike], params: GenerationParams | None = None,
                 cancels: Sequence[Cancel | None] | None = None) -> list[GenerationResult]:
        """One result per prompt with vLLM's own token counts and finish reason."""
        cancels = list(cancels) if cancels is not None else [None] * len(prompts)
        todo = [i for i, ev in enumerate(cancels) if not is_cancelled(ev)]
        results = [cancelled_result() for _ in prompts]
        if todo:
            inputs = [{"prompt_token_ids": list(p.ids)} if isinstance(p, Prompt) else p
                      for p in (prompts[i] for i in todo)]
            outs = self.llm.generate(inputs, self._sampling(params or GenerationParams()),
                                     lora_request=self.lora_request, use_tqdm=False)
            for i, o in zip(todo, outs):
                gen = o.outputs[0]
                results[i] = GenerationResult(clean_text(gen.text), len(o.prompt_token_ids or []), len(gen.token_ids),
                                              "length" if gen.finish_reason == "length" else "stop")
        return results

    def stream(self, prompt: PromptLike, params: GenerationParams | None = None,
               cancel: Cancel | None = None) -> Generator[str, None, GenerationResult]:
        """The whole answer as one piece; returns its GenerationResult."""
        result = self.generate([prompt], params, [cancel])[0]
        if result.text:
            yield result.text
        return result

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        tok = self.tokenizer
        prompts, lengths = [], []
        for ctx, cont in requests:
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"]
            prompts.append({"prompt_token_ids": tok(ctx)["input_ids"] + cont_ids})
            lengths.append(len(cont_ids))
        sampling = self._sampling(GenerationParams(max_new_tokens=1), prompt_logprobs=0)
        outs = self.llm.generate(prompts, sampling, lora_request=self.lora_request, use_tqdm=False)
        scores = []
        for out, prompt, n in zip(outs, prompts, lengths):
            ids = prompt["prompt_token_ids"]
            positions = range(len(ids) - n, len(ids))
            scores.append(sum(out.prompt_logprobs[i][ids[i]].logprob for i in positions))
        return scores
