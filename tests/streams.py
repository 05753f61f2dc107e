"""Test helper: read an engine stream to its end."""

from __future__ import annotations


def drain(stream) -> tuple[list[str], object]:
    """The text pieces a stream yields and the value it returns (its ``GenerationResult``)."""
    pieces = []
    while True:
        try:
            pieces.append(next(stream))
        except StopIteration as end:
            return pieces, end.value
