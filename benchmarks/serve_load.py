"""Load on the real API server, dynamic batching on vs off: completion tokens/s and requests/s at
1, 8 and 32 concurrent clients, against the engine's own single-stream decode speed.

Starts two ``qihuang serve`` processes (uvicorn on 127.0.0.1, free ports) on the same model, one with
``--max-batch 1`` (batching off: one request at a time) and one with ``--max-batch 8`` (``--batch-on``),
and drives both with the official ``openai`` client, level by level, in passes off, on, on, off (the same
questions for both), so both see the same machine load. In each pass each client sends ``--requests``
completions one after the other (``max_tokens`` from
``--max-tokens``); a 503 is retried after its ``Retry-After``. Completion tokens come from each
answer's ``usage`` field. Printed per level and server: requests answered, 5xx other than 503, 503s
seen, share answered on the first try, requests/s, completion tokens/s, p50/p95 latency (first try
to answer, retries included), the server's mean batch; then the on/off ratio of tokens/s, the CPU
model and flags and the load average before, during and after. Before the servers start, the same
engine's single-stream decode speed is measured in a separate process (greedy, a short prompt, the
tokens of an 80-token run minus those of a 16-token run over the time between: prefill excluded).

``--burst`` starts no server: the largest level's requests, planned as the server plans them, go through
the engine as one burst (as the batching server generates them), once for a single new token (the prefill) and
once for ``--max-tokens``, with the prefill's GFLOP/s: every request of a burst waits for nearly all of its
work, so this time bounds the p95 from below (figures only, exit 0).

``--src DIR`` runs the servers on another source tree (e.g. a baseline's ``src/``, to compare before
and after); the decode speed is always this checkout's engine. ``--engine`` picks the backend
(``hf`` = the torch lean engine, ``llamacpp`` when llama-cpp-python is installed).

Targets (exit 1 when one is missed): no 5xx and every request answered on both servers; at the
largest level at least ``--min-first-try`` of requests answered without retry and p95 latency <=
``--max-p95`` s (both servers); with batching, requests/s at the largest level >= ``--min-speedup`` x
requests/s at 1 client, and completion tokens/s >= ``--min-decode-share`` x the single-stream decode
speed; batching on is not slower than off at the largest level (tokens/s ratio >= ``--min-gain``).

    QIHUANG_HOME=/work/qh python benchmarks/serve_load.py [--model default] [--engine hf] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUESTIONS = [
    "感冒了应该吃什么药？", "高血压有哪些并发症", "医生你好，我最近老是头痛，是偏头痛吗", "糖尿病的症状有哪些？",
    "咳嗽两周了还没好怎么办", "胃炎要注意什么饮食", "阿司匹林有什么不良反应", "失眠多梦怎么调理",
    "小孩发烧38度要去医院吗", "肺炎是怎么引起的", "How is migraine treated?", "冠心病能治好吗",
    "我妈血糖有点高，平时吃什么好", "哮喘发作时该怎么处理", "高血脂需要吃药吗", "贫血有什么表现",
]

WARM_UP = ["你好", "头晕乏力是什么原因？", "布洛芬一天可以吃几次"]  # not among QUESTIONS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int, max_batch: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qihuang.cli", "serve", "--model", args.model, "--port", str(port),
           "--max-new-tokens", str(args.max_tokens), "--max-batch", str(max_batch), "--engine", args.engine,
           "--batch-size", str(max(max_batch, 1)), "--max-queue", str(args.max_queue), "--log-level", "warning"]
    if args.template:
        cmd += ["--template", args.template]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(args.src)} if args.src else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def decode_rate(model: str, engine: str, threads: int | None, rounds: int = 3) -> float:
    """Single-stream greedy decode tokens/s of the engine (this process: run by :func:`measure_decode`)."""
    import statistics

    import torch

    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine

    if threads:
        torch.set_num_threads(threads)
    eng = load_engine(model, backend=engine, batch_size=1)
    prompt = eng.encode(eng.template.render(eng.tokenizer, [{"role": "user", "content": "请介绍一下高血压的常见症状。"}]))

    def seconds(n: int) -> float:
        job = eng._job([list(prompt.ids)], GenerationParams(max_new_tokens=n), [], [])
        job.terminators, job.stop_hit = set(), None  # exactly n tokens
        start = time.perf_counter()
        done = eng._decode_run(job)
        assert len(done.ids[0]) == n, len(done.ids[0])
        return time.perf_counter() - start

    seconds(16)  # warm-up
    rates = [(80 - 16) / max(1e-9, seconds(80) - seconds(16)) for _ in range(rounds)]
    return statistics.median(rates)


def burst_figures(model: str, engine: str, threads: int | None, clients: int, max_tokens: int, batch: int) -> None:
    """Where the p95 of ``clients`` simultaneous requests goes (this process, no server): their grounded prompts
    through the engine as the batching server generates them (``batch`` per run), once for 1 new token
    (prefill) and once for ``max_tokens``; printed with the prompt tokens and the prefill's GFLOP/s (2 x the
    model's non-embedding parameters per prompt token). Every request of the burst waits for the whole
    burst's work except the last run's share, so its time bounds the p95 from below."""
    import torch

    from qihuang.answer.answerer import Answerer
    from qihuang.engines.base import GenerationParams
    from qihuang.engines.load import load_engine
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    if threads:
        torch.set_num_threads(threads)
    eng = load_engine(model, backend=engine, batch_size=batch)
    if threads and hasattr(eng.decoder, "threads"):
        eng.decoder.threads = threads
    answerer = Answerer(eng, KnowledgeBase.open(default_db()))
    plans = [answerer.plan(QUESTIONS[c % len(QUESTIONS)], [], None, None, max_tokens) for c in range(clients)]
    prompts = [p.prompt for p in plans if p.generates]
    rows = {i: list(p.ids) for i, p in enumerate(prompts)}
    runs = eng._groups(list(rows), rows)
    real = sum(map(len, rows.values()))
    padded = sum(len(g) * max(len(rows[i]) for i in g) for g in runs)
    flops = 2 * (sum(p.numel() for p in eng.model.parameters()) - eng.model.get_input_embeddings().weight.numel())
    print(f"burst of {clients}: {len(prompts)} grounded prompts, {real} prompt tokens ({real / len(prompts):.0f} "
          f"each; {padded} with padding) in {len(runs)} decoding runs of at most {batch}; {flops / 1e6:.0f} MFLOP "
          f"per prompt token", flush=True)
    eng.generate(prompts[:1], GenerationParams(max_new_tokens=2))  # warm-up
    for n in (1, max_tokens):
        start = time.perf_counter()
        eng.generate(prompts, GenerationParams(max_new_tokens=n))
        wall = time.perf_counter() - start
        rate = f"; prefill {padded / wall:.0f} tokens/s = {padded * flops / wall / 1e9:.1f} GFLOP/s" if n == 1 else ""
        print(f"  max_tokens {n:>3}: {wall:.1f} s for the burst{rate} (load {os.getloadavg()[0]:.2f})", flush=True)


def measure_decode(args) -> float:
    """:func:`decode_rate` in a fresh process on this checkout's engine (before the servers start)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    cmd = [sys.executable, __file__, "--decode-rate", "--model", args.model, "--engine", args.engine]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"decode measurement failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def cpu_description() -> str:
    """CPU model and the SIMD/matrix flags that matter for torch on CPU."""
    from qihuang.models.load import cpu_info

    model, flags = cpu_info()
    model = model or "unknown CPU"
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "asimd", "sve"]
    have = [f for f in wanted if f in flags]
    return f"{model}; flags: {', '.join(have) or 'none of ' + ', '.join(wanted)}"


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 600) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not start")


def one_request(client, model: str, question: str, max_tokens: int, max_tries: int = 30) -> dict:
    """One completion, retried on 503 after Retry-After; latency from the first try."""
    import openai

    start, tries = time.monotonic(), 0
    while True:
        tries += 1
        try:
            resp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                  max_tokens=max_tokens)
            return {"status": 200, "tries": tries, "latency": time.monotonic() - start,
                    "completion_tokens": resp.usage.completion_tokens if resp.usage else 0}
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or tries >= max_tries:
                return {"status": exc.status_code, "tries": tries, "latency": time.monotonic() - start}
            time.sleep(float(exc.response.headers.get("retry-after", "1")))
        except openai.APIConnectionError:
            return {"status": 0, "tries": tries, "latency": time.monotonic() - start}


def run_level(url: str, model: str, clients: int, per_client: int, max_tokens: int, offset: int = 0) -> dict:
    """One pass: ``clients`` threads, ``per_client`` requests each (questions from ``offset`` on)."""
    import httpx
    import openai

    before = httpx.get(url + "/health").json()["queue"]["batches"]
    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        for r in range(per_client):
            out = one_request(client, model, QUESTIONS[(offset + c * per_client + r) % len(QUESTIONS)], max_tokens)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    batches = httpx.get(url + "/health").json()["queue"]["batches"] - before
    return {"clients": clients, "results": results, "wall": wall, "batches": batches}


def summarize(passes: list[dict]) -> dict:
    """Figures of one server at one level over its passes (walls and batches added up)."""
    clients = passes[0]["clients"]
    results = [r for p in passes for r in p["results"]]
    wall, batches = sum(p["wall"] for p in passes), sum(p["batches"] for p in passes)
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok) or [float("nan")]
    return {"clients": clients, "requests": len(results), "ok": len(ok),
            "5xx": sum(1 for r in results if (r["status"] >= 500 and r["status"] != 503) or r["status"] == 0),
            "503s": sum(r["tries"] - (r["status"] != 503) for r in results),
            "first_try": sum(1 for r in ok if r["tries"] == 1) / max(1, len(results)),
            "rps": len(ok) / wall, "tps": sum(r["completion_tokens"] for r in ok) / wall, "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "batches": batches, "mean_batch": len(results) / max(1, batches)}


def check(off: list[dict], on: list[dict], args, decode: float) -> list[str]:
    missed = []
    for name, levels in (("off", off), ("on", on)):
        missed += [f"batching {name}, {lv['clients']} clients: {lv['5xx']} 5xx (other than 503) or connection errors"
                   for lv in levels if lv["5xx"]]
        top = levels[-1]
        if top["first_try"] < args.min_first_try:
            missed.append(f"batching {name}, {top['clients']} clients: {top['first_try']:.0%} answered on the first "
                          f"try < {args.min_first_try:.0%}")
        if top["ok"] < top["requests"]:
            missed.append(f"batching {name}, {top['clients']} clients: {top['requests'] - top['ok']} never answered")
        if top["p95"] > args.max_p95:
            missed.append(f"batching {name}, {top['clients']} clients: p95 {top['p95']:.1f} s > {args.max_p95} s")
    by = {lv["clients"]: lv for lv in on}
    top_on, top_off = on[-1], off[-1]
    if 1 in by and top_on["clients"] > 1 and top_on["rps"] < args.min_speedup * by[1]["rps"]:
        missed.append(f"batching on: requests/s at {top_on['clients']} clients {top_on['rps']:.2f} < "
                      f"{args.min_speedup} x {by[1]['rps']:.2f} at 1")
    gain = top_on["tps"] / top_off["tps"] if top_off["tps"] else float("inf")
    if gain < args.min_gain:
        missed.append(f"{top_on['clients']} clients: batching on {top_on['tps']:.1f} tokens/s vs off "
                      f"{top_off['tps']:.1f} ({gain:.2f}x < {args.min_gain}x)")
    if top_on["tps"] < args.min_decode_share * decode:
        missed.append(f"batching on, {top_on['clients']} clients: {top_on['tps']:.1f} completion tokens/s < "
                      f"{args.min_decode_share:.0%} of the engine's single-stream decode ({decode:.1f} tokens/s)")
    return missed


def row(lv: dict) -> str:
    return (f"{lv['clients']:>7} {lv['name']:>5} {lv['requests']:>8} {lv['ok']:>3} {lv['5xx']:>3} {lv['503s']:>4} "
            f"{lv['first_try']:>9.0%} {lv['rps']:>6.2f} {lv['tps']:>6.1f} {lv['p50']:>7.2f} {lv['p95']:>7.2f} "
            f"{lv['mean_batch']:>10.1f} {lv['load']:>5.2f}")


def _serve_both(args) -> list[tuple[subprocess.Popen, str]]:
    """Both servers, started one after the other (they share the KB's caches, built on first use)."""
    servers = []
    try:
        for max_batch in (1, args.batch_on):
            port = free_port()
            servers.append((start_server(args, port, max_batch), f"http://127.0.0.1:{port}"))
            wait_ready(*servers[-1])
    except BaseException:
        _stop(servers)
        raise
    return servers


def _stop(servers) -> None:
    for proc, _ in servers:
        proc.terminate()
    for proc, _ in servers:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model name/path for `qihuang serve --model`")
    ap.add_argument("--template", default=None)
    ap.add_argument("--engine", default="auto", help="`qihuang serve --engine` (hf: the torch lean engine)")
    ap.add_argument("--src", default=None, help="source tree the servers run (default: as installed / PYTHONPATH)")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=1, help="requests per client in each of the 2 passes per server")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-on", type=int, default=8, help="--max-batch of the batching server (the other: 1)")
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of each server")
    ap.add_argument("--min-first-try", type=float, default=0.95)
    ap.add_argument("--max-p95", type=float, default=10.0, help="seconds, at the largest level")
    ap.add_argument("--min-speedup", type=float, default=1.5, help="batching on: req/s at the largest level vs 1")
    ap.add_argument("--min-gain", type=float, default=1.0, help="tokens/s on/off at the largest level must reach it")
    ap.add_argument("--min-decode-share", type=float, default=0.5,
                    help="batching on: completion tokens/s at the largest level vs single-stream decode")
    ap.add_argument("--burst", action="store_true",
                    help="no servers: the largest level's prompts through the engine, prefill and all (figures)")
    ap.add_argument("--decode-rate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.decode_rate:
        print(decode_rate(args.model, args.engine, args.threads))
        return 0
    if args.burst:
        print(f"CPU: {cpu_description()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f} (1 min)", flush=True)
        burst_figures(args.model, args.engine, args.threads, max(int(x) for x in args.clients.split(",")),
                      args.max_tokens, args.batch_on)
        return 0
    levels = [int(x) for x in args.clients.split(",")]
    print(f"CPU: {cpu_description()}; {os.cpu_count()} CPUs", flush=True)
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min); model {args.model}; engine {args.engine}; max_tokens "
          f"{args.max_tokens}; {args.requests} requests per client; batching off = --max-batch 1, on = --max-batch "
          f"{args.batch_on}; servers on {args.src or 'the installed source'}", flush=True)
    decode = measure_decode(args)
    print(f"single-stream decode of the engine: {decode:.1f} tokens/s (load {os.getloadavg()[0]:.2f})", flush=True)
    import openai

    servers = _serve_both(args)
    off, on = [], []
    try:
        import httpx

        model = httpx.get(servers[0][1] + "/v1/models").json()["data"][0]["id"]
        for _, url in servers:  # warm-up: the first grounded answers load lazily built parts
            for question in WARM_UP:
                one_request(openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), model, question,
                            args.max_tokens)
        print("clients batch requests  ok 5xx 503s first_try  req/s  tok/s   p50_s   p95_s mean_batch  load")
        for c in levels:  # passes off, on, on, off: neither server always goes first
            passes: dict[str, list] = {"off": [], "on": []}
            for k, name in enumerate(("off", "on", "on", "off")):
                url = servers[0 if name == "off" else 1][1]
                offset = len(passes[name]) * c * args.requests  # both servers get the same questions
                passes[name].append(run_level(url, model, c, args.requests, args.max_tokens, offset))
            load = os.getloadavg()[0]
            for name, out in (("off", off), ("on", on)):
                out.append(dict(summarize(passes[name]), name=name, load=load))
                print(row(out[-1]), flush=True)
            print(f"{'':>7} on/off: {on[-1]['tps'] / max(off[-1]['tps'], 1e-9):.2f}x tokens/s, "
                  f"{on[-1]['rps'] / max(off[-1]['rps'], 1e-9):.2f}x requests/s", flush=True)
    finally:
        _stop(servers)
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    top = on[-1]
    print(f"batching on, {top['clients']} clients: {top['tps']:.1f} completion tokens/s = "
          f"{top['tps'] / decode:.0%} of single-stream decode")
    missed = check(off, on, args, decode)
    for line in missed:
        print("MISSED:", line)
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
