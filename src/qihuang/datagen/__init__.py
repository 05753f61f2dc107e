"""Instruction data from the knowledge base: template builder, LLM-assisted builder, validation."""

from qihuang.datagen.builder import build_dataset
from qihuang.datagen.templates import answer_for, compose_answer, questions_for

__all__ = ["answer_for", "build_dataset", "compose_answer", "questions_for"]
