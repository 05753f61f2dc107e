"""``qihuang serve`` (OpenAI-compatible HTTP API) and ``qihuang webui`` (Gradio chat page).

Their own options are :class:`qihuang.options.ServeOptions` and :class:`~qihuang.options.WebuiOptions`;
the model, generation and answering options are those of ``qihuang chat``."""

from __future__ import annotations

import os
import sys

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _model_name(args, served_name: str | None) -> str:
    from pathlib import Path

    source = args.adapter or args.model or "default"
    return served_name or ("qihuang-" + Path(str(source)).name if source != "default" else "qihuang-default")


def cmd_serve(args) -> int:
    import uvicorn

    from qihuang.answer.cli import build_answerer
    from qihuang.flags import options_from_args
    from qihuang.options import ServeOptions
    from qihuang.serve.app import ServeSettings, create_app

    o = options_from_args(ServeOptions, args)
    api_key = o.api_key or os.environ.get("QIHUANG_API_KEY") or None
    if o.host not in _LOOPBACK and api_key is None:
        print(f"warning: serving on {o.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    settings = ServeSettings(model_name=_model_name(args, o.served_name), api_key=api_key, max_queue=o.max_queue,
                             max_batch=o.max_batch or args.batch_size, batch_wait_ms=o.batch_wait_ms,
                             max_tokens_limit=o.max_tokens_limit, max_body_bytes=o.max_body_bytes)
    app = create_app(build_answerer(args), settings)
    print(f"qihuang API on http://{o.host}:{o.port}/v1 (model {settings.model_name!r})", file=sys.stderr)
    uvicorn.run(app, host=o.host, port=o.port, log_level=o.log_level)
    return 0


def cmd_webui(args) -> int:
    from qihuang.answer.cli import build_answerer
    from qihuang.flags import options_from_args
    from qihuang.options import WebuiOptions
    from qihuang.serve.webui import build_webui, launch

    o = options_from_args(WebuiOptions, args)
    launch(build_webui(build_answerer(args), title=o.title), host=o.host, port=o.port, max_queue=o.max_queue)
    return 0


def register(sub) -> None:
    from qihuang.answer.cli import add_answer_args
    from qihuang.flags import add_options
    from qihuang.options import ServeOptions, WebuiOptions

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, /health)",
                       description="Serve the answerer over an OpenAI-compatible API. Citations and triage are in "
                                   "the extra 'qihuang' field of each completion.")
    add_options(p, ServeOptions)
    add_answer_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("webui", help="Gradio chat page with cited facts and the triage banner",
                       description="A browser chat page: the answer, the facts it cites and a red-flag banner.")
    add_options(p, WebuiOptions)
    add_answer_args(p)
    p.set_defaults(func=cmd_webui)
