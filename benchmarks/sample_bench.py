"""Sampling throughput: tokens/s and notes/s, cached vs uncached, batch 1 and 32.

  python benchmarks/sample_bench.py                       # rga.py:original and gpt.py:original
  python benchmarks/sample_bench.py --configs=rga.py:original --batches=1 --new_tokens=256

Random-init parameters (speed does not depend on the weights); vocabulary from the token
codec (`--vocab=codec`, the default) or 390 (the original's). A 256-token prompt of random
legal notes (speed does not depend on which notes), 1024 new tokens
(past the 1024 context: the window slides once, cut on a note boundary). The uncached
reference (full forward over the window per token, as the original) runs on fewer tokens
(`--uncached_tokens`) and is reported per token. Prints one JSON line per figure.
Timings exclude compilation (each configuration is run once to compile, then timed).

Next to the batch-1 figures, `b1_roofline_tokens_per_s`: batch-1 decoding is bound by memory,
not FLOPs (each token reads every weight and the whole KV cache once, ~67 MB for
rga.py:original in fp32), so the bytes per token over the bandwidth this machine streams a
working set of that size at (`stream_bandwidth`, measured in the same run) is the most any
implementation could reach here.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

_CONFIGS = flags.DEFINE_string("configs", "rga.py:original,gpt.py:original",
                               "Comma-separated config files (in configs/) with variants.")
_BATCHES = flags.DEFINE_string("batches", "1,32", "Comma-separated batch sizes.")
_PROMPT_TOKENS = flags.DEFINE_integer("prompt_tokens", 256, "Prompt length in tokens.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 1024, "New tokens per cached sample.")
_UNCACHED_TOKENS = flags.DEFINE_integer(
    "uncached_tokens", 16, "uncached new tokens at batch 1 (divided by the batch, at least 2)")
_VOCAB = flags.DEFINE_string("vocab", "codec", "'codec' (the token codec's size) or an int")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per figure (the best is reported).")


def _prompt(codec, length: int, seed: int = 0) -> np.ndarray:
  """[BOS] + `length - 1` ids of random legal notes, cut on a note boundary."""
  from virtuoso_jax.encoding import Notes  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  n = length  # more notes than needed; cut below
  onset = np.cumsum(rng.integers(0, 30, n))
  notes = Notes(onset, rng.integers(1, 100, n), rng.integers(30, 90, n), rng.integers(40, 110, n),
                rng.choice([0, 40, 128], n))
  ids = codec.encode(notes, add_eos=False)
  bounds = codec.note_boundaries(ids)
  cut = int(bounds[bounds <= length].max())
  return ids[:cut]


def _bytes_per_token(model, model_config) -> int:
  """Bytes a batch-1 decode step must read: every parameter except the embedding tables it
  only gathers one row from, plus the keys and values of the full static cache."""
  from virtuoso_jax import models  # pylint: disable=g-import-not-at-top
  skipped = model.pos_emb[...].size if model.learned_pos else 0
  if not model_config.tie_embeddings:
    skipped += model.embed[...].size
  weights = (models.count_params(model) - skipped) * model.embed[...].dtype.itemsize
  kv = 2 * model_config.num_layers * model_config.max_len * model_config.emb_dim
  return int(weights + kv * np.dtype(model.dtype).itemsize)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")

  from flax import nnx  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import config_lib, models, sampling  # pylint: disable=g-import-not-at-top
  from virtuoso_jax.encoding import TokenCodec  # pylint: disable=g-import-not-at-top

  codec = TokenCodec()
  tables = codec.grammar()
  vocab = codec.vocab_size if _VOCAB.value == "codec" else int(_VOCAB.value)
  prompt = _prompt(codec, _PROMPT_TOKENS.value)
  opts = sampling.SampleOptions(temperature=1.0, top_k=0, top_p=1.0)
  # This machine's matmul rate now (the figures below are only comparable next to it).
  common.emit("sample/matmul_peak", common.matmul_peak_flops() / 1e9, "GFLOP/s")
  for spec in _CONFIGS.value.split(","):
    config = config_lib.load_config(f"configs/{spec}")
    config.model.vocab_size = max(vocab, codec.vocab_size)
    model = models.create_model(config.model, nnx.Rngs(0))
    # Batch-1 decoding reads every weight (not the embedding rows it skips) and the whole
    # static KV cache once per token: those bytes, streamed at the rate this machine streams a
    # working set of that size (measured now), bound its tokens/s.
    per_token = _bytes_per_token(model, config.model)
    bandwidth = common.stream_bandwidth(per_token)
    common.emit(f"sample/{spec}/stream_bandwidth", bandwidth / 1e9, "GB/s", config=spec,
                working_set_bytes=per_token)
    common.emit(f"sample/{spec}/b1_roofline_tokens_per_s", bandwidth / per_token, "tokens/s",
                config=spec, bytes_per_token=per_token,
                note="stream bandwidth / (weights + KV cache bytes) per token at batch 1")
    for batch in [int(b) for b in _BATCHES.value.split(",")]:
      uncached_new = max(2, _UNCACHED_TOKENS.value // batch)
      for cached, new in ((True, _NEW_TOKENS.value), (False, uncached_new)):
        kw = dict(seed=0, num_samples=batch, max_new_tokens=new, cached=cached)
        sampling.generate(model, prompt, tables, opts, **kw)  # compile
        best = None
        for _ in range(_REPEATS.value):
          t = time.perf_counter()
          res = sampling.generate(model, prompt, tables, opts, **kw)
          dt = time.perf_counter() - t
          best = dt if best is None else min(best, dt)
        toks = int(res.lengths.sum())
        notes = int(res.notes.sum())
        tag = f"{spec}/b{batch}/{'cached' if cached else 'uncached'}"
        extra = dict(config=spec, batch=batch, cached=cached, prompt_tokens=len(prompt),
                     new_tokens=new, vocab=config.model.vocab_size, seconds=round(best, 3),
                     slides=res.slides)
        common.emit(f"sample/{tag}/tokens_per_s", toks / best, "tokens/s", **extra)
        common.emit(f"sample/{tag}/notes_per_s", notes / best, "notes/s", **extra)


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # What the binaries set on a CPU host, before JAX starts.
  app.run(main)
