"""Per-token cost of stop-string checks and stream detokenization, before vs after (issue 16).

Replays a real continuation (token ids of grounded-answer-like Chinese/English text, ``--tokens``
long) through each checker one token at a time, on the default model's tokenizer, and prints the
mean microseconds per token, side by side in one run:

- lean stop check: before, decode the last ``4 * len(longest stop) + 8`` tokens at every step; after,
  :class:`qihuang.engines.streaming.StopScanner` (decodes a window of 1-2 tokens, searches the new text);
- stream text: before, decode the whole continuation at every step (lean ``stream``; transformers'
  ``TextIteratorStreamer`` does the same); after, :class:`IncrementalDetokenizer`;
- transformers backend, batch of 4: before, ``batch_decode`` of every row's whole continuation at every
  step (the old StoppingCriteria); after, transformers' ``StopStringCriteria`` (``stop_strings``).

Checks (exit 1 on MISSED): each "after" is faster than its "before" at the full length; the
incremental text equals the full decode and both stop checks stop at the same token (exit 2 if not).

    QIHUANG_HOME=/work/qh python benchmarks/stop_check_bench.py [--tokens 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

TEXT = ("偏头痛是一种常见的慢性神经血管性疾病，多为偏侧、中重度、搏动样头痛，一般持续4-72小时，可伴有恶心、呕吐。"
        "常用药物包括布洛芬、对乙酰氨基酚和曲普坦类。Migraine is treated with NSAIDs, triptans and rest. "
        "建议规律作息，避免诱发因素，如果头痛突然加重或伴有视物模糊、肢体无力，请及时就医。")
STOPS = ["### 问题:", "<|im_end|>", "\n\n\n"]


def _per_token(fn, n: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean microseconds per token of ``fn()`` (which runs n steps)."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="default", help="whose tokenizer")
    args = ap.parse_args()

    import torch
    from transformers import StopStringCriteria

    from qihuang.engines.streaming import IncrementalDetokenizer, StopScanner
    from qihuang.models.load import load_tokenizer

    tok = load_tokenizer(args.model)
    ids = (tok(TEXT * 20, add_special_tokens=False)["input_ids"])[: args.tokens]
    n = len(ids)

    def dec(x):
        return tok.decode(x, skip_special_tokens=True)

    tail = 4 * max(len(s) for s in STOPS) + 8

    def old_stop(stops=STOPS) -> int | None:
        for i in range(1, n + 1):
            text = dec(ids[max(0, i - tail):i])
            if any(s in text for s in stops):
                return i
        return None

    def new_stop(stops=STOPS) -> int | None:
        scanner = StopScanner(stops, dec)
        for i, t in enumerate(ids, 1):
            if scanner.push([t]):
                return i
        return None

    def old_stream() -> str:
        text = ""
        for i in range(1, n + 1):
            text = dec(ids[:i])
        return text

    def new_stream() -> str:
        detok = IncrementalDetokenizer(dec)
        return "".join(detok.push([t]) for t in ids) + detok.flush()

    prompt = torch.tensor([tok("### 问题:\n偏头痛怎么办？\n\n### 回答:\n")["input_ids"]] * 4)
    rows = torch.cat([prompt, torch.tensor([ids] * 4)], dim=1)
    width = prompt.shape[1]
    criteria = StopStringCriteria(tok, STOPS)  # built once per generate() call (cached by transformers)

    def old_hf() -> None:
        for i in range(1, n + 1):
            texts = tok.batch_decode(rows[:, width:width + i], skip_special_tokens=True)
            [any(s in t for s in STOPS) for t in texts]

    def new_hf() -> None:
        for i in range(1, n + 1):
            criteria(rows[:, :width + i], None)

    start = time.perf_counter()
    StopStringCriteria(tok, ["never seen before ###"])
    build_ms = (time.perf_counter() - start) * 1e3
    print(f"load {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; tokenizer of {args.model}; "
          f"{n} tokens; stops {STOPS!r}", flush=True)
    bad = []
    if new_stream() != dec(ids):
        bad.append("incremental text differs from the full decode")
    for stops in (STOPS, ["及时就医"], ["NSAIDs"], ["，"]):
        if old_stop(stops) != new_stop(stops) or new_stop(stops) is None and stops != STOPS:
            bad.append(f"stop checks on {stops}: before at token {old_stop(stops)}, after at {new_stop(stops)}")
    pairs = [("lean stop check", old_stop, new_stop), ("stream text", old_stream, new_stream),
             ("transformers backend, batch 4", old_hf, new_hf)]
    print(f"{'check':<32} {'before us/token':>16} {'after us/token':>15} {'speedup':>8}")
    missed = []
    for name, before, after in pairs:
        b, a = _per_token(before, n, args.repeats), _per_token(after, n, args.repeats)
        print(f"{name:<32} {b:>16.1f} {a:>15.1f} {b / a:>7.1f}x", flush=True)
        if a >= b:
            missed.append(f"{name}: after {a:.1f} us/token >= before {b:.1f}")
    print(f"StopStringCriteria for new stop strings (first use, then cached): {build_ms:.0f} ms")
    print(f"load after {os.getloadavg()[0]:.2f} (1 min)")
    for line in bad:
        print("WRONG:", line)
    for line in missed:
        print("MISSED:", line)
    if bad:
        return 2
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
