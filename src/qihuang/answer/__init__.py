"""Answering: one path from a question to a triaged, grounded, cited answer.

- ``plan``        ``AnswerPlan``: triage, link result, facts, the prompt and its token ids, made once per
                  request and fitted to the context window (oldest turns dropped first)
- ``triage``      red-flag triage; rules are data in ``resources/red_flags.yaml``
- ``grounding``   KB linking -> bounded facts -> citations
- ``verify``      claims of an answer checked against its cited facts (supported / wrong_attribute / unsupported)
- ``policy``      what is done with them (flag / drop / regenerate) and when the KB has nothing (abstain / answer)
- ``answerer``    ``Answerer`` / ``Answer``: plan, generation, verification, disclaimer (batched or streamed)
- ``infer``       batch inference over alpaca / HuaTuo JSON lines (resumable)
- ``chat``        the terminal chat loop
- ``cli``         ``qihuang infer``, ``qihuang chat``, ``qihuang export`` and the shared model options

Generation itself is :mod:`qihuang.engines`.
"""
