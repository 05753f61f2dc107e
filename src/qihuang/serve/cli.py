"""``qihuang serve`` (OpenAI-compatible HTTP API) and ``qihuang webui`` (Gradio chat page)."""

from __future__ import annotations

import os
import sys

from qihuang.errors import ConfigError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _model_name(args) -> str:
    from pathlib import Path

    source = args.adapter or args.model or "default"
    return args.served_name or ("qihuang-" + Path(str(source)).name if source != "default" else "qihuang-default")


def cmd_serve(args) -> int:
    import uvicorn

    from qihuang.answer.cli import build_answerer
    from qihuang.serve.app import ServeSettings, create_app

    api_key = args.api_key or os.environ.get("QIHUANG_API_KEY") or None
    args.max_batch = args.batch_size if args.max_batch is None else args.max_batch
    for name in ("max_queue", "max_batch", "max_tokens_limit", "max_body_bytes", "batch_wait_ms"):
        if getattr(args, name) < (0 if name in ("max_queue", "batch_wait_ms") else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.host not in _LOOPBACK and api_key is None:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    settings = ServeSettings(model_name=_model_name(args), api_key=api_key, max_queue=args.max_queue,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                             max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes)
    app = create_app(build_answerer(args), settings)
    print(f"qihuang API on http://{args.host}:{args.port}/v1 (model {settings.model_name!r})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_webui(args) -> int:
    from qihuang.answer.cli import build_answerer
    from qihuang.serve.webui import build_webui, launch

    launch(build_webui(build_answerer(args), title=args.title), host=args.host, port=args.port,
           max_queue=args.max_queue)
    return 0


def register(sub) -> None:
    from qihuang.answer.cli import add_answer_args

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health)",
                       description="Serve the answerer over an OpenAI-compatible API. Citations and triage are in "
                                   "the extra 'qihuang' field of each completion.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $QIHUANG_API_KEY if set, else no key)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="requests generated together in one batch (default: --batch-size)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to share its batch")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests that may wait beyond one batch (503 with Retry-After beyond)")
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 beyond)")
    p.add_argument("--served-name", default=None, help="model id shown by /v1/models")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_answer_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("webui", help="Gradio chat page with cited facts and the triage banner",
                       description="A browser chat page: the answer, the facts it cites and a red-flag banner.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-queue", type=int, default=8, help="requests that may wait")
    p.add_argument("--title", default="岐黄 qihuang")
    add_answer_args(p)
    p.set_defaults(func=cmd_webui)

