"""Instruction data from the knowledge base.

    phrasings.py   question phrasings (resources/phrasings.yaml) and answers composed from KB values: answer_for()
    kbview.py      the KB in memory for building: facts per attribute, most telling values first
    scenarios.py   symptoms -> the diseases sharing most of them (hedged), with departments
    dialogues.py   2–4 turn dialogues about one entity, in a natural order per entity type
    splits.py      train/dev/test by entity (seeded), question keys and de-duplication
    io.py          atomic dataset directory: split files, ShareGPT, dataset_info.json, stats.json
    builder.py     build_dataset(): `qihuang data build`
    llm_client.py  async chat client on the openai client (qihuang.llm) with counters and a reply cache
    synth.py       synthesize(): `qihuang data synth` (LLM-written, consistency-filtered)
    preferences.py making preference pairs for reward modelling / DPO: `qihuang data prefs`
    validate.py    `qihuang data validate` (alpaca / ShareGPT, JSON or JSON lines)
"""

from qihuang.datagen.builder import build_dataset
from qihuang.datagen.phrasings import answer_for, compose_answer, questions_for

__all__ = ["answer_for", "build_dataset", "compose_answer", "questions_for"]
