"""Answering: one path from a question to a triaged, grounded, cited answer.

- ``engine``      :class:`~qihuang.answer.engine.Engine` interface, ``GenerationParams``, the transformers
                  backend (batched left-padded ``generate``, ``stream``, ``loglikelihood``) and ``load_engine``
- ``vllm_engine`` optional vLLM backend (``--engine vllm``)
- ``triage``      red-flag triage; rules are data in ``resources/red_flags.yaml``
- ``grounding``   KB linking -> bounded facts -> citations
- ``verify``      claims of an answer checked against its cited facts (supported / wrong_attribute / unsupported)
- ``policy``      what is done with them (flag / drop / regenerate) and when the KB has nothing (abstain / answer)
- ``answerer``    ``Answerer`` / ``Answer``: triage, grounding, prompt, generation, verification, disclaimer
- ``infer``       batch inference over alpaca / HuaTuo JSON lines (resumable)
- ``chat``        the terminal chat loop
- ``cli``         ``qihuang infer``, ``qihuang chat``, ``qihuang export`` and the shared model options
"""
