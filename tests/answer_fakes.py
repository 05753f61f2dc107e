"""A scripted fake engine for answering / serving tests (no model needed).

It renders prompts with a real qihuang template and a character-level fake tokenizer, and
"answers" by quoting the knowledge block of the prompt, so tests can check that grounded
facts reach the prompt and the answer without loading any model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from qihuang.answer.engine import GenerationParams, cut_at_stop
from qihuang.data.prompts import KNOWLEDGE_HEADER, get_template


class CharTokenizer:
    """One token per character; enough for counting tokens and text templates."""

    eos_token = "</s>"
    bos_token = None
    bos_token_id = None
    eos_token_id = 0
    pad_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True, **kwargs):
        return {"input_ids": [ord(c) for c in text]}


def knowledge_reply(prompt: str) -> str:
    """Quote the knowledge lines of the prompt, or say that nothing was found."""
    if KNOWLEDGE_HEADER not in prompt:
        return "抱歉，我没有找到相关的知识。"
    block = prompt.split(KNOWLEDGE_HEADER, 1)[1]
    lines = [ln[2:] for ln in block.splitlines() if ln.startswith("- ")]
    return "根据知识库：" + "；".join(lines) + "。"


class FakeEngine:
    """Implements the Engine protocol with scripted replies; records every prompt it gets."""

    def __init__(self, reply: Callable[[str], str] = knowledge_reply, template: str = "med_template",
                 delay: float = 0.0, model_name: str = "fake-model"):
        self.tokenizer = CharTokenizer()
        self.template = get_template(template)
        self.model_name = model_name
        self.reply = reply
        self.delay = delay
        self.prompts: list[str] = []
        self.lock = threading.Lock()

    def _one(self, prompt: str, params: GenerationParams) -> str:
        with self.lock:
            self.prompts.append(prompt)
        text = cut_at_stop(self.reply(prompt), [*params.stop, *self.template.stop])[0]
        return text[: params.max_new_tokens]

    def generate(self, prompts: list[str], params: GenerationParams | None = None) -> list[str]:
        params = params or GenerationParams()
        if self.delay:
            time.sleep(self.delay)
        return [self._one(p, params) for p in prompts]

    def stream(self, prompt: str, params: GenerationParams | None = None) -> Iterator[str]:
        text = self._one(prompt, params or GenerationParams())
        for i in range(0, len(text), 3):
            if self.delay:
                time.sleep(self.delay / 10)
            yield text[i : i + 3]

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
