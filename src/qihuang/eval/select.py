"""Choosing which examples of a benchmark to evaluate: subjects kept or left out, and a seeded sample.

Subjects may be named one by one or by a group of ``resources/eval_suites.yaml`` (``cmmlu-medical``,
...). The sample is drawn with ``random.Random(seed)`` and kept in file order, so a base model and a
tuned one given the same seed answer the same questions (their comparison is paired).
"""

from __future__ import annotations

import logging
import random

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from qihuang.flags import split_list
from qihuang.errors import ConfigError
from qihuang.eval.base import Dataset, TaskOption

log = logging.getLogger("qihuang.eval")

SHAPE_OPTION = TaskOption("shape", str, "auto", "record shape of the data files (default: detected per file; see "
                                                "resources/eval_shapes.yaml)")
SELECT_OPTIONS = (
    TaskOption("subjects", str, None, "keep only these subjects (comma-separated names or subject groups of "
                                      "eval_suites.yaml, e.g. cmmlu-medical)"),
    TaskOption("exclude_subjects", str, None, "leave out these subjects (names or subject groups)"),
    TaskOption("sample", int, None, "evaluate a seeded random sample of N examples (same N and seed: same "
                                    "questions, so two models compare pairwise)"),
    TaskOption("seed", int, 0, "seed of --sample"),
)


def subject_names(spec: str | None) -> set[str]:
    """Subject names of a comma-separated list whose items may be subject groups."""
    if not spec:
        return set()
    from qihuang.eval.suite import subject_groups

    groups = subject_groups()
    names: set[str] = set()
    for item in split_list(spec or ""):
        names.update(groups.get(item, (item,)))
    return names


def select(dataset: Dataset, config: dict) -> Dataset:
    """``dataset`` with the task's ``subjects``/``exclude_subjects``/``sample`` options applied."""
    if config.get("sample") is not None and config["sample"] < 1:
        raise ConfigError("task option 'sample' must be >= 1")
    examples = dataset.examples
    keep, drop = subject_names(config.get("subjects")), subject_names(config.get("exclude_subjects"))
    if keep or drop:
        if keep and not keep & {ex.subject for ex in examples}:
            log.warning("none of the subjects %s is in the data", ", ".join(sorted(keep)))
        examples = [ex for ex in examples if (not keep or ex.subject in keep) and ex.subject not in drop]
    n = config.get("sample")
    if n is not None and n < len(examples):
        picked = sorted(random.Random(config.get("seed") or 0).sample(range(len(examples)), n))
        examples = [examples[i] for i in picked]
    return Dataset(examples, dataset.skipped)


def load_selected(loader: Callable[[Path, str | None], tuple[Dataset, dict[str, int]]], path: Path,
                  config: dict) -> tuple[Dataset, list[str]]:
    """``loader(path, shape)`` then :func:`select`; records that belong to another task (a shape's
    ``keep``/``drop``) are logged and returned as notes for the results."""
    data, left = loader(path, config.get("shape"))
    notes = [f"{n} records with {why} belong to another task and were left out" for why, n in left.items()]
    for note in notes:
        log.info("%s (see the shape's keep/drop)", note)
    return select(data, config), notes


class ShapedLoad:
    """What the tasks reading published shapes share: ``load`` is their ``reader`` then :func:`select`, and
    the notes about records left to another task are kept for ``aggregate``."""

    reader: ClassVar[Callable[[Path, str | None], tuple[Dataset, dict[str, int]]]]
    config: dict

    def load(self, path: Path) -> Dataset:
        data, self._notes = load_selected(type(self).reader, path, self.config)
        return data

    @property
    def notes(self) -> list[str]:
        return list(getattr(self, "_notes", []))


def group_by_subject(rows: list[dict]) -> dict[str, list[dict]]:
    """Prediction rows grouped by subject ("all" for rows without one), subjects sorted."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r.get("subject") or "all", []).append(r)
    return dict(sorted(groups.items()))
