"""GPT and RGA decoders (pre-LN) in Flax NNX.

One `Decoder` class serves both families; `model_config.name` picks the attention:
"gpt" (absolute positions only) or "rga" (adds a learned relative table per layer).
Written for NNX tree mode: the module graph is a tree, all randomness comes from the one
`dropout_rngs` stream at the top (keys are passed down), blocks hold no mutable state, and
`jax.jit` over `nnx.split`/`nnx.merge` works.

Parameter layout (logical axes in brackets; param dtype = model_config.param_dtype):
  embed.embedding   [V, D]          (vocab, embed)     N(0, 0.02)
  pos_emb           [L, D]          (length, embed)    zeros (pos_emb="learned")
  blocks[i].ln1.scale/bias, ln2.scale/bias  [D] (embed)
  blocks[i].attn.qkv_kernel [D, 3, H, Dh] (embed, None, heads, kv)  rga: xavier_uniform over the
                    fused [D, 3D] in_proj (as torch MultiheadAttention); gpt: N(0, 0.02)
  blocks[i].attn.qkv_bias   [3, H, Dh]    (None, heads, kv)  zeros (if use_bias)
  blocks[i].attn.out_kernel [H, Dh, D]    (heads, kv, embed) N(0, 0.02); out_bias [D] (embed)
  blocks[i].attn.rel_emb    [R, Dh] (relative, kv) or [H, R, Dh] (heads, relative, kv); rga only,
                    N(0, 0.02) (the original's U[0,1) biases every head towards far keys)
  blocks[i].mlp.wi [D, F] (embed, mlp), bi [F] (mlp), wo [F, D] (mlp, embed), bo [D] (embed)
  ln_f.scale/bias [D]; head.kernel [D, V] (embed, vocab) unless tied; head.bias [V] if head_bias.

Dropout (rates from the config): embeddings (dropout_rate), attention probabilities
(attention_dropout_rate), attention output (dropout_rate, only if residual_attention_dropout)
and MLP output (dropout_rate). RGA original: residual_attention_dropout=False.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from virtuoso_jax import config_lib
from virtuoso_jax.models import attention as attn_lib

Array = jax.Array


def resolve_dtype(name: str):
  """"auto" -> float32 on CPU, bfloat16 on GPU/TPU; else the named dtype."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  try:
    return jnp.dtype(name)
  except TypeError as e:
    raise ValueError(f"model.dtype / model.param_dtype: unknown dtype {name!r}") from e


def _param(value: Array, axes: tuple[Optional[str], ...]) -> nnx.Param:
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} do not match the parameter shape {value.shape}")
  # eager_sharding=False: the model is mesh-agnostic; virtuoso_jax.sharding places it.
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


_normal = jax.nn.initializers.normal(0.02)


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 (torch eps convention)."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.scale = _param(jnp.ones((dim,), param_dtype), ("embed",))
    self.bias = _param(jnp.zeros((dim,), param_dtype), ("embed",))
    self.eps = eps

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def _dropout(x: Array, rate: float, key) -> Array:
  if rate <= 0.0 or key is None:
    return x
  keep = attn_lib.dropout_keep(key, rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Attention(nnx.Module):
  """Causal self-attention with a fused qkv projection and an optional relative table."""

  def __init__(self, cfg, relative: bool, dtype, param_dtype, rngs: nnx.Rngs):
    d, h = cfg.emb_dim, cfg.num_heads
    if d % h:
      raise ValueError(f"model.emb_dim={d} must be divisible by model.num_heads={h}")
    dh = d // h
    self.num_heads, self.head_dim, self.dtype = h, dh, dtype
    self.use_bias = bool(cfg.use_bias)
    if relative:
      # torch xavier_uniform_ on in_proj_weight [3D, D]: bound sqrt(6 / (D + 3D)).
      bound = math.sqrt(6.0 / (d + 3 * d))
      w = jax.random.uniform(rngs.params(), (d, 3, h, dh), param_dtype, -bound, bound)
    else:
      w = _normal(rngs.params(), (d, 3, h, dh), param_dtype)
    self.qkv_kernel = _param(w, ("embed", None, "heads", "kv"))
    self.out_kernel = _param(_normal(rngs.params(), (h, dh, d), param_dtype),
                             ("heads", "kv", "embed"))
    if self.use_bias:
      self.qkv_bias = _param(jnp.zeros((3, h, dh), param_dtype), (None, "heads", "kv"))
      self.out_bias = _param(jnp.zeros((d,), param_dtype), ("embed",))
    self.relative = relative
    if relative:
      if cfg.max_relative < 1:
        raise ValueError(f"model.max_relative must be >= 1, got {cfg.max_relative}")
      if cfg.rel_per_head:
        self.rel_emb = _param(_normal(rngs.params(), (h, cfg.max_relative, dh), param_dtype),
                              ("heads", "relative", "kv"))
      else:
        self.rel_emb = _param(_normal(rngs.params(), (cfg.max_relative, dh), param_dtype),
                              ("relative", "kv"))

  def qkv(self, x: Array):
    """x [B, L, D] -> q (scaled), k, v, each [B, H, L, Dh]."""
    w = self.qkv_kernel[...].astype(self.dtype)
    # One [B*L, D] x [D, 3D] GEMM in the natural layout, then a transpose to heads: the
    # einsum straight into [3, B, H, L, Dh] made XLA's CPU backward run ~2x slower GEMMs.
    y = (x @ w.reshape(w.shape[0], -1)).reshape(x.shape[:-1] + w.shape[1:])  # [B, L, 3, H, Dh]
    if self.use_bias:
      y = y + self.qkv_bias[...].astype(self.dtype)
    y = jnp.moveaxis(y, -3, 0).swapaxes(-2, -3)  # [3, B, H, L, Dh]
    q, k, v = y[0], y[1], y[2]
    return q * jnp.asarray(self.head_dim ** -0.5, self.dtype), k, v

  def rel(self) -> Optional[Array]:
    return self.rel_emb[...].astype(self.dtype) if self.relative else None

  def out(self, o: Array) -> Array:
    """o [B, H, L, Dh] -> [B, L, D]."""
    w = self.out_kernel[...].astype(self.dtype)
    o = o.swapaxes(1, 2)  # [B, L, H, Dh]
    y = o.reshape(o.shape[:2] + (-1,)) @ w.reshape(-1, w.shape[-1])
    if self.use_bias:
      y = y + self.out_bias[...].astype(self.dtype)
    return y


class Mlp(nnx.Module):

  def __init__(self, cfg, dtype, param_dtype, rngs: nnx.Rngs):
    d, f = cfg.emb_dim, cfg.mlp_dim
    self.dtype, self.use_bias = dtype, bool(cfg.use_bias)
    self.wi = _param(_normal(rngs.params(), (d, f), param_dtype), ("embed", "mlp"))
    self.wo = _param(_normal(rngs.params(), (f, d), param_dtype), ("mlp", "embed"))
    if self.use_bias:
      self.bi = _param(jnp.zeros((f,), param_dtype), ("mlp",))
      self.bo = _param(jnp.zeros((d,), param_dtype), ("embed",))

  def __call__(self, x: Array) -> Array:
    h = x @ self.wi[...].astype(self.dtype)
    if self.use_bias:
      h = h + self.bi[...].astype(self.dtype)
    h = jax.nn.gelu(h, approximate=False)
    y = h @ self.wo[...].astype(self.dtype)
    if self.use_bias:
      y = y + self.bo[...].astype(self.dtype)
    return y


class Block(nnx.Module):
  """Pre-LN block: x + Attn(LN1(x)), then x + MLP(LN2(x))."""

  def __init__(self, cfg, relative: bool, dtype, param_dtype, rngs: nnx.Rngs):
    self.ln1 = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps, param_dtype)
    self.attn = Attention(cfg, relative, dtype, param_dtype, rngs)
    self.ln2 = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps, param_dtype)
    self.mlp = Mlp(cfg, dtype, param_dtype, rngs)
    self.dropout_rate = float(cfg.dropout_rate)
    self.attention_dropout_rate = float(cfg.attention_dropout_rate)
    self.residual_attention_dropout = bool(cfg.residual_attention_dropout)
    self.block_size = int(cfg.attn_block_size)

  def _keys(self, key):
    if key is None:
      return None, None, None
    k1, k2, k3 = jax.random.split(key, 3)
    return k1, k2, k3

  def __call__(self, x: Array, impl: str, key=None) -> Array:
    k_attn, k_res, k_mlp = self._keys(key)
    q, k, v = self.attn.qkv(self.ln1(x))
    o = attn_lib.attention(q, k, v, self.attn.rel(), impl=impl, block_size=self.block_size,
                           dropout_rate=self.attention_dropout_rate, dropout_key=k_attn)
    y = self.attn.out(o)
    if self.residual_attention_dropout:
      y = _dropout(y, self.dropout_rate, k_res)
    x = x + y
    x = x + _dropout(self.mlp(self.ln2(x)), self.dropout_rate, k_mlp)
    return x

  def decode(self, x: Array, layer_cache: dict, q_pos: Array, pos: Array, fresh: bool):
    """x [B, T, D] at positions q_pos [B, T]; writes k/v at pos [B] .. pos+T-1. `fresh`: all
    rows restart at 0, so the cache's old contents are not read."""
    q, k, v = self.attn.qkv(self.ln1(x))
    o = attn_lib.cached_attention(q, k, v, None if fresh else layer_cache["k"],
                                  None if fresh else layer_cache["v"], self.attn.rel(), q_pos, pos)
    k_cache = _cache_write(layer_cache["k"], k, pos)
    v_cache = _cache_write(layer_cache["v"], v, pos)
    x = x + self.attn.out(o)
    x = x + self.mlp(self.ln2(x))
    return x, {"k": k_cache, "v": v_cache}


def _cache_write(cache: Array, new: Array, pos: Array) -> Array:
  """cache [B, H, S, Dh] with new [B, H, T, Dh] written at slots pos[b] .. pos[b] + T - 1.

  One scatter of the T new rows, which XLA updates in place inside the sampling loop (a vmapped
  dynamic_update_slice became a select over the whole cache: two full copies of every layer's
  cache per token). The caller keeps the slots in range (out-of-range writes are undefined).
  """
  t = new.shape[2]
  rows = jnp.arange(new.shape[0])[:, None]
  cols = pos[:, None] + jnp.arange(t, dtype=pos.dtype)[None, :]
  return cache.at[rows, :, cols].set(jnp.swapaxes(new, 1, 2).astype(cache.dtype),
                                 mode="promise_in_bounds")


class Decoder(nnx.Module):
  """GPT / RGA decoder. See the module docstring for the parameter layout."""

  def __init__(self, cfg, rngs: nnx.Rngs):
    config_lib.check_model_options(cfg)
    if cfg.vocab_size <= 0:
      raise ValueError(f"model.vocab_size={cfg.vocab_size}: resolve it from the dataset's codec "
                       "before creating the model")
    dtype = resolve_dtype(cfg.dtype)
    param_dtype = resolve_dtype(cfg.param_dtype)
    self.dtype = dtype
    self.vocab_size, self.max_len = int(cfg.vocab_size), int(cfg.max_len)
    self.num_heads, self.head_dim = int(cfg.num_heads), int(cfg.emb_dim) // int(cfg.num_heads)
    self.rel_impl, self.block_size = str(cfg.rel_impl), int(cfg.attn_block_size)
    self.remat = cfg.remat == "block"
    self.dropout_rate = float(cfg.dropout_rate)
    self.relative = cfg.name == "rga"
    self.embed = _param(_normal(rngs.params(), (cfg.vocab_size, cfg.emb_dim), param_dtype),
                        ("vocab", "embed"))
    self.learned_pos = cfg.pos_emb == "learned"
    if self.learned_pos:
      self.pos_emb = _param(jnp.zeros((cfg.max_len, cfg.emb_dim), param_dtype),
                            ("length", "embed"))
    self.blocks = nnx.List([Block(cfg, self.relative, dtype, param_dtype, rngs)
                            for _ in range(cfg.num_layers)])
    self.ln_f = LayerNorm(cfg.emb_dim, cfg.layer_norm_eps, param_dtype)
    self.tie_embeddings = bool(cfg.tie_embeddings)
    if not self.tie_embeddings:
      self.head = _param(_normal(rngs.params(), (cfg.emb_dim, cfg.vocab_size), param_dtype),
                         ("embed", "vocab"))
    self.head_bias = bool(cfg.head_bias)
    if self.head_bias:
      self.head_b = _param(jnp.zeros((cfg.vocab_size,), param_dtype), ("vocab",))
    self.dropout_rngs = nnx.Rngs(dropout=rngs.dropout())

  # ---------------------------------------------------------------- helpers

  def impl_for(self, length: int, batch: int = 1) -> str:
    """The relative-attention implementation used for a [batch, length] input."""
    return choose_impl(self.rel_impl, length, batch, self.num_heads)

  def _embed(self, tokens: Array, positions: Array) -> Array:
    x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
    if self.learned_pos:
      x = x + jnp.take(self.pos_emb[...], positions, axis=0).astype(self.dtype)
    return x

  def _logits(self, x: Array) -> Array:
    x = self.ln_f(x)
    w = self.embed[...].T if self.tie_embeddings else self.head[...]
    logits = jnp.einsum("bld,dv->blv", x, w.astype(self.dtype),
                        preferred_element_type=jnp.float32)
    if self.head_bias:
      logits = logits + self.head_b[...].astype(jnp.float32)
    return logits.astype(jnp.float32)

  def _check_tokens(self, tokens):
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be int [B, L], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be integers, got {tokens.dtype}")

  # ---------------------------------------------------------------- training / scoring

  def __call__(self, tokens: Array, *, deterministic: bool = True,
               dropout_key: Optional[Array] = None) -> Array:
    """tokens int [B, L] -> float32 logits [B, L, V]. Dropout is on iff not deterministic.

    Dropout keys come from `dropout_key` when given (pure: nothing in the model changes, the
    form to use under plain `jax.grad` over `nnx.merge`), else from the model's own
    `dropout_rngs` stream (stateful: the stream's count advances, so the caller must return the
    model's updated state from its jitted step).
    """
    self._check_tokens(tokens)
    length = tokens.shape[1]
    if self.learned_pos and length > self.max_len:
      raise ValueError(f"sequence length {length} > model.max_len {self.max_len} (learned "
                       "absolute positions)")
    impl = self.impl_for(length, tokens.shape[0])
    if deterministic:
      key = None
    elif dropout_key is not None:
      key = dropout_key
    else:
      key = self.dropout_rngs.dropout()
    x = self._embed(tokens, jnp.arange(length))
    if key is not None:
      key, sub = jax.random.split(key)
      x = _dropout(x, self.dropout_rate, sub)
    for i, block in enumerate(self.blocks):
      bkey = None if key is None else jax.random.fold_in(key, i)
      if self.remat:
        graphdef, state = nnx.split(block)

        def run(state, x, bkey, graphdef=graphdef):
          return nnx.merge(graphdef, state)(x, impl, bkey)

        x = jax.checkpoint(run)(state, x, bkey)
      else:
        x = block(x, impl, bkey)
    return self._logits(x)

  # ---------------------------------------------------------------- KV-cache decoding

  def init_cache(self, batch_size: int, max_len: int) -> dict[str, Any]:
    """An empty cache for `batch_size` sequences of up to `max_len` tokens.

    Returns {"layers": [{"k": [B, H, S, Dh], "v": [B, H, S, Dh]}] * num_layers,
    "pos": int32 [B]}, S = max_len, in the compute dtype; `pos` = tokens already cached.
    """
    if max_len < 1:
      raise ValueError(f"init_cache: max_len must be >= 1, got {max_len}")
    if self.learned_pos and max_len > self.max_len:
      raise ValueError(f"init_cache: max_len {max_len} > model.max_len {self.max_len} (learned "
                       "absolute positions); slide the window instead")
    shape = (batch_size, self.num_heads, max_len, self.head_dim)
    layers = [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
              for _ in self.blocks]
    return {"layers": layers, "pos": jnp.zeros((batch_size,), jnp.int32)}

  def decode(self, tokens: Array, cache: dict[str, Any],
             positions: Optional[Array] = None) -> tuple[Array, dict[str, Any]]:
    """Runs T new tokens per sequence through the cache (prefill: T > 1 on an empty cache).

    Args:
      tokens: int [B, T], the next T tokens of every sequence.
      cache: from `init_cache` or a previous `decode`.
      positions: optional int32 [B], the absolute position of tokens[:, 0] (default
        cache["pos"]); it is also where their k/v are written. The Python int 0 restarts every
        row at position 0 (a new window) without reading the cache's old contents; an all-zero
        array gives the same logits but XLA still reads the fully masked old part (and, for a
        constant cache, constant-folds it at compile time: seconds per layer).

    Returns:
      (logits float32 [B, T, V], cache with pos = positions + T). Deterministic (no dropout).
      Callers keep positions + T <= the cache length (writes past the end are undefined).
    """
    self._check_tokens(tokens)
    t = tokens.shape[1]
    fresh = isinstance(positions, int) and not isinstance(positions, bool) and positions == 0
    if isinstance(positions, int) and not fresh:
      raise ValueError(f"decode: positions must be an int32 [B] array or the int 0, got "
                       f"{positions!r}")
    if positions is None:
      pos = cache["pos"]
    elif fresh:
      pos = jnp.zeros((tokens.shape[0],), jnp.int32)
    else:
      pos = jnp.asarray(positions, jnp.int32)
    q_pos = pos[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    x = self._embed(tokens, q_pos)
    new_layers = []
    for block, layer_cache in zip(self.blocks, cache["layers"]):
      x, lc = block.decode(x, layer_cache, q_pos, pos, fresh)
      new_layers.append(lc)
    return self._logits(x), {"layers": new_layers, "pos": pos + t}


# "auto" takes blockwise attention once one layer's L x L fp32 probabilities for the batch
# (batch x heads x L^2 x 4 bytes) reach this; skew below it. Skew is the faster path, but it
# keeps those probabilities per layer (memory grows as L^2), while blockwise stays flat; so the
# switch is on memory: 2 GiB is one layer at 1 x 8 heads x 8192 tokens, and rga.py:original's
# shapes stay on skew. The timings behind it: docs/benchmarks.md (benchmarks/model_bench.py).
AUTO_BLOCKWISE_BYTES = 2 << 30


def choose_impl(rel_impl: str, length: int, batch: int = 1, heads: int = 1) -> str:
  """Resolves rel_impl "auto" for a (batch, heads, length) attention (also used by GPT, where
  skew == plain dense): blockwise once batch x heads x length^2 fp32 reach
  AUTO_BLOCKWISE_BYTES, else skew."""
  if rel_impl != "auto":
    return rel_impl
  return "blockwise" if batch * heads * length * length * 4 >= AUTO_BLOCKWISE_BYTES else "skew"
