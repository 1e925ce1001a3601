"""Logic inside the benchmark scripts (their timings are never asserted)."""

import pytest
from flax import nnx

from benchmarks import sample_bench
from configs import rga
from virtuoso_jax import models


@pytest.mark.parametrize("tie", [False, True])
def test_sample_bench_bytes_per_token_counts_weights_read_and_the_full_cache(tie):
  c = rga.get_config("tiny").model
  c.vocab_size, c.tie_embeddings = 50, tie
  model = models.create_model(c, nnx.Rngs(0))
  n = models.count_params(model)
  # A batch-1 step gathers one row of the position table (and of the token table unless it is
  # also the head), reads every other weight, and the keys and values of every cached slot.
  skipped = c.max_len * c.emb_dim + (0 if tie else c.vocab_size * c.emb_dim)
  kv = 2 * c.num_layers * c.max_len * c.emb_dim
  assert sample_bench._bytes_per_token(model, c) == 4 * (n - skipped + kv)
