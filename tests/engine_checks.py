"""Checks shared by the tests of the compiled decoders (CTranslate2, llama.cpp): the same streaming and
stop-string behaviour as the lean loop, on any engine."""

from __future__ import annotations

from streams import drain

from qihuang.engines.base import GenerationParams
from qihuang.engines.streaming import clean_text


def check_stream_matches_generate(engine, prompt: str) -> None:
    """Streaming gives more than one piece, and the text and result ``generate`` gives."""
    params = GenerationParams(max_new_tokens=12)
    pieces, result = drain(engine.stream(prompt, params))
    expected = engine.generate([prompt], params)[0]
    assert len(pieces) > 1 and clean_text("".join(pieces)) == expected.text == result.text
    assert result == expected


def check_stop_cuts_like(engine, reference, prompt: str) -> None:
    """A stop string from the middle of the answer cuts it there, as in ``reference`` (the lean loop),
    generated and streamed alike."""
    full = engine.generate([prompt], GenerationParams(max_new_tokens=16))[0].text
    stop = full[len(full) // 2: len(full) // 2 + 2]
    params = GenerationParams(max_new_tokens=16, stop=[stop])
    got = engine.generate([prompt], params)[0]
    assert got.text == full[: full.find(stop)].strip() and got.finish_reason == "stop"
    assert got == reference.generate([prompt], params)[0]
    assert "".join(engine.stream(prompt, params)).strip() == got.text


def write_visible_adapter(model_dir, out, targets: list[str]):
    """Save a LoRA adapter of ``model_dir`` whose B matrices are random (they start at zero), so that
    merging it changes the answers; returns ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from qihuang.models.load import load_model

    torch.manual_seed(1)
    peft = get_peft_model(load_model(str(model_dir), dtype="float32", trainable=True),
                          LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(out)
    return out
