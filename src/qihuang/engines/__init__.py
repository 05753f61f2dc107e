"""Generation engines: one contract, several backends.

- ``base``       the contract: ``GenerationParams``, ``GenerationResult``, ``Prompt`` (text + token ids,
                 encoded once) and the ``Engine`` protocol (``encode``, ``generate`` -> results,
                 ``stream`` with cancellation, ``count_tokens``, ``context_length``, ``loglikelihood``)
- ``streaming``  a producer in, text pieces and a result out (hold-back of stop strings, cancellation)
- ``decoding``   what a decoder gets (``DecodeJob``) and gives back (``Decoded``); the shared per-step pieces
- ``hf``         ``HFEngine`` (transformers tokenizer + model) and ``GenerateDecoder`` (transformers' generate)
- ``ct2``        ``CT2Decoder``: CTranslate2 (int8 weights, converted once from the model: the CPU default)
- ``lean``       ``LeanDecoder``: qihuang's decode loop over a static KV cache (the torch path on CPU)
- ``llamacpp``   ``LlamaCppDecoder``: the same loop with llama.cpp as the forward pass
- ``vllm``       ``VLLMEngine`` (GPU, optional)
- ``int8``       weight-only int8 linear layers (opt-in)
- ``load``       ``load_engine``: the backend and decoder that suit the model and machine
"""

from qihuang.engines.base import Engine, GenerationParams, GenerationResult, Prompt

__all__ = ["Engine", "GenerationParams", "GenerationResult", "Prompt"]
