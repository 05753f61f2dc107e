"""A scripted fake engine for answering / serving tests (no model needed).

It renders prompts with a real qihuang template and a character-level fake tokenizer, and
"answers" by quoting the knowledge block of the prompt, so tests can check that grounded
facts reach the prompt and the answer without loading any model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence

from qihuang.data.prompts import KNOWLEDGE_HEADER, get_template
from qihuang.engines.base import GenerationParams, GenerationResult, Prompt, cancelled_result, is_cancelled
from qihuang.engines.streaming import cut_at_stop


class CharTokenizer:
    """One token per character; enough for counting tokens and text templates."""

    eos_token = "</s>"
    bos_token = None
    bos_token_id = None
    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def __init__(self):
        self.calls = 0  # texts tokenized (the counting tests read it)

    def __call__(self, text, add_special_tokens=True, **kwargs):
        self.calls += 1
        return {"input_ids": [ord(c) for c in text]}


def knowledge_reply(prompt: str) -> str:
    """Quote the knowledge lines of the prompt, or say that nothing was found."""
    if KNOWLEDGE_HEADER not in prompt:
        return "抱歉，我没有找到相关的知识。"
    block = prompt.split(KNOWLEDGE_HEADER, 1)[1]
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith("- ")]
    return "根据知识库：" + "；".join(lines) + "。"


class FakeEngine:
    """Keeps the Engine contract with scripted replies (one token per character); records every prompt
    it gets. ``context_length`` is settable (tests of context fitting)."""

    def __init__(self, reply: Callable[[str], str] = knowledge_reply, template: str = "med_template",
                 delay: float = 0.0, model_name: str = "fake-model", context_length: int = 32768):
        self.tokenizer = CharTokenizer()
        self.template = get_template(template)
        self.model_name = model_name
        self.reply = reply
        self.delay = delay
        self.context_length = context_length
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def encode(self, text: str) -> Prompt:
        return Prompt(text, tuple(self.tokenizer(text)["input_ids"]))

    def count_tokens(self, text: str) -> int:
        return self.encode(text).tokens

    def _one(self, prompt: str | Prompt, params: GenerationParams) -> GenerationResult:
        prompt = prompt if isinstance(prompt, Prompt) else self.encode(prompt)
        with self.lock:
            self.prompts.append(prompt.text)
        text = cut_at_stop(self.reply(prompt.text), [*params.stop, *self.template.stop])[0]
        cut = text[: params.max_new_tokens]
        return GenerationResult(cut, prompt.tokens, len(cut), "length" if len(text) > len(cut) else "stop")

    def generate(self, prompts: Sequence[str | Prompt], params: GenerationParams | None = None,
                 cancels=None) -> list[GenerationResult]:
        params = params or GenerationParams()
        cancels = list(cancels) if cancels is not None else [None] * len(prompts)
        if self.delay:
            time.sleep(self.delay)
        return [cancelled_result() if is_cancelled(ev) else self._one(p, params) for p, ev in zip(prompts, cancels)]

    def stream(self, prompt: str | Prompt, params: GenerationParams | None = None,
               cancel=None) -> Generator[str, None, GenerationResult]:
        if is_cancelled(cancel):
            return cancelled_result()
        result = self._one(prompt, params or GenerationParams())
        for i in range(0, len(result.text), 3):
            if self.delay:
                time.sleep(self.delay / 10)
            if is_cancelled(cancel):
                return GenerationResult(result.text[:i], result.prompt_tokens, i, "cancelled")
            yield result.text[i : i + 3]
        return result

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[float]:
        return [-float(len(cont)) for _, cont in requests]


def make_tiny_adapter(base_dir, out_dir, seed: int = 0):
    """A random (non-zero) LoRA adapter for the tiny model, with qihuang metadata and template."""
    import json
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qihuang.data.prompts import save_template

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the adapter change the greedy output clearly
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    out = Path(out_dir)
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    save_template(get_template("med_template"), out)
    (out / "qihuang_meta.json").write_text(json.dumps({"base_model": str(base_dir)}), encoding="utf-8")
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn on loopback in a thread (context manager -> base URL)."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
