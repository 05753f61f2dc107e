"""Load on the real API server: requests/s and latency at 1, 8 and 32 concurrent clients.

Starts ``qihuang serve`` (uvicorn on 127.0.0.1, a free port) on the given model and drives it
with the official ``openai`` client. Each client sends ``--requests`` completions one after the
other (``max_tokens`` from ``--max-tokens``); a 503 is retried after its ``Retry-After``. Printed
per level: requests answered, 5xx other than 503, 503 answers seen, the share answered on the first try, requests/s, p50/p95
latency (first try to answer, retries included) and the server's batches.

Targets (exit 1 when one is missed): no 5xx at any level; at the largest level at least
``--min-first-try`` of requests answered without retry and p95 latency <= ``--max-p95`` s;
requests/s at 8 clients >= ``--min-speedup`` x requests/s at 1 client (batching works).

    QIHUANG_HOME=/work/qh python benchmarks/serve_load.py [--model default] [--clients 1,8,32]
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

QUESTIONS = [
    "感冒了应该吃什么药？", "高血压有哪些并发症", "医生你好，我最近老是头痛，是偏头痛吗", "糖尿病的症状有哪些？",
    "咳嗽两周了还没好怎么办", "胃炎要注意什么饮食", "阿司匹林有什么不良反应", "失眠多梦怎么调理",
    "小孩发烧38度要去医院吗", "肺炎是怎么引起的", "How is migraine treated?", "冠心病能治好吗",
    "我妈血糖有点高，平时吃什么好", "哮喘发作时该怎么处理", "高血脂需要吃药吗", "贫血有什么表现",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qihuang.cli", "serve", "--model", args.model, "--port", str(port),
           "--max-new-tokens", str(args.max_tokens), "--max-batch", str(args.max_batch),
           "--max-queue", str(args.max_queue), "--log-level", "warning"]
    if args.template:
        cmd += ["--template", args.template]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
                    "completion_tokens": resp.usage.completion_tokens}
        except openai.APIStatusError as exc:
            if exc.status_code != 503 or tries >= max_tries:
                return {"status": exc.status_code, "tries": tries, "latency": time.monotonic() - start}
            time.sleep(float(exc.response.headers.get("retry-after", "1")))
        except openai.APIConnectionError:
            return {"status": 0, "tries": tries, "latency": time.monotonic() - start}


def run_level(url: str, model: str, clients: int, per_client: int, max_tokens: int) -> dict:
    import httpx
    import openai

    before = httpx.get(url + "/health").json()["queue"]["batches"]
    results: list[dict] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        for r in range(per_client):
            out = one_request(client, model, QUESTIONS[(c * per_client + r) % len(QUESTIONS)], max_tokens)
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
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency"] for r in ok) or [float("nan")]
    return {"clients": clients, "requests": len(results), "ok": len(ok),
            "5xx": sum(1 for r in results if (r["status"] >= 500 and r["status"] != 503) or r["status"] == 0),
            "503s": sum(r["tries"] - (r["status"] != 503) for r in results),
            "first_try": sum(1 for r in ok if r["tries"] == 1) / max(1, len(results)),
            "rps": len(ok) / wall, "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "batches": batches, "mean_batch": len(results) / max(1, batches)}


def check(levels: list[dict], args) -> list[str]:
    missed = [f"{lv['clients']} clients: {lv['5xx']} 5xx (other than 503) or connection errors"
              for lv in levels if lv["5xx"]]
    top = levels[-1]
    if top["first_try"] < args.min_first_try:
        missed.append(f"{top['clients']} clients: {top['first_try']:.0%} answered on the first try "
                      f"< {args.min_first_try:.0%}")
    if top["ok"] < top["requests"]:
        missed.append(f"{top['clients']} clients: {top['requests'] - top['ok']} requests never answered")
    if top["p95"] > args.max_p95:
        missed.append(f"{top['clients']} clients: p95 {top['p95']:.1f} s > {args.max_p95} s")
    by = {lv["clients"]: lv for lv in levels}
    if 1 in by and 8 in by and by[8]["rps"] < args.min_speedup * by[1]["rps"]:
        missed.append(f"requests/s at 8 clients {by[8]['rps']:.2f} < {args.min_speedup} x {by[1]['rps']:.2f} at 1")
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model name/path for `qihuang serve --model`")
    ap.add_argument("--template", default=None)
    ap.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    ap.add_argument("--min-first-try", type=float, default=0.95)
    ap.add_argument("--max-p95", type=float, default=60.0, help="seconds, at the largest level")
    ap.add_argument("--min-speedup", type=float, default=1.5)
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; model {args.model}", flush=True)
    proc = start_server(args, port)
    try:
        wait_ready(proc, url)
        import httpx

        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        one_request(__import__("openai").OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0),
                    model, "你好", args.max_tokens)  # warm-up
        print("clients requests  ok 5xx 503s first_try  req/s   p50_s   p95_s  batches mean_batch")
        results = []
        for c in levels:
            lv = run_level(url, model, c, args.requests, args.max_tokens)
            results.append(lv)
            print(f"{lv['clients']:>7} {lv['requests']:>8} {lv['ok']:>3} {lv['5xx']:>3} {lv['503s']:>4} "
                  f"{lv['first_try']:>9.0%} {lv['rps']:>6.2f} {lv['p50']:>7.2f} {lv['p95']:>7.2f} "
                  f"{lv['batches']:>8} {lv['mean_batch']:>10.1f}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    missed = check(results, args)
    for line in missed:
        print("MISSED:", line)
    print("all targets met" if not missed else f"{len(missed)} target(s) missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
