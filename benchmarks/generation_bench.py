"""Generation speed, one prompt: qihuang's default path (``load_engine("default")``, backend "auto":
llama.cpp when llama-cpp-python is installed) vs transformers ``generate`` vs qihuang's lean decode loop
(fp32, bf16, int8 weights) vs llama-cpp-python's own ``Llama`` on the same model and prompt, side by
side in one run.

    .venv/bin/python benchmarks/generation_bench.py [--tokens 32] [--threads 1,2] [--repeats 3]

Arms are measured interleaved (round-robin, ``--repeats`` rounds) and the median is reported, so a
load change on a shared machine hits every arm alike. Every arm generates exactly ``--tokens`` new
tokens greedily. Before timing, the lean loop's greedy output must equal ``generate``'s for the
first ``--tokens`` tokens at the same dtype, and so must qihuang's llama.cpp engine on an F32 GGUF
of the same weights (exit 2 on a mismatch). The llama.cpp arms run when ``llama_cpp`` is importable
(``make install-llamacpp``): the reference is ``Llama.create_completion`` on the GGUF that the default
model is converted from (Q4_1 weights), reset before every run so that each run prefills its prompt as
a new question does; qihuang's engine also runs its F32 and Q8_0 exports (the weights a tuned model
gets). Prints CPU flags and load average with the figures; target: qihuang's default path >= 0.5x
llama.cpp (exit 1 on MISSED).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

QUESTION = "偏头痛吃什么药？"
MORE = ["高血压有哪些并发症？", "感冒了应该挂什么科？", "糖尿病的常见症状有哪些？", "阿司匹林有哪些不良反应？",
        "冠心病需要做哪些检查？", "二甲双胍的禁忌症是什么？", "布洛芬可以和感冒药一起吃吗？"]
TARGET = 0.5


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        flags = set()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def load(dtype: str, decoder: str):
    from qihuang.engines.load import load_engine

    return load_engine("default", dtype=dtype, decoder=decoder, batch_size=1, backend="hf")


def default_engine():
    """What ``load_engine("default")`` gives (backend "auto"), and a one-line description of it."""
    from qihuang.engines.load import load_engine

    engine = load_engine("default", batch_size=4)
    if engine.decoder.name == "llamacpp":
        return engine, f"llama.cpp engine, {engine.decoder.weights} weights"
    return engine, f"{engine.decoder.name} decoder ({next(engine.model.parameters()).dtype})"


def cpp_engine(gguf_type: str):
    """qihuang's llama.cpp engine on the default model exported as ``gguf_type`` (f32, q8_0)."""
    from qihuang.engines.load import load_engine

    return load_engine("default", batch_size=4, backend="llamacpp", gguf_type=gguf_type)


def int8_engine(dtype: str):
    """The lean engine with int8 weight-only linear layers computing in ``dtype``."""
    from qihuang.engines.load import load_engine

    return load_engine("default", dtype=dtype, decoder="lean", batch_size=1, quantize="int8")


def lean_ids(engine, prompt: str | list[str], tokens: int, ends: bool = True) -> list[int]:
    """Greedy new ids of the first prompt (all prompts decoded as one batch)."""
    import torch

    from qihuang.engines.base import GenerationParams
    from qihuang.engines.lean import decode

    job = batch_job(engine, prompt, tokens)
    with torch.inference_mode():
        done = decode(engine.model, job.input_ids, job.attention_mask, GenerationParams(max_new_tokens=tokens),
                      job.terminators if ends else set(), job.pad_id)
    return done.ids[0]


def batch_job(engine, prompt: str | list[str], tokens: int):
    """The engine's left-padded batch of the prompts (its own encoding and context cut)."""
    from qihuang.engines.base import GenerationParams

    prompts = prompt if isinstance(prompt, list) else [prompt]
    return engine._job(engine._rows(prompts, tokens), GenerationParams(max_new_tokens=tokens), [], [])


def cpp_ids(engine, prompt: str | list[str], tokens: int, ends: bool = True) -> list[int]:
    """Greedy new ids of the first prompt from qihuang's llama.cpp engine (all prompts as one batch)."""
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.decoding import cores, decode_threads
    from qihuang.engines.llamacpp import decode_rows

    job = batch_job(engine, prompt, tokens)
    threads = engine.decoder.threads or decode_threads(cores())
    done = decode_rows(engine.decoder.runner, job.rows, GenerationParams(max_new_tokens=tokens),
                       job.terminators if ends else set(), threads)
    return done.ids[0]


def engine_ids(engine, prompt: str | list[str], tokens: int, ends: bool = True) -> list[int]:
    """Greedy new ids of the first prompt from a lean or llama.cpp engine."""
    if engine.decoder.name == "llamacpp":
        return cpp_ids(engine, prompt, tokens, ends)
    return lean_ids(engine, prompt, tokens, ends)


def generate_ids(engine, prompt: str | list[str], tokens: int, force: bool = False) -> list[int]:
    """Greedy new ids of the first prompt from ``generate`` (all prompts as one batch)."""
    import torch

    from qihuang.engines.base import GenerationParams

    from qihuang.engines.hf import GenerateDecoder

    job = batch_job(engine, prompt, tokens)
    cfg = GenerateDecoder()._config(engine.model, GenerationParams(max_new_tokens=tokens), job.pad_id)
    if force:
        cfg.min_new_tokens = tokens
    with torch.inference_mode():
        out = engine.model.generate(input_ids=job.input_ids, attention_mask=job.attention_mask, generation_config=cfg)
    new = out[0, job.input_ids.shape[1]:].tolist()
    ends = job.terminators
    return new if force else new[: next((i for i, t in enumerate(new) if t in ends), len(new))]


def llama_arm(prompt: str, tokens: int, threads: int):
    """A timing function for llama.cpp on the default GGUF, or a reason why there is none."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None, "llama_cpp is not importable (make install-llamacpp builds llama-cpp-python)"
    from llama_cpp import Llama

    from qihuang.models.load import default_gguf

    llm = Llama(model_path=str(default_gguf()), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    eos = llm.token_eos()

    def run() -> int:
        llm.reset()  # else it reuses the previous run's prompt from its cache and skips the prefill
        out = llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, logit_bias={eos: -1e9})
        return out["usage"]["completion_tokens"]

    return run, ""


def ct2_arm(prompt: str, tokens: int, threads: int, compute_type: str):
    """A timing function for CTranslate2 (``pip install ctranslate2``, a binary wheel) on the default
    model converted once under ``$QIHUANG_HOME/models/ct2-...``, or a reason why there is none."""
    if importlib.util.find_spec("ctranslate2") is None:
        return None, "ctranslate2 is not importable (pip install ctranslate2: a binary wheel)"
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from qihuang.models.load import DEFAULT_MODEL_DIRNAME, load_tokenizer, resolve_model
    from qihuang.paths import models_dir

    out = models_dir() / f"ct2-{DEFAULT_MODEL_DIRNAME}"
    if not (out / "model.bin").is_file():
        TransformersConverter(resolve_model("default")).convert(str(out), force=True)
    tok = load_tokenizer("default")
    pieces = tok.convert_ids_to_tokens(tok(prompt)["input_ids"])
    gen = ctranslate2.Generator(str(out), device="cpu", compute_type=compute_type, intra_threads=threads)

    def run() -> int:
        res = gen.generate_batch([pieces], max_length=tokens, min_length=tokens, sampling_topk=1,
                                 include_prompt_in_result=False)
        return len(res[0].sequences_ids[0])

    return run, ""


def check_greedy(engines: dict, prompt: str, tokens: int, base: str) -> None:
    """The lean loop must reproduce ``generate``'s greedy ids at fp32 and bf16 (exit 2 otherwise)."""
    ok = True
    for dt in [d for d in ("fp32", "bf16") if f"lean {d}" in engines]:
        ref = generate_ids(engines[f"generate {dt}"], prompt, tokens)
        got = lean_ids(engines[f"lean {dt}"], prompt, tokens)
        ok &= got == ref
        print(f"greedy {dt}: lean == generate for {len(ref)} tokens: {got == ref}"
              + ("" if got == ref else f"\n  generate {ref}\n  lean     {got}"))
    if not ok:
        print("MISMATCH: the lean loop does not reproduce generate's greedy output")
        sys.exit(2)
    if "lean int8" in engines:
        ref = generate_ids(engines[f"generate {base}"], prompt, tokens)
        got = lean_ids(engines["lean int8"], prompt, tokens)
        agree = next((i for i, (x, y) in enumerate(zip(ref, got)) if x != y), min(len(ref), len(got)))
        print(f"greedy int8 (weights; {base} activations) vs {base} (different weights, not a gate): "
              f"first {agree} of {len(ref)} tokens agree")
    if "llamacpp F32" in engines:
        ref = generate_ids(engines["generate fp32"], prompt, tokens)
        got = cpp_ids(engines["llamacpp F32"], prompt, tokens)
        print(f"greedy fp32: qihuang llama.cpp engine (F32 GGUF) == generate for {len(ref)} tokens: {got == ref}"
              + ("" if got == ref else f"\n  generate {ref}\n  llamacpp {got}"))
        if got != ref:
            print("MISMATCH: the llama.cpp engine on F32 weights does not reproduce generate's greedy output")
            sys.exit(2)


def _timer(name: str, engine, prompts: str | list[str], tokens: int, threads: int):
    rows = len(prompts) if isinstance(prompts, list) else 1
    if name.startswith("generate"):
        return lambda: rows * len(generate_ids(engine, prompts, tokens, force=True))

    def run() -> int:
        engine.decoder.threads = threads  # the decoder's count (None/0: its policy; the lean arms follow torch's)
        return rows * len(engine_ids(engine, prompts, tokens, ends=False))

    return run


def build_arms(engines: dict, prompt: str, tokens: int, threads: list[int], batch: int, base: str) -> dict:
    """``name -> (threads, run)``; ``run()`` generates and returns the number of new tokens."""
    arms = {}
    for t in threads:
        for name, eng in engines.items():
            arms[f"{name} t{t}"] = (t, _timer(name, eng, prompt, tokens, t))
        for ct in ("float32", "int8_float32"):
            run, why = ct2_arm(prompt, tokens, t, ct)
            if run is None:
                print(f"CTranslate2 arm skipped: {why}")
                break
            arms[f"ctranslate2 {ct} t{t}"] = (t, run)
        run, why = llama_arm(prompt, tokens, t)
        if run is None:
            print(f"llama.cpp arm skipped: {why}")
        else:
            arms[f"llama.cpp Q4_1 t{t}"] = (t, run)
    if batch > 1:
        eng0 = engines["lean fp32"]
        prompts = [eng0.template.render(eng0.tokenizer, [{"role": "user", "content": q}])
                   for q in ([QUESTION] + MORE * batch)[:batch]]
        for name in ("generate fp32", f"lean {base}", "qihuang default"):
            arms[f"{name} batch{batch} t{threads[0]}"] = (threads[0], _timer(name, engines[name], prompts, tokens,
                                                                            threads[0]))
    return arms


def measure(arms: dict, repeats: int) -> dict[str, list[float]]:
    """Tokens/s of every arm, ``repeats`` interleaved rounds after one warm-up round."""
    import torch

    for t, fn in arms.values():
        torch.set_num_threads(t)
        fn()
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(repeats):
        for name, (t, fn) in arms.items():
            torch.set_num_threads(t)
            start = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - start))
        print("  round: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    return rates


def verdict(med: dict[str, float], threads: list[int], what: str) -> int:
    """Print qihuang's default path against the other engines; the exit status (1 on MISSED)."""
    from qihuang.engines.decoding import decode_threads

    picked = decode_threads(max(threads))  # what the engine's thread policy picks under this load
    best_t = picked if picked in threads else max(threads, key=lambda t: med[f"qihuang default t{t}"])
    ours = med[f"qihuang default t{best_t}"]
    if f"ctranslate2 float32 t{best_t}" in med:
        ct2 = med[f"ctranslate2 float32 t{best_t}"]
        print(f"ctranslate2 fp32 (not yet an engine backend): {ct2:.1f} tok/s, {ours / ct2:.2f}x of it is qihuang's")
    print(f"qihuang default path ({what}, {best_t} threads as its policy picks now): {ours:.1f} tok/s, "
          f"{ours / med[f'generate fp32 t{best_t}']:.2f}x transformers generate fp32")
    llama = [v for k, v in med.items() if k.startswith("llama.cpp Q4_1")]
    if not llama:
        print("ratio qihuang/llama.cpp: not measured (llama.cpp arm skipped)")
        return 0
    ratio = ours / max(llama)
    result = "met" if ratio >= TARGET else "MISSED"
    print(f"ratio qihuang default ({best_t} threads) / llama-cpp-python Llama Q4_1 (best thread count): "
          f"{ratio:.2f}x (target >= {TARGET}x): {result}")
    return 1 if result == "MISSED" else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to measure "
                        "(each count adds every arm: on a loaded 2-core machine 2 threads run at ~2 tok/s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="also measure one batch of this many prompts (0: no)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8-weights arm")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 arms and their greedy check "
                        "(not allowed where bf16 is the default dtype)")
    args = parser.parse_args()
    import torch

    from qihuang.models.load import choose_dtype, cpu_supports_bf16

    threads = [int(t) for t in args.threads.split(",")]
    default_dtype = choose_dtype("auto", "cpu")
    base = "bf16" if default_dtype == "bfloat16" else "fp32"
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_supports_bf16()} -> default dtype {default_dtype}")
    print(f"cpu flags: {cpu_flags()}; cores {os.cpu_count()}; load average {os.getloadavg()}", flush=True)
    if args.no_bf16 and base == "bf16":
        parser.error("--no-bf16: bf16 is the default dtype on this CPU")
    dtypes = (("fp32", "float32"),) if args.no_bf16 else (("fp32", "float32"), ("bf16", "bfloat16"))
    if args.no_bf16:
        print("bf16 arms and their greedy check skipped (--no-bf16)")
    engines = {f"{kind} {dt}": load(full, kind) for dt, full in dtypes for kind in ("generate", "lean")}
    if not args.no_int8:
        engines["lean int8"] = int8_engine(default_dtype)
    engines["qihuang default"], what = default_engine()
    print(f"qihuang default path: {what}")
    if importlib.util.find_spec("llama_cpp") is not None:
        engines["llamacpp F32"], engines["llamacpp Q8_0"] = cpp_engine("f32"), cpp_engine("q8_0")
    eng0 = engines["lean fp32"]
    prompt = eng0.template.render(eng0.tokenizer, [{"role": "user", "content": QUESTION}])
    torch.set_num_threads(max(threads))
    check_greedy(engines, prompt, args.tokens, base)
    arms = build_arms(engines, prompt, args.tokens, threads, args.batch, base)
    rates = measure(arms, args.repeats)
    print(f"\n{args.tokens} new tokens, median of {args.repeats} interleaved runs; load average {os.getloadavg()}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name in arms:
        print(f"  {name:<30}{med[name]:>8.1f} tok/s   (runs {', '.join(f'{r:.1f}' for r in rates[name])})")
    sys.exit(verdict(med, threads, what))


if __name__ == "__main__":
    main()
