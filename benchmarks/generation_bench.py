"""Generation speed of the default model: float32 vs bfloat16, unbatched vs batched.

    .venv/bin/python benchmarks/generation_bench.py [--model default] [--tokens 32] [--batch 4] [--threads N]

Every prompt generates exactly ``--tokens`` new tokens (min_new_tokens = max_new_tokens, greedy),
so the figures compare like with like. Prints tokens/s side by side and the ratios.
"""

from __future__ import annotations

import argparse
import time

QUESTIONS = [
    "偏头痛吃什么药？", "高血压有哪些并发症？", "感冒了应该挂什么科？", "糖尿病的常见症状有哪些？",
    "阿司匹林有哪些不良反应？", "冠心病需要做哪些检查？", "二甲双胍的禁忌症是什么？", "布洛芬可以和感冒药一起吃吗？",
]


def _timed_generate(engine, prompts: list[str], tokens: int) -> float:
    """Seconds to generate ``tokens`` new tokens for each prompt in one batch."""
    import torch

    enc = engine._encode(prompts, tokens)
    cfg = engine._gen_config(engine_params(tokens))
    cfg.min_new_tokens = tokens
    start = time.perf_counter()
    with torch.inference_mode():
        out = engine.model.generate(**enc, generation_config=cfg)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - enc["input_ids"].shape[1] == tokens
    return elapsed


def engine_params(tokens: int):
    from qihuang.answer.engine import GenerationParams

    return GenerationParams(max_new_tokens=tokens)


def measure(model: str, dtype: str, tokens: int, batch: int) -> dict:
    from qihuang.answer.engine import load_engine

    engine = load_engine(model, dtype=dtype, batch_size=batch)
    prompts = [engine.template.render(engine.tokenizer, [{"role": "user", "content": q}])
               for q in (QUESTIONS * (batch // len(QUESTIONS) + 1))[:batch]]
    _timed_generate(engine, prompts[:1], 4)  # warm-up
    single = sum(_timed_generate(engine, [p], tokens) for p in prompts)
    batched = _timed_generate(engine, prompts, tokens)
    n = tokens * len(prompts)
    result = {"unbatched": n / single, "batched": n / batched}
    print(f"  {dtype}: unbatched {result['unbatched']:.1f} tok/s, batched {result['batched']:.1f} tok/s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    import torch

    from qihuang.answer.engine import cpu_supports_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_supports_bf16()}, threads {torch.get_num_threads()}")
    results = {dt: measure(args.model, dt, args.tokens, args.batch) for dt in ("float32", "bfloat16")}
    print(f"\n{'tokens/s':<12}{'float32':>10}{'bfloat16':>10}{'bf16/fp32':>11}")
    for mode in ("unbatched", "batched"):
        fp, bf = results["float32"][mode], results["bfloat16"][mode]
        print(f"{mode:<12}{fp:>10.1f}{bf:>10.1f}{bf / fp:>10.2f}x")
    for dt in ("float32", "bfloat16"):
        r = results[dt]
        print(f"batched/unbatched ({dt}, batch {args.batch}): {r['batched'] / r['unbatched']:.2f}x")


if __name__ == "__main__":
    main()
