"""GPT and RGA decoders in Flax NNX (no mesh, pipeline, checkpoint or training code here).

  model = create_model(config.model, nnx.Rngs(params=0, dropout=1))
  logits = model(tokens, deterministic=True)            # int [B, L] -> float32 [B, L, V]

KV-cache decoding (static shapes; jit `decode` with the cache as an argument):

  cache = model.init_cache(batch_size, max_len)
  # cache = {"layers": [{"k": [B, H, S, Dh], "v": [B, H, S, Dh]}, ...num_layers],
  #          "pos": int32 [B]}   (S = max_len, compute dtype; pos = tokens already cached)
  logits, cache = model.decode(prompt, cache)           # prefill: [B, T] -> [B, T, V]
  logits, cache = model.decode(next_token[:, None], cache)   # one step: [B, 1] -> [B, 1, V]

`decode(tokens, cache, positions=None)`: tokens [B, T] sit at absolute positions
positions[b] + t (default cache["pos"]); their k/v are written there and the returned cache has
pos = positions + T. A row restarts by passing positions = 0 for it (older slots beyond the new
position are masked). Logits equal the full forward pass at every position (fp32, 1e-5).
With learned absolute positions the cache length must be <= model.max_len; to go past it the
sampler re-prefills the last window.

Relative attention (RGA): S_rel[i, j] = q_i . Er[R-1-min(i-j, R-1)] added after q scaling;
distances >= max_relative use row 0 (clipped). `model_config.rel_impl`: "naive" | "skew" |
"blockwise" | "auto" (blockwise once one layer's batch x heads x L^2 fp32 probabilities reach
`transformer.AUTO_BLOCKWISE_BYTES`, 2 GiB; skew below).
"""

from flax import nnx

from virtuoso_jax.models import attention
from virtuoso_jax.models.transformer import (AUTO_BLOCKWISE_BYTES, Decoder, choose_impl,
                                             resolve_dtype)

__all__ = ["create_model", "Decoder", "attention", "choose_impl", "resolve_dtype",
           "AUTO_BLOCKWISE_BYTES", "count_params"]


def create_model(model_config, rngs: nnx.Rngs) -> Decoder:
  """Builds the GPT or RGA decoder of `model_config` (= config.model, vocab_size resolved).

  `rngs` needs a `params` stream (or a default); a `dropout` stream seeds the model's own
  dropout RNG (falls back to the default stream).
  """
  return Decoder(model_config, rngs)


def count_params(model) -> int:
  """Number of scalar parameters (nnx.Param) in `model` (real or abstract)."""
  import jax  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  state = nnx.state(model, nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
