"""The training process keeps freed memory (glibc's mallopt settings are accepted)."""

from __future__ import annotations

import platform

import pytest

from qihuang.train.heap import SETTINGS, keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_mallopt_accepts_every_setting():
    assert all(-(1 << 31) <= value < (1 << 31) for _, value in SETTINGS)  # mallopt takes a C int
    assert keep_freed_memory() is True
