"""Keep freed memory in the training process (glibc malloc), so activations reuse warm pages.

A CPU training step allocates and frees the activations of every layer; with glibc's defaults
the top of the heap is returned to the system when it is freed (``M_TRIM_THRESHOLD``, adapted
upwards only slowly) and the next step touches fresh pages again: minor page faults were a
large share of the elementwise work. :func:`keep_freed_memory` sets, once per process, no
trimming, a 64 MiB top pad and a fixed 32 MiB mmap threshold (glibc's upper limit).

The values go through ``mallopt``, whose value argument is a C ``int``: larger values (e.g.
4 GiB) wrap around, and ``-1`` is the documented "never trim". Settings apply to the memory
freed from then on, so the call comes before the model is loaded. Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 64 << 20), (M_MMAP_THRESHOLD, 32 << 20))
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt`` (once); whether all were accepted."""
    global _done
    if _done is None:
        name = ctypes.util.find_library("c")
        try:
            mallopt = ctypes.CDLL(name).mallopt if name else None
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is None:
            _done = False
        else:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            _done = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _done
