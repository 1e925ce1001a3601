"""naive == skew == blockwise (values and gradients), dropout in the blockwise VJP, cached path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from virtuoso_jax.models import attention as A

IMPLS = ("naive", "skew", "blockwise")


def _inputs(b, h, length, dh, num_rel, per_head, seed=0):
  ks = jax.random.split(jax.random.key(seed), 5)
  q, k, v, do = (jax.random.normal(kk, (b, h, length, dh)) for kk in (ks[0], ks[1], ks[2], ks[4]))
  rel = jax.random.normal(ks[3], ((h,) if per_head else ()) + (num_rel, dh))
  return q, k, v, rel, do


@functools.partial(jax.jit, static_argnums=(0, 6))
def _value_and_grads(impl, q, k, v, rel, do, block):
  def run(q, k, v, rel):
    if impl == "skew_query_blocks":  # the causal query-block path of "skew" at long L
      return A.dense_attention(q, k, v, rel, impl="skew", query_block=block)
    return A.attention(q, k, v, rel, impl=impl, block_size=block)

  def f(q, k, v, rel):
    return jnp.sum(run(q, k, v, rel) * do)
  return (run(q, k, v, rel),) + jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, rel)


@pytest.mark.parametrize("b,h,length,dh,num_rel,per_head,block", [
    (2, 3, 7, 5, 4, False, 3),     # odd sizes, distances clipped (R < L), ragged last block
    (1, 2, 16, 8, 32, True, 4),    # per-head tables, R > L
    (1, 1, 1, 4, 3, False, 2),     # a single token
])
def test_implementations_agree(b, h, length, dh, num_rel, per_head, block):
  q, k, v, rel, do = _inputs(b, h, length, dh, num_rel, per_head)
  ref = _value_and_grads("naive", q, k, v, rel, do, block)
  for impl in ("skew", "skew_query_blocks", "blockwise"):
    got = _value_and_grads(impl, q, k, v, rel, do, block)
    for name, r, g in zip(("out", "dq", "dk", "dv", "drel"), ref, got):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"{impl} {name}")


def test_relative_term_matches_definition_and_clips():
  q, _, _, rel, _ = _inputs(1, 1, 6, 3, 4, False)
  s = A.rel_logits_naive(q, rel)
  for i in range(6):
    for j in range(i + 1):
      row = 4 - 1 - min(i - j, 4 - 1)
      np.testing.assert_allclose(s[0, 0, i, j], q[0, 0, i] @ rel[row], rtol=1e-5, atol=1e-6)


def test_no_relative_term_agrees():
  q, k, v, _, do = _inputs(2, 2, 11, 4, 4, False)
  ref = _value_and_grads("skew", q, k, v, None, do, 4)
  got = _value_and_grads("blockwise", q, k, v, None, do, 4)
  for r, g in zip(ref[:4], got[:4]):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def _dense_with_mask(q, k, v, rel, mask):
  """The definition with a given dropout multiplier on the probabilities."""
  length = q.shape[2]
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k) + A.rel_logits_naive(q, rel)
  pos = jnp.arange(length)
  s = jnp.where(pos[:, None] >= pos[None, :], s, -1e30)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1) * mask, v)


def test_blockwise_dropout_matches_dense_with_the_same_mask():
  b, h, length, dh, block, rate = 1, 2, 10, 4, 4, 0.3
  q, k, v, rel, do = _inputs(b, h, length, dh, 8, False, seed=1)
  key = jax.random.key(7)
  # Rebuild the blockwise kernel's per-block masks as one dense matrix.
  n = -(-length // block)
  full = np.zeros((b, h, n * block, n * block), np.float32)
  for a in range(n):
    for bi in range(a + 1):
      m = A._dropout_mask(A._block_key(key, a, bi), rate, (b, h, block, block))
      full[:, :, a * block:(a + 1) * block, bi * block:(bi + 1) * block] = m
  mask = jnp.asarray(full[:, :, :length, :length])

  def dense(q, k, v, rel):
    return _dense_with_mask(q, k, v, rel, mask)

  def blockwise(q, k, v, rel):
    return A.blockwise_attention(q, k, v, rel, block_size=block, dropout_rate=rate,
                                 dropout_key=key)

  np.testing.assert_allclose(jax.jit(blockwise)(q, k, v, rel), dense(q, k, v, rel), atol=1e-5)
  g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(dense(*a) * do), argnums=(0, 1, 2, 3)))(q, k, v, rel)
  g = jax.jit(jax.grad(lambda *a: jnp.sum(blockwise(*a) * do), argnums=(0, 1, 2, 3)))(q, k, v, rel)
  for r, x in zip(g_ref, g):
    np.testing.assert_allclose(x, r, atol=1e-5, rtol=1e-5)
  no_dropout = A.blockwise_attention(q, k, v, rel, block_size=block)
  assert not np.allclose(jax.jit(blockwise)(q, k, v, rel), no_dropout)


@pytest.mark.parametrize("per_head", [False, True])
def test_cached_attention_equals_full(per_head):
  # T new tokens after a per-row cached prefix (row 0: 3 cached, row 1: 6; prefill: 0), in a
  # cache longer than the sequence whose unwritten slots hold garbage that must stay masked.
  b, h, length, dh = 2, 2, 9, 4
  q, k, v, rel, _ = _inputs(b, h, length, dh, 5, per_head)
  full = A.attention(q, k, v, rel, impl="naive")
  garbage = jax.random.normal(jax.random.key(7), (b, h, 12, dh))
  for prefix, t in (((3, 6), 3), ((0, 0), length), ((8, 5), 1)):
    pos = jnp.array(prefix, jnp.int32)
    q_pos = pos[:, None] + jnp.arange(t)[None, :]
    take = lambda x, i: jnp.take_along_axis(x, i[:, None, :, None], axis=2)
    slots = jnp.arange(12)[None, :]
    visible = (slots < pos[:, None])[:, None, :, None]
    cache_k = jnp.where(visible, jnp.pad(k, ((0, 0), (0, 0), (0, 3), (0, 0))), garbage)
    cache_v = jnp.where(visible, jnp.pad(v, ((0, 0), (0, 0), (0, 3), (0, 0))), -garbage)
    got = A.cached_attention(take(q, q_pos), take(k, q_pos), take(v, q_pos), cache_k, cache_v,
                             rel, q_pos, pos)
    np.testing.assert_allclose(got, take(full, q_pos), atol=1e-5, err_msg=f"prefix {prefix}")
  # A fresh window (no cache passed): the new tokens alone.
  got = A.cached_attention(q, k, v, None, None, rel,
                           jnp.broadcast_to(jnp.arange(length), (b, length)),
                           jnp.zeros((b,), jnp.int32))
  np.testing.assert_allclose(got, full, atol=1e-5)


def test_dropout_keep_rate_and_key_dependence():
  k1, k2 = jax.random.key(1), jax.random.key(2)
  m1 = A.dropout_keep(k1, 0.1, (64, 1000))
  assert abs(float(m1.mean()) - 0.9) < 0.005
  assert bool(jnp.all(m1 == A.dropout_keep(k1, 0.1, (64, 1000))))  # pure in the key
  m2 = A.dropout_keep(k2, 0.1, (64, 1000))
  assert abs(float(jnp.mean(m1 & m2)) - 0.81) < 0.005  # independent across keys
  assert abs(float(jnp.mean(m1[:, :-1] & m1[:, 1:])) - 0.81) < 0.005  # and across neighbours


@pytest.mark.parametrize("per_head", [False, True])
def test_skew_query_block_dropout_matches_dense_with_the_same_mask(per_head):
  # The skew path's custom VJP keeps p and the dropped p; check values and all four gradients
  # against autodiff of the definition under the same masks (query block a: fold_in(key, a)).
  b, h, length, dh, block, rate = 2, 2, 11, 4, 4, 0.3
  q, k, v, rel, do = _inputs(b, h, length, dh, 6, per_head, seed=2)
  key = jax.random.key(3)
  rows = [A._dropout_mask(jax.random.fold_in(key, a), rate, (b, h, min(block, length - q0),
                                                               min(q0 + block, length)))
          for a, q0 in enumerate(range(0, length, block))]
  mask = jnp.concatenate([jnp.pad(m, ((0, 0), (0, 0), (0, 0), (0, length - m.shape[-1])))
                          for m in rows], axis=2)

  def dense(q, k, v, rel):
    return _dense_with_mask(q, k, v, rel, mask)

  def skew(q, k, v, rel):
    return A.dense_attention(q, k, v, rel, impl="skew", dropout_rate=rate, dropout_key=key,
                             query_block=block)

  np.testing.assert_allclose(jax.jit(skew)(q, k, v, rel), dense(q, k, v, rel), atol=1e-5)
  g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(dense(*a) * do), argnums=(0, 1, 2, 3)))(q, k, v, rel)
  g = jax.jit(jax.grad(lambda *a: jnp.sum(skew(*a) * do), argnums=(0, 1, 2, 3)))(q, k, v, rel)
  for name, r, x in zip(("dq", "dk", "dv", "drel"), g_ref, g):
    np.testing.assert_allclose(x, r, atol=1e-5, rtol=1e-5, err_msg=name)
  assert not np.allclose(jax.jit(skew)(q, k, v, rel),
                         A.dense_attention(q, k, v, rel, impl="skew", query_block=block))
