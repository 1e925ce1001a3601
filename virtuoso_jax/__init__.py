"""virtuoso_jax: JAX/Flax training stack for symbolic-music language models.

Importing the package is cheap: no jax, flax or note-seq at import time. Sub-packages:

- `virtuoso_jax.encoding`: MIDI <-> notes <-> ids (pure Python + numpy, no jax).
- `virtuoso_jax.models`: GPT and RGA decoders in Flax NNX (logical axis names only).
- `input_pipeline`, `sharding`, `checkpointing`, `train`, `main`: training.
- `sampling`, `sample`, `compose`: generation.
"""

__version__ = "0.1.0"


def _set_default_xla_flags() -> None:
  """XLA options this package's programs rely on, added to $XLA_FLAGS (an option the user set
  there already wins). XLA reads the variable when JAX's backend starts, so this runs on
  import, before any computation.

  --xla_cpu_copy_insertion_use_region_analysis=true: without it XLA on CPU copies every
  layer's KV cache several times per sampled token inside the sampling while-loop (measured:
  decode step 5.0 -> 3.1 ms, rga.py:original batch-1 sampling 180 -> 242 tokens/s). CPU only.
  """
  import os  # pylint: disable=g-import-not-at-top
  defaults = {"--xla_cpu_copy_insertion_use_region_analysis": "true"}
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"{k}={v}" for k, v in defaults.items() if k not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags] + extra).strip()


def _keep_host_memory() -> None:
  """Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

  XLA on CPU allocates each execution's temporaries (GBs for a train step) with malloc and
  frees them afterwards; glibc serves such blocks with mmap and unmaps them on free, so every
  step page-faults all of it again: rga.py:original had 700k page faults and ~1.5 s of kernel
  time per 4.5 s step. One arena, no mmap and no trimming make later steps fault-free; the
  first execution of a big program pays the heap growth once, and the process keeps its peak
  RSS. Linux/glibc only (mallopt); VIRTUOSO_KEEP_HOST_MEMORY=0 leaves malloc alone. It must
  run before JAX starts its threads, hence on import.
  """
  import ctypes  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if os.environ.get("VIRTUOSO_KEEP_HOST_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
    return
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
    return
  m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
  mallopt(m_arena_max, 1)
  mallopt(m_mmap_max, 0)
  mallopt(m_trim_threshold, -1)  # an int -1 becomes SIZE_MAX: never trim


_set_default_xla_flags()
_keep_host_memory()
