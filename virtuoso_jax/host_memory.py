"""The process heap under XLA on CPU (Linux/glibc): keep freed memory, and account for it.

XLA on CPU allocates each execution's temporaries (GBs for a train step) with malloc and frees
them afterwards. glibc serves blocks that big with mmap and unmaps them on free, so every step
page-faults all of it again: rga.py:original had 700k page faults and ~1.5 s of kernel time per
4.5 s step. `keep_freed_memory` (run by the binaries on CPU hosts, virtuoso_jax.runtime, before
JAX starts its threads) makes malloc use one arena, no mmap and no trimming, so later steps
reuse the same pages fault-free; the first execution of a big program pays the heap growth once, and the process
keeps its peak RSS. VIRTUOSO_KEEP_HOST_MEMORY=0 leaves malloc alone.

A kept heap grows for good whenever two big allocations are live at once, so the train loop
must not let two steps' temporaries overlap (`wait_for_release`). Pure Python (ctypes): no jax.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_kept = False


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


@functools.lru_cache(maxsize=None)
def _libc():
  try:
    return ctypes.CDLL(None)
  except OSError:
    return None


@functools.lru_cache(maxsize=None)
def _mallinfo2():
  """glibc's mallinfo2 (>= 2.33) with its result type set, loaded once; None elsewhere."""
  fn = getattr(_libc(), "mallinfo2", None)
  if fn is not None:
    fn.restype = _MallInfo2
  return fn


def keep_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse; False where it does not apply (not
  Linux, not glibc, or VIRTUOSO_KEEP_HOST_MEMORY=0)."""
  global _kept
  if os.environ.get("VIRTUOSO_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return False
  libc = _libc()
  mallopt = getattr(libc, "mallopt", None)
  if mallopt is None:  # not glibc (musl, ...): nothing to tune
    return False
  mallopt(_M_ARENA_MAX, 1)
  mallopt(_M_MMAP_MAX, 0)
  mallopt(_M_TRIM_THRESHOLD, -1)  # an int -1 becomes SIZE_MAX: never trim
  _kept = True
  return True


def heap_in_use() -> Optional[int]:
  """Bytes malloc has handed out and not had back (glibc >= 2.33 mallinfo2, one arena), or
  None where that is not known (memory not kept, other libc)."""
  mallinfo2 = _mallinfo2() if _kept else None
  return None if mallinfo2 is None else int(mallinfo2().uordblks)


def free_kept_bytes() -> Optional[int]:
  """Bytes of heap this process freed and keeps for reuse (free to it, though not counted in
  the host's MemAvailable), or None where memory is not kept."""
  mallinfo2 = _mallinfo2() if _kept else None
  return None if mallinfo2 is None else int(mallinfo2().fordblks)


def wait_for_release(baseline: Optional[int], nbytes: int, timeout_s: float = 2.0) -> bool:
  """Waits until an execution that had `nbytes` of temporaries on top of `baseline` bytes of
  heap in use has freed them: the heap in use is back below `baseline + nbytes / 2` and has
  stopped falling (its temporaries may be several blocks, freed one after another).

  XLA marks an execution's outputs ready before its worker thread frees the temporaries, so a
  step dispatched right after the previous one's outputs are ready can allocate its own
  temporaries while the previous ones are still live; with a kept heap that doubles the
  process for good (docs/benchmarks.md, "Serialised CPU steps"). The gap is microseconds, so
  this polls finely; after
  `timeout_s` it gives up (the heap may then grow, nothing else goes wrong). Returns whether
  the memory was seen released.
  """
  if baseline is None or nbytes <= 0 or heap_in_use() is None:
    return True
  limit = baseline + nbytes // 2
  deadline = time.monotonic() + timeout_s
  last = None
  while True:
    used = heap_in_use()
    if used < limit:
      if last is not None and last - used < (1 << 20):
        return True  # Below the limit on two polls in a row, and no longer falling.
      last = used
    else:
      last = None
    if time.monotonic() > deadline:
      return False
    time.sleep(0.0005)
