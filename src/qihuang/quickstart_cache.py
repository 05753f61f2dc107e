"""The step cache of ``qihuang quickstart``: cached, resumable pipeline steps (``OUT/state.json``);
a rerun skips steps whose inputs did not change."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from qihuang.fileio import atomic_write_json


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:16]


class StepRunner:
    """Runs named steps once; their results are kept in ``state.json`` keyed by an input fingerprint.

    A step whose fingerprint changed is redone, and so is every step after it.
    """

    def __init__(self, out_dir: Path, fresh: bool = False, console: Console | None = None):
        self.out_dir = out_dir
        self.state_path = out_dir / "state.json"
        self.console = console or Console()
        self.state: dict[str, dict] = {}
        if self.state_path.exists() and not fresh:
            self.state = json.loads(self.state_path.read_text(encoding="utf-8"))
        self._invalidated = False
        self.timings: dict[str, float] = {}

    def run(self, name: str, title: str, inputs: dict, fn: Callable[[], Any]) -> Any:
        key = fingerprint(inputs)
        saved = self.state.get(name)
        if saved and saved.get("key") == key and not self._invalidated:
            self.console.print(f"[green]✓[/green] {title} [dim](done earlier, {saved['seconds']:.0f} s; --fresh redoes it)[/dim]")
            self.timings[name] = 0.0
            return saved["result"]
        self._invalidated = True
        self.console.rule(f"[bold]{title}")
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        self.state[name] = {"key": key, "result": result, "seconds": seconds}
        atomic_write_json(self.state_path, self.state)
        self.console.print(f"[green]✓[/green] {title} [dim]({seconds:.0f} s)[/dim]")
        return result
