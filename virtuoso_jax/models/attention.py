"""Causal multi-head attention with an optional learned relative term (pure functions, no params).

Shapes: q, k, v are [B, H, L, Dh]; q is already scaled by Dh**-0.5 (the relative term is added
after scaling, as the original GPT2RGA / Music Transformer). The relative table `rel` is
[R, Dh] (one per layer, shared across heads) or [H, R, Dh] (per head), R = max_relative.

Relative term: S_rel[i, j] = q_i . rel[R - 1 - min(i - j, R - 1)] for j <= i. Row R-1 is
distance 0, row R-1-d is the key d steps back; distances >= R are clipped to row 0 (the
farthest learned distance), so the model runs on sequences longer than its table.

Implementations (`impl`):
- "naive": the definition, gathering an L x L x Dh tensor (tests only);
- "skew": Music Transformer's skewing of q . E^T (O(L x Dh) for the table, L x L logits);
- "blockwise": flash-style online softmax over key blocks with a custom VJP that recomputes the
  block logits in the backward pass; never builds an L x L matrix, skips key blocks above the
  diagonal, and its memory is linear in L.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

_MASK = -1e30  # Finite "minus infinity": keeps exp(mask - max) = 0 without inf - inf = nan.


def relative_rows(rel: jax.Array, distances: jax.Array) -> jax.Array:
  """Rows of the relative table for `distances` (clipped to [0, R-1]); [..., n, Dh]."""
  num = rel.shape[-2]
  idx = num - 1 - jnp.clip(distances, 0, num - 1)
  return jnp.take(rel, idx, axis=-2)


def _qe_forward(q: jax.Array, rows: jax.Array) -> jax.Array:
  if rows.ndim == 2:
    return jnp.einsum("bhqd,md->bhqm", q, rows, preferred_element_type=jnp.float32)
  return jnp.einsum("bhqd,hmd->bhqm", q, rows, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _qe(q: jax.Array, rows: jax.Array) -> jax.Array:
  """q [B, H, Q, Dh] . rows [(H,) M, Dh] -> [B, H, Q, M] (fp32 accumulation).

  The custom VJP only changes how the table's gradient is laid out: autodiff contracts the
  big [B, H, Q, M] cotangent over (B, H, Q) as its first operand, which makes XLA on CPU
  transpose all of it (tens of MB per layer); contracting it as the second operand into
  [(H,) Dh, M] and transposing that small result is the same sum, ~10% of the RGA step faster.
  """
  return _qe_forward(q, rows)


def _qe_fwd(q, rows):
  return _qe_forward(q, rows), (q, rows)


def _qe_bwd(res, g):
  q, rows = res
  if rows.ndim == 2:
    dq = jnp.einsum("bhqm,md->bhqd", g, rows.astype(g.dtype))
    drows = jnp.einsum("bhqd,bhqm->dm", q.astype(g.dtype), g).T
  else:
    dq = jnp.einsum("bhqm,hmd->bhqd", g, rows.astype(g.dtype))
    drows = jnp.swapaxes(jnp.einsum("bhqd,bhqm->hdm", q.astype(g.dtype), g), 1, 2)
  return dq.astype(q.dtype), drows.astype(rows.dtype)


_qe.defvjp(_qe_fwd, _qe_bwd)


def rel_logits_naive(q: jax.Array, rel: jax.Array) -> jax.Array:
  """The definition: gathers rel rows into an [L, L, Dh] tensor. Tests only."""
  length = q.shape[2]
  pos = jnp.arange(length)
  g = relative_rows(rel, pos[:, None] - pos[None, :])  # [(H,) L, L, Dh]
  if g.ndim == 3:
    return jnp.einsum("bhid,ijd->bhij", q, g, preferred_element_type=jnp.float32)
  return jnp.einsum("bhid,hijd->bhij", q, g, preferred_element_type=jnp.float32)


def rel_logits_skew(q: jax.Array, rel: jax.Array) -> jax.Array:
  """Music Transformer skewing: S_rel[i, j] for j <= i (entries above the diagonal: junk)."""
  length = q.shape[2]
  rows = relative_rows(rel, length - 1 - jnp.arange(length))  # column m <-> distance L-1-m
  qe = _qe(q, rows)  # [B, H, L, L]
  b, h = qe.shape[:2]
  qe = jnp.pad(qe, ((0, 0), (0, 0), (0, 0), (1, 0)))
  return qe.reshape(b, h, length + 1, length)[:, :, 1:, :]


def _block_rel(q: jax.Array, rel: jax.Array, q0, k0, bk: int) -> jax.Array:
  """Relative logits of a [Bq] x [Bk] block whose first query/key sit at q0/k0.

  Computes q . rows for the Bq + Bk - 1 distances the block spans, then shifts each row so that
  out[i, j] = q_i . rel_row(q0 + i - k0 - j) (a rectangular skew; no Bq x Bk x Dh tensor).
  """
  bq = q.shape[2]
  ncol = bq + bk - 1
  c = jnp.arange(ncol)  # c = j - i + Bq - 1
  rows = relative_rows(rel, q0 - k0 + bq - 1 - c)
  x = _qe(q, rows)  # [B, H, Bq, ncol]
  b, h = x.shape[:2]
  width = bq + bk
  x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, width - ncol))).reshape(b, h, bq * width)
  x = jax.lax.slice_in_dim(x, bq - 1, bq - 1 + bq * (width - 1), axis=2)
  return x.reshape(b, h, bq, width - 1)[..., :bk]


def _causal_mask(q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
  return q_pos[:, None] >= k_pos[None, :]


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a cheap, well-mixing bijection on uint32."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def dropout_keep(key, rate: float, shape) -> jax.Array:
  """Boolean keep mask (P(keep) = 1 - rate) for dropout, a pure function of (key, shape).

  A counter-based hash (two MurmurHash3 finaliser rounds over the element index, keyed by the
  two words of `key`), not `jax.random.bernoulli`: threefry costs ~13 ns per element on a CPU
  and the attention-probability mask of rga.py:original has 33M elements per layer, which made
  dropout a third of the train step; this fuses into the surrounding elementwise ops (~6x
  faster). Masks of different keys are independent for dropout's purposes; the element index
  wraps at 2**32 (tensors that large repeat the pattern under a different key mix only).
  """
  kd = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  kd = kd.reshape(-1).astype(jnp.uint32)
  idx = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in range(len(shape) - 1, -1, -1):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  h = _fmix32(_fmix32(idx ^ kd[0]) + kd[-1])
  return h >= jnp.uint32(min(int(round(rate * 2**32)), 2**32 - 1))


def _dropout_mask(key, rate: float, shape) -> jax.Array:
  return dropout_keep(key, rate, shape).astype(jnp.float32) / (1.0 - rate)


# Query block of the "skew" path: query block a only meets keys [0, (a + 1) * block), which
# skips ~(1 - 1/n) / 2 of the L x L work above the causal diagonal (n = L / block blocks).
# 128: the fastest for rga.py:original on CPU (benchmarks/model_bench.py; docs/benchmarks.md).
SKEW_QUERY_BLOCK = 128


def _causal_rows(rel: jax.Array, q1: int) -> jax.Array:
  """Table rows for the q1 + 1 distances q1 - 1 .. -1 of `_causal_rel` (-1 clips to 0)."""
  return relative_rows(rel, q1 - 1 - jnp.arange(q1 + 1))


def _causal_rel(qa: jax.Array, rel: jax.Array, q0: int) -> jax.Array:
  """Relative logits of queries [q0, q0 + Bq) against keys [0, q0 + Bq): [B, H, Bq, q1].

  The square-skew special case of `_block_rel` for a block that ends at the causal diagonal:
  X = q . rows over the q1 + 1 distances q1 - 1 .. -1 (column c <-> distance q1 - 1 - c) is
  [B, H, Bq, q1 + 1], and out[i, j] = X[i, j - i + Bq - 1] is flat(X)[Bq - 1 + i * q1 + j]:
  one slice of a free reshape, no padding. Entries j > i read the next row's columns: junk,
  always causally masked (their gradient is zero, so the backward pass may scatter it).
  """
  bq = qa.shape[2]
  q1 = q0 + bq
  x = _qe(qa, _causal_rows(rel, q1))
  b, h = x.shape[:2]
  x = jax.lax.slice_in_dim(x.reshape(b, h, bq * (q1 + 1)), bq - 1, bq - 1 + bq * q1, axis=2)
  return x.reshape(b, h, bq, q1)


def _causal_rel_grad(qa, rel, q0: int, ds):
  """(dq, drel) of sum(_causal_rel(qa, rel, q0) * ds) with ds zero above the diagonal."""
  b, h, bq, q1 = ds.shape
  dx = jnp.pad(ds.reshape(b, h, bq * q1), ((0, 0), (0, 0), (bq - 1, 1))).reshape(b, h, bq, q1 + 1)
  rows, rows_vjp = jax.vjp(lambda r: _causal_rows(r, q1), rel)
  _, qe_vjp = jax.vjp(_qe, qa, rows)
  dq, drows = qe_vjp(dx)
  (drel,) = rows_vjp(drows)
  return dq, drel


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _causal_block(qa, k, v, rel, key, q0: int, rate: float):
  """Causal attention of queries [q0, q0 + Bq) over keys/values [0, q0 + Bq) (k, v cut to it).

  A custom VJP that keeps the probabilities p (and, with dropout, the dropped ones): the
  backward pass is the GEMMs and one fused elementwise pass ds = p * (dp - rowsum(do * o)),
  where autodiff of the same code made several more L x L passes (softmax's divide and
  reductions, the dropout scale, the skew's padding) and was ~1.5x slower on CPU.
  """
  return _causal_block_fwd(qa, k, v, rel, key, q0, rate)[0]


def _causal_block_fwd(qa, k, v, rel, key, q0, rate):
  q1 = k.shape[2]
  s = jnp.einsum("bhqd,bhkd->bhqk", qa, k, preferred_element_type=jnp.float32)
  if rel is not None:
    s = s + _causal_rel(qa, rel, q0)
  s = jnp.where(_causal_mask(jnp.arange(q0, q1), jnp.arange(q1)), s, _MASK)
  p = jax.nn.softmax(s, axis=-1)
  pd = (p * _dropout_mask(key, rate, p.shape) if rate > 0.0 else p).astype(v.dtype)
  o = jnp.einsum("bhqk,bhkd->bhqd", pd, v, preferred_element_type=jnp.float32).astype(qa.dtype)
  # With dropout both p and the dropped pd are kept (pd feeds the PV GEMM anyway): the
  # backward pass then needs no mask, since p * dp = pd * dpd.
  return o, (qa, k, v, rel, p.astype(qa.dtype), pd if rate > 0.0 else None, o)


def _causal_block_bwd(q0, rate, res, do):
  qa, k, v, rel, p, pd, o = res
  f32 = jnp.float32
  delta = jnp.sum(do.astype(f32) * o.astype(f32), axis=-1, keepdims=True)  # rowsum(dp * p)
  dpd = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=f32)
  if pd is None:
    pd = p
    ds = p.astype(f32) * (dpd - delta)
  else:
    ds = pd.astype(f32) * dpd - p.astype(f32) * delta
  dv = jnp.einsum("bhqk,bhqd->bhkd", pd.astype(do.dtype), do, preferred_element_type=f32)
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds.astype(k.dtype), k, preferred_element_type=f32)
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(qa.dtype), qa, preferred_element_type=f32)
  drel = None
  if rel is not None:
    dq_rel, drel = _causal_rel_grad(qa, rel, q0, ds.astype(qa.dtype))
    dq = dq + dq_rel.astype(f32)
    drel = drel.astype(rel.dtype)
  return (dq.astype(qa.dtype), dk.astype(k.dtype), dv.astype(v.dtype), drel, None)


_causal_block.defvjp(_causal_block_fwd, _causal_block_bwd)


def _skew_query_blocks(q, k, v, rel, *, block: int, dropout_rate: float, dropout_key):
  """Dense causal attention, one query block at a time over its visible key prefix.

  Same values as `dense_attention` (the relative term is the skew of a rectangular block,
  `_causal_rel`); the dropout mask of query block a uses fold_in(key, a).
  """
  length = q.shape[2]
  rate = float(dropout_rate) if dropout_key is not None else 0.0
  outs = []
  for a, q0 in enumerate(range(0, length, block)):
    q1 = min(q0 + block, length)
    key = jax.random.fold_in(dropout_key, a) if rate > 0.0 else None
    outs.append(_causal_block(q[:, :, q0:q1], k[:, :, :q1], v[:, :, :q1], rel, key, q0, rate))
  return jnp.concatenate(outs, axis=2)


def dense_attention(q, k, v, rel: Optional[jax.Array], *, impl: str = "skew",
                    dropout_rate: float = 0.0, dropout_key=None,
                    query_block: int = SKEW_QUERY_BLOCK) -> jax.Array:
  """Full-matrix causal attention; `impl` ("naive" | "skew") picks the relative term.

  "skew" with L > `query_block` runs query blocks over their causal key prefixes
  (`_skew_query_blocks`). Returns [B, H, L, Dh] in q.dtype. Softmax in float32.
  """
  length = q.shape[2]
  if impl == "skew" and length > query_block:
    return _skew_query_blocks(q, k, v, rel, block=query_block, dropout_rate=dropout_rate,
                              dropout_key=dropout_key)
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
  if rel is not None:
    if impl == "naive":
      s = s + rel_logits_naive(q, rel)
    elif impl == "skew":
      s = s + rel_logits_skew(q, rel)
    else:
      raise ValueError(f"dense_attention: impl must be 'naive' or 'skew', got {impl!r}")
  pos = jnp.arange(length)
  s = jnp.where(_causal_mask(pos, pos), s, _MASK)
  p = jax.nn.softmax(s, axis=-1)
  if dropout_rate > 0.0 and dropout_key is not None:
    p = p * _dropout_mask(dropout_key, dropout_rate, p.shape)
  return jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(q.dtype)


# ------------------------------------------------------------------------------ blockwise


def _block_logits(qa, kb, rel, q0, k0):
  """Masked fp32 logits of one (query block, key block) pair."""
  bq, bk = qa.shape[2], kb.shape[2]
  s = jnp.einsum("bhqd,bhkd->bhqk", qa, kb, preferred_element_type=jnp.float32)
  if rel is not None:
    s = s + _block_rel(qa, rel, q0, k0, bk)
  mask = _causal_mask(q0 + jnp.arange(bq), k0 + jnp.arange(bk))
  return jnp.where(mask, s, _MASK)


def _split_blocks(x, n, bs):
  b, h, _, d = x.shape
  return x.reshape(b, h, n, bs, d).transpose(2, 0, 1, 3, 4)  # [n, B, H, bs, D]


def _merge_blocks(x):
  n, b, h, bs, d = x.shape
  return x.transpose(1, 2, 0, 3, 4).reshape(b, h, n * bs, d)


def _block_key(key, a, b):
  return jax.random.fold_in(jax.random.fold_in(key, a), b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _flash(q, k, v, rel, key, block: int, rate: float):
  out, _ = _flash_fwd_impl(q, k, v, rel, key, block, rate)
  return out


def _flash_fwd_impl(q, k, v, rel, key, block, rate):
  n = q.shape[2] // block
  qs, ks, vs = (_split_blocks(x, n, block) for x in (q, k, v))
  b, h, _, dh = q.shape

  def q_step(_, a):
    qa = qs[a]

    def k_step(bi, carry):
      m, l, acc = carry
      s = _block_logits(qa, ks[bi], rel, a * block, bi * block)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None])
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(-1)
      if rate > 0.0:
        p = p * _dropout_mask(_block_key(key, a, bi), rate, p.shape)
      acc = acc * corr[..., None] + jnp.einsum(
          "bhqk,bhkd->bhqd", p.astype(vs.dtype), vs[bi], preferred_element_type=jnp.float32)
      return m_new, l, acc

    init = (jnp.full((b, h, block), -jnp.inf, jnp.float32), jnp.zeros((b, h, block), jnp.float32),
            jnp.zeros((b, h, block, dh), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, a + 1, k_step, init)
    return None, ((acc / l[..., None]).astype(q.dtype), m + jnp.log(l))

  _, (outs, lses) = jax.lax.scan(q_step, None, jnp.arange(n))
  return _merge_blocks(outs), lses  # lses [n, B, H, block]


def _flash_fwd(q, k, v, rel, key, block, rate):
  out, lse = _flash_fwd_impl(q, k, v, rel, key, block, rate)
  return out, (q, k, v, rel, key, out, lse)


def _flash_bwd(block, rate, res, dout):
  q, k, v, rel, key, out, lse = res
  n = q.shape[2] // block
  qs, ks, vs, os_, dos = (_split_blocks(x, n, block) for x in (q, k, v, out, dout))
  delta = jnp.sum(dos.astype(jnp.float32) * os_.astype(jnp.float32), -1)  # [n, B, H, block]

  def q_step(carry, a):
    qa, doa, lsea, deltaa = qs[a], dos[a], lse[a], delta[a]

    def k_step(bi, c):
      dqa, dk, dv, drel = c
      kb, vb = ks[bi], vs[bi]
      s, vjp = jax.vjp(lambda q_, k_, r_: _block_logits(q_, k_, r_, a * block, bi * block),
                       qa, kb, rel)
      p = jnp.exp(s - lsea[..., None])
      dp = jnp.einsum("bhqd,bhkd->bhqk", doa, vb, preferred_element_type=jnp.float32)
      if rate > 0.0:
        z = _dropout_mask(_block_key(key, a, bi), rate, p.shape)
        pz, dp = p * z, dp * z
      else:
        pz = p
      dvb = jnp.einsum("bhqk,bhqd->bhkd", pz.astype(doa.dtype), doa,
                       preferred_element_type=jnp.float32)
      ds = p * (dp - deltaa[..., None])
      dq_, dk_, dr_ = vjp(ds)
      dk = dk.at[bi].add(dk_.astype(jnp.float32))
      dv = dv.at[bi].add(dvb)
      if rel is not None:
        drel = drel + dr_.astype(jnp.float32)
      return dqa + dq_.astype(jnp.float32), dk, dv, drel

    dk, dv, drel = carry
    dqa, dk, dv, drel = jax.lax.fori_loop(
        0, a + 1, k_step, (jnp.zeros(qa.shape, jnp.float32), dk, dv, drel))
    return (dk, dv, drel), dqa

  zeros = jnp.zeros(ks.shape, jnp.float32)
  drel0 = None if rel is None else jnp.zeros(rel.shape, jnp.float32)
  (dk, dv, drel), dq = jax.lax.scan(q_step, (zeros, zeros, drel0), jnp.arange(n))
  dq, dk, dv = (_merge_blocks(x).astype(q.dtype) for x in (dq, dk, dv))
  drel = None if rel is None else drel.astype(rel.dtype)
  return dq, dk, dv, drel, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q, k, v, rel: Optional[jax.Array], *, block_size: int = 512,
                        dropout_rate: float = 0.0, dropout_key=None) -> jax.Array:
  """Causal attention over key blocks with an online softmax; memory linear in L.

  Any L works: the sequence is padded to a multiple of the block (padded keys sit after every
  real query, so the causal mask hides them) and the result is cut back. Returns [B, H, L, Dh].
  """
  length = q.shape[2]
  block = max(1, min(int(block_size), length))
  padded = -(-length // block) * block
  if padded != length:
    pad = ((0, 0), (0, 0), (0, padded - length), (0, 0))
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  rate = float(dropout_rate) if dropout_key is not None else 0.0
  out = _flash(q, k, v, rel, dropout_key if rate > 0.0 else None, block, rate)
  return out[:, :, :length]


def attention(q, k, v, rel, *, impl: str, block_size: int = 512, dropout_rate: float = 0.0,
              dropout_key=None) -> jax.Array:
  """Dispatches to `dense_attention` ("naive", "skew") or `blockwise_attention`."""
  if impl == "blockwise":
    return blockwise_attention(q, k, v, rel, block_size=block_size, dropout_rate=dropout_rate,
                               dropout_key=dropout_key)
  return dense_attention(q, k, v, rel, impl=impl, dropout_rate=dropout_rate,
                         dropout_key=dropout_key)


def cached_attention(q, k, v, k_cache, v_cache, rel, q_pos, pos) -> jax.Array:
  """Attention of T new tokens over a KV cache and themselves (decode / prefill).

  Args:
    q, k, v: [B, H, T, Dh], the new tokens' scaled queries, keys and values, at absolute
      positions q_pos [B, T] = pos[:, None] + 0..T-1.
    k_cache, v_cache: [B, H, S, Dh] before the new tokens are written; slot s holds the token
      at absolute position s and is visible iff s < pos[b]. None for a fresh window (pos = 0,
      nothing cached visible): the cache is not read at all.
    rel: relative table or None.
    q_pos: int32 [B, T]; pos: int32 [B].

  Returns:
    [B, H, T, Dh]: causal attention over the cached slots and the new tokens, the relative term
    at distance q_pos - key position with the same table rows and clipping as the full forward.

  The new keys enter separately instead of through the updated cache, so nothing reads the
  cache after its update and XLA writes it in place inside the sampling loop (attending over
  the written cache made it keep a second, copied version of every layer's cache per token).
  The softmax runs over both parts with one shared max.
  """
  t = q.shape[2]
  s_new = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
  d_new = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # [T, T]
  if rel is not None:
    qe = _qe(q, rel)  # [B, H, T, R]; column r <-> distance R-1-r
    num = rel.shape[-2]
    idx_new = jnp.broadcast_to(num - 1 - jnp.clip(d_new, 0, num - 1), q_pos.shape + (t,))
    s_new = s_new + jnp.take_along_axis(qe, idx_new[:, None], axis=-1)
  s_new = jnp.where(d_new >= 0, s_new, _MASK)
  parts = [(s_new, v)]
  if k_cache is not None:  # None: a fresh window, nothing cached is visible.
    slots = jnp.arange(k_cache.shape[2])
    s_old = jnp.einsum("bhtd,bhsd->bhts", q, k_cache, preferred_element_type=jnp.float32)
    if rel is not None:
      idx_old = num - 1 - jnp.clip(q_pos[:, :, None] - slots[None, None, :], 0, num - 1)
      s_old = s_old + jnp.take_along_axis(qe, idx_old[:, None], axis=-1)
    s_old = jnp.where((slots[None, :] < pos[:, None])[:, None, None, :], s_old, _MASK)
    parts.append((s_old, v_cache))
  m = functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s, _ in parts])
  exps = [(jnp.exp(s - m), vals) for s, vals in parts]
  denom = sum(e.sum(-1, keepdims=True) for e, _ in exps)
  o = sum(jnp.einsum("bhts,bhsd->bhtd", e.astype(vals.dtype), vals,
                     preferred_element_type=jnp.float32) for e, vals in exps)
  return (o / denom).astype(q.dtype)
