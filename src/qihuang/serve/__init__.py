"""Serving the :class:`~qihuang.answer.answerer.Answerer`.

- ``protocol``  OpenAI chat-completions wire format (pydantic), plus the extra ``qihuang`` field
- ``app``       FastAPI routes: ``/health``, ``/v1/models``, ``/v1/chat/completions`` (JSON or SSE)
- ``webui``     Gradio chat page with the triage banner and cited facts
- ``cli``       ``qihuang serve`` and ``qihuang webui``
"""
