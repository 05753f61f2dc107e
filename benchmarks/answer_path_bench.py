"""CPU time of the answering path per request, generation excluded: a baseline revision and this
checkout side by side in one run.

An instant engine stands in for the model: the default model's real tokenizer and template, and a
reply made at once from the prompt (its knowledge lines, then one sentence the knowledge does not
support, so verification and the ``drop`` policy have work to do). Everything else is real: the KB at
``$QIHUANG_HOME`` (linking, retrieval, triage with its learned backstop, verification). Each request
goes through what one front door does:

* ``api``: what ``qihuang serve`` does for one non-streamed request — fit the history into the
  context, then answer (baseline: ``serve.context.fit_history`` + ``Answerer.answer_batch``; this
  checkout: ``Answerer.plan`` + ``Answerer.answer_plans``);
* ``stream``: ``Answerer.stream`` with the ``drop`` policy (chat, web UI, streamed API);
* ``batch``: ``Answerer.answer_batch`` over 8 requests at a time (``qihuang infer``, evaluation).

The requests are the serve benchmark's questions, each once alone and once as a follow-up with the
previous question as an earlier turn. The baseline's ``src/`` is extracted with ``git archive`` (no
worktree, nothing in the repository changes). Each path of each side is measured in a fresh process,
the sides alternating, ``--rounds`` times: after a warm-up on other questions (the linker, the triage
backstop), one pass over the requests (each new to the process: what a new request costs) and a
second pass (its caches warm, shown apart). The median CPU milliseconds per request are printed with
their ratio, the share of this checkout's spent in ``KnowledgeBase.link`` (retrieval), the CPU model and
flags and the load average. Exits 1 when the ``api`` path is not at
least ``--min-ratio`` times cheaper than the baseline's.

    QIHUANG_HOME=/work/qh python benchmarks/answer_path_bench.py [--base 6a1f74e] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PATHS = ("api", "stream", "batch")


# ---- the measurement (runs inside a subprocess, on whichever source tree PYTHONPATH names) -------------
def _instant_engine():
    """The engine both versions can drive: texts of ``generate``/``generate_results`` at once."""
    try:
        from qihuang.engines.base import GenerationResult, Prompt
    except ImportError:  # the baseline: before qihuang.engines
        from qihuang.answer.engine import GenerationResult
        Prompt = None
    from qihuang.data.prompts import KNOWLEDGE_HEADER, get_template
    from qihuang.models.load import load_tokenizer, resolve_model

    class InstantEngine:
        model_name = "instant"
        context_length = 8192

        def __init__(self):
            self.tokenizer = load_tokenizer(resolve_model("default"))
            self.template = get_template("auto")

        def encode(self, text):
            return Prompt(text, tuple(self.tokenizer(text)["input_ids"]))

        def count_tokens(self, text):
            return len(self.tokenizer(text)["input_ids"])

        @staticmethod
        def reply(prompt: str) -> str:
            lines = [ln[2:] for ln in prompt.split(KNOWLEDGE_HEADER, 1)[-1].splitlines() if ln.startswith("- ")]
            facts = "；".join(lines)[:120] if KNOWLEDGE_HEADER in prompt else "建议咨询医生。"
            return f"根据知识库：{facts}。另外，它还能治疗肺炎。平时注意休息。"

        def _result(self, prompt):
            text, ids = (prompt.text, len(prompt.ids)) if Prompt is not None and isinstance(prompt, Prompt) \
                else (prompt, 0)
            out = self.reply(text)
            return GenerationResult(out, ids, len(out), "stop")

        def generate(self, prompts, params=None, cancels=None):
            return [self._result(p) for p in prompts]

        generate_results = generate  # the baseline's name for it

        def stream(self, prompt, params=None, cancel=None):
            result = self._result(prompt)
            for i in range(0, len(result.text), 4):
                yield result.text[i:i + 4]
            return result

        def loglikelihood(self, requests):
            return [0.0 for _ in requests]

    return InstantEngine()


def _requests() -> list[tuple[str, list]]:
    sys.path.insert(0, str(HERE))
    from serve_load import QUESTIONS

    alone = [(q, []) for q in QUESTIONS]
    follow = [(q, [[QUESTIONS[i - 1], "好的，我了解了。"]]) for i, q in enumerate(QUESTIONS)]
    return alone + follow


# the KB's lazily built lookups (type attributes, symptom listings, two hops) are built on questions that
# need them: these, none of them among the measured ones, build them before the measurement
MORE_WARM_UP = ["偏头痛吃什么药？", "肚子疼还拉肚子是什么病", "高血压和糖尿病有什么区别", "布洛芬有什么副作用"]


def _api(answerer, requests, params) -> None:
    if hasattr(answerer, "answer_plans"):
        for q, history in requests:
            answerer.answer_plans([answerer.plan(q, history, None, None, params.max_new_tokens)], params)
        return
    from qihuang.serve.context import fit_history  # the baseline's two steps

    for q, history in requests:
        messages = [{"role": r, "content": t} for pair in history for r, t in zip(("user", "assistant"), pair)]
        fitted = fit_history(answerer, q, messages, None, None, params.max_new_tokens)
        answerer.answer_batch([q], [fitted.history], params=params)


def _stream(answerer, requests, params) -> None:
    for q, history in requests:
        list(answerer.stream(q, history=history, params=params))


def _batch(answerer, requests, params) -> None:
    for i in range(0, len(requests), 8):
        chunk = requests[i:i + 8]
        answerer.answer_batch([q for q, _ in chunk], [h for _, h in chunk], params=params)


def _time_links(kb_class) -> list[float]:
    """Count the CPU seconds spent inside ``kb_class.link`` (retrieval: linking and lookups) from now on."""
    spent, depth, real = [0.0], [0], kb_class.link

    def timed(self, *args, **kwargs):
        depth[0] += 1
        start = time.process_time()
        try:
            return real(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:  # a link inside a link is counted once
                spent[0] += time.process_time() - start

    kb_class.link = timed
    return spent


def measure(path: str) -> dict[str, float]:
    """CPU milliseconds per request of ``path``: ``first``, one pass over the requests after a warm-up on
    other questions (what each new request costs), and ``again``, a second pass (its caches warm); with
    ``link_first`` and ``link_again``, the part of each spent in ``KnowledgeBase.link`` (retrieval)."""
    from qihuang.answer.answerer import Answerer
    from qihuang.kb import KnowledgeBase
    from qihuang.paths import default_db

    try:
        from qihuang.engines.base import GenerationParams
    except ImportError:
        from qihuang.answer.engine import GenerationParams
    sys.path.insert(0, str(HERE))
    from serve_load import WARM_UP

    kb = KnowledgeBase.open(default_db())
    answerer = Answerer(_instant_engine(), kb, ungrounded="answer", on_unsupported="drop")
    answerer.warm()
    params, requests, run = GenerationParams(max_new_tokens=16), _requests(), RUNS[path]
    warm = [*WARM_UP, *MORE_WARM_UP]
    run(answerer, [(q, []) for q in warm], params)  # lazily built parts (not these requests' caches)
    linking = _time_links(KnowledgeBase)
    out = {}
    for name in ("first", "again"):
        gc.collect()
        gc.disable()  # as timeit does: a collection falls into whichever pass happens to trigger it
        linking[0] = 0.0
        start = time.process_time()
        run(answerer, requests, params)
        out[name] = 1000 * (time.process_time() - start) / len(requests)
        out[f"link_{name}"] = 1000 * linking[0] / len(requests)
        gc.enable()
    return out


RUNS = {"api": _api, "stream": _stream, "batch": _batch}


# ---- the driver -------------------------------------------------------------------------------------------
def baseline_src(rev: str) -> Path:
    """The baseline's ``src/`` under the temp dir, extracted once with ``git archive``."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    root = Path(tempfile.gettempdir()) / f"qihuang-base-{sha}"
    if not (root / "src" / "qihuang").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    return root / "src"


def run_side(src: Path, path: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--measure", path], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"measurement on {src} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="6a1f74e", help="baseline revision (default: main before issue 27)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating before/after measurements of each path")
    ap.add_argument("--min-ratio", type=float, default=2.0, help="api path: before/after CPU time must reach it")
    ap.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    sys.path.insert(0, str(HERE))
    from serve_load import cpu_description

    sides = {"before": baseline_src(args.base), "after": REPO / "src"}
    print(f"CPU: {cpu_description()}; {os.cpu_count()} CPUs")
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min); baseline {args.base} ({sides['before']}), after: this "
          f"checkout; {args.rounds} rounds, each path of each side in a fresh process over {len(_requests())} requests")
    got = {(side, p): [] for side in sides for p in PATHS}
    for r in range(args.rounds):
        for p in PATHS:
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                got[side, p].append(run_side(sides[side], p))
        rows = (f"{p} {got['before', p][-1]['first']:.1f} -> {got['after', p][-1]['first']:.1f}" for p in PATHS)
        print(f"  round {r + 1}: " + "; ".join(rows) + f" ms/request (load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"{'path':>7} {'before_ms':>10} {'after_ms':>9} {'ratio':>6}   caches warm (a second pass): before, after, ratio")
    ratios = {}
    for p in PATHS:
        first = [statistics.median(x["first"] for x in got[side, p]) for side in sides]
        again = [statistics.median(x["again"] for x in got[side, p]) for side in sides]
        ratios[p] = first[0] / first[1]
        print(f"{p:>7} {first[0]:>10.2f} {first[1]:>9.2f} {ratios[p]:>5.2f}x   {again[0]:.2f}, {again[1]:.2f}, "
              f"{again[0] / again[1]:.2f}x")
    for p in PATHS:
        link = statistics.median(x["link_first"] for x in got["after", p])
        after = statistics.median(x["first"] for x in got["after", p])
        print(f"{p:>7} after: {link:.2f} ms/request of it in KnowledgeBase.link (retrieval), {link / after:.0%}")
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    if ratios["api"] < args.min_ratio:
        print(f"MISSED: api path {ratios['api']:.2f}x < {args.min_ratio}x less CPU per request")
        return 1
    print(f"target met: api path {ratios['api']:.2f}x >= {args.min_ratio}x less CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
