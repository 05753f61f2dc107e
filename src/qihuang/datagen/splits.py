"""Train/dev/test splits by entity (seeded) and de-duplication of identical questions.

Every example belongs to the split of its ``entity``, so no test entity is ever the subject of a
training or development example. Examples that name *other* entities in their knowledge (scenario
answers) may only name entities of their own split or of a less held-out one: a training scenario
names only training diseases, a test scenario may also name training ones.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

from qihuang.errors import ConfigError

SPLITS = ("train", "dev", "test")
_RANK = {"train": 0, "dev": 1, "test": 2}


def assign_splits(names: Iterable[str], *, seed: int = 0, dev_ratio: float = 0.05, test_ratio: float = 0.05,
                  test_entities: Iterable[str] | None = None) -> dict[str, str]:
    """Map each entity name to "train", "dev" or "test".

    The names are sorted and shuffled with ``seed``, so the result does not depend on input order.
    ``test_entities`` are put in test first (they count towards ``test_ratio``). With at least three
    entities, dev and test get at least one each when their ratio is positive."""
    if not (0 <= dev_ratio < 1 and 0 <= test_ratio < 1 and dev_ratio + test_ratio < 1):
        raise ConfigError(f"split ratios must be in [0, 1) and sum below 1, got dev={dev_ratio} test={test_ratio}")
    ordered = sorted(set(names))
    random.Random(seed).shuffle(ordered)
    forced = [n for n in dict.fromkeys(test_entities or ()) if n in set(ordered)]
    forced_set = set(forced)
    rest = [n for n in ordered if n not in forced_set]
    total = len(ordered)
    n_test = max(_count(total, test_ratio), len(forced)) - len(forced)
    n_dev = _count(total, dev_ratio)
    out = {n: "test" for n in forced}
    for i, name in enumerate(rest):
        out[name] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    return out


def _count(total: int, ratio: float) -> int:
    if ratio <= 0 or total == 0:
        return 0
    n = round(total * ratio)
    return max(n, 1) if total >= 3 else n


def may_mention(example_split: str, other_split: str | None) -> bool:
    """Whether an example of ``example_split`` may name an entity of ``other_split`` in its knowledge."""
    return other_split is None or _RANK[other_split] <= _RANK[example_split]


def question_key(instruction: str, history: list | tuple = ()) -> str:
    """What makes two examples "the same question": the user turns, in order."""
    if not history:
        return instruction
    return "\x1f".join([q for q, _ in history] + [instruction])


def example_id(kind: str, key: str) -> str:
    """A stable id from the kind and the question."""
    return f"{kind[0]}-{hashlib.blake2b(key.encode('utf-8'), digest_size=8).hexdigest()}"


class Deduper:
    """Remembers question keys; ``add`` returns False for a question seen before."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.duplicates = 0

    def add(self, key: str) -> bool:
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        return True
