"""Generation speed, one prompt and a batch of 4: qihuang's default path (``load_engine("default")``,
backend "auto": the CTranslate2 engine, int8 weights, on the default install) vs llama.cpp on the same
model, side by side in one run, with transformers ``generate`` and qihuang's lean torch loop for scale.

    .venv/bin/python benchmarks/generation_bench.py [--tokens 32] [--threads 1,2] [--repeats 3] [--batch 4]

Arms are measured interleaved (round-robin, ``--repeats`` rounds after a warm-up round) and the median
is reported, so a load change on a shared machine hits every arm alike. Every arm generates exactly
``--tokens`` new tokens greedily (end of sequence suppressed).

References (when ``llama_cpp`` is importable, ``make install-llamacpp``): llama-cpp-python's own
``Llama.create_completion`` on the GGUF the default model is converted from (Q4_1 weights), reset
before every run so that each run prefills its prompt as a new question does; for the batch, the
better of ``Llama`` on the 4 prompts one after another and qihuang's llama.cpp engine decoding the 4 as
one multi-sequence batch on the same GGUF. Target: qihuang's default path >= 0.8x the best llama.cpp
figure, for one prompt and for the batch (exit 1 on MISSED). Without ``llama_cpp`` the ratios are
not measured and nothing is checked.

Gates (exit 2): the lean loop's greedy ids equal ``generate``'s at fp32 (and bf16 unless
``--no-bf16``), and so do the CTranslate2 engine's on float32 weights (the conversion is exact).
Reported, not gated: how many of the int8 default path's greedy tokens agree with fp32 ``generate``
on a few prompts (different weights).

Prints the CPU flags, the load average, torch's kernel capability and the CPU-emulation variables in
effect (``CT2_FORCE_CPU_ISA``, ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``: set them to measure an AVX2-only CPU on a newer one) and what the
llama.cpp build was compiled for.
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
TARGET = 0.8
EMULATION_ENV = ("CT2_FORCE_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_flags() -> str:
    from qihuang.models.load import cpu_info

    flags = cpu_info()[1]
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return " ".join(f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def emulation() -> str:
    """The CPU-emulation variables in effect ("none" when unset)."""
    set_ = [f"{k}={os.environ[k]}" for k in EMULATION_ENV if os.environ.get(k)]
    return " ".join(set_) if set_ else "none (native)"


def llama_build() -> str:
    """What the importable llama.cpp was compiled for (its SIMD flags), or why there is none."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "not importable"
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    keep = [p.strip() for p in info.split("|") if p.strip().split(" =")[0].split(":")[-1].strip()
            in ("AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8")]
    return ", ".join(keep) or info.strip()


# ---- engines ---------------------------------------------------------------------------------------
def load(dtype: str, decoder: str):
    from qihuang.engines.load import load_engine

    return load_engine("default", dtype=dtype, decoder=decoder, batch_size=4, backend="hf")


def default_engine():
    """What ``load_engine("default")`` gives (backend "auto"), and a one-line description of it."""
    from qihuang.engines.load import load_engine

    engine = load_engine("default", batch_size=4)
    name = engine.decoder.name
    if name in ("ct2", "llamacpp"):
        return engine, f"{name} engine, {engine.decoder.weights} weights"
    return engine, f"{name} decoder ({next(engine.model.parameters()).dtype})"


def render(engine, questions: list[str]) -> list[str]:
    return [engine.template.render(engine.tokenizer, [{"role": "user", "content": q}]) for q in questions]


def job_for(engine, prompts: list[str], tokens: int, ends: bool):
    """The engine's decoding job for ``prompts`` (its own encoding and context cut); ``ends=False``:
    no terminators, exactly ``tokens`` new ids."""
    from qihuang.engines.base import GenerationParams

    job = engine._job(engine._rows(prompts, tokens), GenerationParams(max_new_tokens=tokens), [], [])
    if not ends:
        job.terminators = set()
    return job


def engine_ids(engine, prompts: list[str], tokens: int, ends: bool = True) -> list[list[int]]:
    """Greedy new ids of every prompt, decoded as one batch by the engine's decoder."""
    import torch

    with torch.inference_mode():
        return engine.decoder.run(engine.model, job_for(engine, prompts, tokens, ends)).ids


def generate_ids(engine, prompts: list[str], tokens: int, force: bool = False) -> list[list[int]]:
    """Greedy new ids of every prompt from transformers' ``generate`` (one batch)."""
    import torch

    from qihuang.engines.base import GenerationParams
    from qihuang.engines.hf import GenerateDecoder

    job = job_for(engine, prompts, tokens, True)
    cfg = GenerateDecoder()._config(engine.model, GenerationParams(max_new_tokens=tokens), job.pad_id)
    if force:
        cfg.min_new_tokens = tokens
    with torch.inference_mode():
        out = engine.model.generate(input_ids=job.input_ids, attention_mask=job.attention_mask, generation_config=cfg)
    rows = out[:, job.input_ids.shape[1]:].tolist()
    return rows if force else [r[: next((i for i, t in enumerate(r) if t in job.terminators), len(r))] for r in rows]


def llama_reference(threads: int):
    """llama-cpp-python's ``Llama`` on the default GGUF: ``run(prompts, tokens)`` decodes the prompts one
    after another (reset before each) and returns the tokens made; None when not importable."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from llama_cpp import Llama

    from qihuang.models.load import default_gguf

    llm = Llama(model_path=str(default_gguf()), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    eos = llm.token_eos()

    def run(prompts: list[str], tokens: int) -> int:
        made = 0
        for p in prompts:
            llm.reset()  # else it reuses the previous run's prompt from its cache and skips the prefill
            made += llm.create_completion(p, max_tokens=tokens, temperature=0.0,
                                          logit_bias={eos: -1e9})["usage"]["completion_tokens"]
        return made

    return run


# ---- checks ----------------------------------------------------------------------------------------
def check_greedy(engines: dict, prompts: list[str], tokens: int) -> None:
    """Exit 2 unless the lean loop (fp32, bf16) and the float32 CTranslate2 engine reproduce
    ``generate``'s greedy ids; print how far the int8 default path agrees with fp32 ``generate``."""
    ok = True
    checks = [(f"lean {d}", f"generate {d}") for d in ("fp32", "bf16") if f"lean {d}" in engines]
    checks += [("ct2 float32", "generate fp32")] if "ct2 float32" in engines else []
    for name, ref_name in checks:
        ref = generate_ids(engines[ref_name], prompts[:1], tokens)[0]
        got = engine_ids(engines[name], prompts[:1], tokens)[0]
        ok &= got == ref
        print(f"greedy: {name} == {ref_name} for {len(ref)} tokens: {got == ref}"
              + ("" if got == ref else f"\n  {ref_name} {ref}\n  {name} {got}"))
    if not ok:
        print("MISMATCH: a decoder does not reproduce generate's greedy output at the same weights")
        sys.exit(2)
    ref = generate_ids(engines["generate fp32"], prompts, tokens, force=True)
    for name in [n for n in ("qihuang default", "lean int8", "qihuang llama.cpp Q4_1") if n in engines]:
        got = engine_ids(engines[name], prompts, tokens, ends=False)
        first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(ref, got)]
        same = [sum(x == y for x, y in zip(a, b)) for a, b in zip(ref, got)]
        print(f"agreement (not a gate): {name} vs generate fp32 greedy, {len(prompts)} prompts x {tokens} tokens: "
              f"first {sum(first)}/{tokens * len(prompts)} tokens before the first difference "
              f"(per prompt {first}); same token at {sum(same)}/{tokens * len(prompts)} positions")


# ---- timing ----------------------------------------------------------------------------------------
def _timer(name: str, engine, prompts: list[str], tokens: int, threads: int):
    if name.startswith("generate"):
        return lambda: sum(len(r) for r in generate_ids(engine, prompts, tokens, force=True))

    def run() -> int:
        engine.decoder.threads = threads  # the decoder's count (the lean loop follows torch's)
        return sum(len(r) for r in engine_ids(engine, prompts, tokens, ends=False))

    return run


def build_arms(engines: dict, prompts: list[str], tokens: int, threads: list[int], batch: int) -> dict:
    """``name -> (threads, run)``; ``run()`` generates and returns the number of new tokens. Arms whose
    name holds "llama.cpp" are the references."""
    sets = {"": prompts[:1]} | ({f" batch{batch}": prompts[:batch]} if batch > 1 else {})
    arms = {}
    for t in threads:
        ref = llama_reference(t)
        for suffix, group in sets.items():
            for name, eng in engines.items():
                if name == "ct2 float32" or (suffix and name not in ("generate fp32", "lean fp32", "qihuang default",
                                                                    "qihuang llama.cpp Q4_1")):
                    continue
                label = "llama.cpp: qihuang engine Q4_1" if name == "qihuang llama.cpp Q4_1" else name
                arms[f"{label}{suffix} t{t}"] = (t, _timer(name, eng, group, tokens, t))
            if ref is not None:
                arms[f"llama.cpp: llama-cpp-python Q4_1{suffix} t{t}"] = (t, lambda g=group, f=ref: f(g, tokens))
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


def verdict(med: dict[str, float], threads: list[int], batch: int, what: str) -> int:
    """Print qihuang's default path against llama.cpp for one prompt and the batch; the exit status
    (1 on MISSED)."""
    from qihuang.engines.decoding import decode_threads

    picked = decode_threads(max(threads))  # what the engine's thread policy picks under this load
    best_t = picked if picked in threads else max(threads, key=lambda t: med[f"qihuang default t{t}"])
    status = 0
    for suffix in [""] + ([f" batch{batch}"] if batch > 1 else []):
        what_run = f"a batch of {batch}" if suffix else "one prompt"
        ours = med[f"qihuang default{suffix} t{best_t}"]
        print(f"qihuang default path ({what}), {what_run}, {best_t} threads as its policy picks now: {ours:.1f} tok/s, "
              f"{ours / med[f'generate fp32{suffix} t{best_t}']:.2f}x generate fp32, "
              f"{ours / med[f'lean fp32{suffix} t{best_t}']:.2f}x the lean loop fp32")
        refs = {k: v for k, v in med.items() if k.startswith("llama.cpp") and k.rsplit(" t", 1)[0].endswith(
            "Q4_1" + suffix)}
        if not refs:
            print(f"  ratio vs llama.cpp, {what_run}: not measured (llama_cpp is not importable)")
            continue
        best = max(refs, key=refs.get)
        ratio = ours / refs[best]
        result = "met" if ratio >= TARGET else "MISSED"
        print(f"  ratio vs the best llama.cpp figure ({best}: {refs[best]:.1f} tok/s): {ratio:.2f}x "
              f"(target >= {TARGET}x): {result}")
        status |= result == "MISSED"
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to measure "
                        "(each count adds every arm: on a loaded 2-core machine 2 threads run at ~2 tok/s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="also measure one batch of this many prompts (0: no)")
    parser.add_argument("--no-int8", action="store_true", help="skip the torch int8-weights arm (lean loop)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 lean/generate arms and their check")
    args = parser.parse_args()
    import torch

    from qihuang.engines.load import load_engine
    from qihuang.models.load import choose_dtype

    threads = [int(t) for t in args.threads.split(",")]
    print(f"torch {torch.__version__}, kernel capability {torch.backends.cpu.get_cpu_capability()}, "
          f"default torch dtype {choose_dtype('auto', 'cpu')}")
    print(f"cpu flags: {cpu_flags()}; cores {os.cpu_count()}; load average {os.getloadavg()}")
    print(f"CPU emulation: {emulation()}; llama.cpp build: {llama_build()}", flush=True)
    dtypes = ["fp32"] + ([] if args.no_bf16 else ["bf16"])
    full = {"fp32": "float32", "bf16": "bfloat16"}
    engines = {f"{kind} {dt}": load(full[dt], kind) for dt in dtypes for kind in ("generate", "lean")}
    if not args.no_int8:
        engines["lean int8"] = load_engine("default", dtype=choose_dtype("auto", "cpu"), decoder="lean",
                                           batch_size=4, quantize="int8")
    engines["qihuang default"], what = default_engine()
    print(f"qihuang default path: {what}")
    if engines["qihuang default"].decoder.name != "lean":
        from qihuang.engines import ct2

        if ct2.available():
            engines["ct2 float32"] = load_engine("default", batch_size=4, backend="ct2", dtype="float32")
    if importlib.util.find_spec("llama_cpp") is not None:
        engines["qihuang llama.cpp Q4_1"] = load_engine("default", batch_size=4, backend="llamacpp")
    prompts = render(engines["lean fp32"], ([QUESTION] + MORE * args.batch)[:max(args.batch, 5)])
    torch.set_num_threads(max(threads))
    check_greedy(engines, prompts[:5], args.tokens)
    arms = build_arms(engines, prompts, args.tokens, threads, args.batch)
    rates = measure(arms, args.repeats)
    print(f"\n{args.tokens} new tokens, median of {args.repeats} interleaved runs; load average {os.getloadavg()}; "
          f"CPU emulation: {emulation()}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for name in arms:
        print(f"  {name:<48}{med[name]:>8.1f} tok/s   (runs {', '.join(f'{r:.1f}' for r in rates[name])})")
    sys.exit(verdict(med, threads, args.batch, what))


if __name__ == "__main__":
    main()
