"""Model benchmarks: relative attention (naive / skew / blockwise) and the RGA train-step MFU.

  python -m benchmarks.model_bench                 # everything (tens of minutes on 2 cores)
  python -m benchmarks.model_bench --only=attn --lengths=512,1024
  python -m benchmarks.model_bench --only=mfu --repeats=3

One JSON line per figure (benchmarks.common.emit). Attention figures: forward + backward of one
RGA attention layer of rga.py:original's shape (batch 1, 8 heads, head dim 64, max_relative = L)
at each length, each in its own subprocess (an OOM or timeout kills only that point), with the
subprocess's peak RSS. `rga_train_step_8192`: a full rga.py:long train step (batch 1 x 8192,
blockwise, remat). MFU: rga.py:original train step (batch 4 x 1024, AdamW, fp32) against the
matmul peak measured right before each step timing in the same process (MaxText FLOP count,
virtuoso_jax.flops).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags

if __package__ in (None, ""):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

_ONLY = flags.DEFINE_enum("only", "all", ["all", "attn", "long", "mfu"], "Which benchmarks.")
_LENGTHS = flags.DEFINE_string("lengths", "512,1024,2048,4096,8192",
                               "Comma-separated attention lengths.")
_IMPLS = flags.DEFINE_string("impls", "naive,skew,blockwise",
                             "Comma-separated relative-attention implementations.")
_MFU_IMPLS = flags.DEFINE_string("mfu_impls", "skew,blockwise",
                                 "Comma-separated implementations for the MFU figure.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per figure.")
_TIMEOUT = flags.DEFINE_integer("timeout", 600, "Seconds per subprocess.")
# Set by this script for the subprocess that measures one point (common.run_worker).
_WORKER = flags.DEFINE_string("worker", "", "Internal: measure one point ('attn' or 'long').")
_IMPL = flags.DEFINE_string("impl", "", "Internal: the --worker=attn implementation.")
_LENGTH = flags.DEFINE_integer("length", 0, "Internal: the --worker=attn length.")


def _attn_worker(impl: str, length: int, repeats: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from virtuoso_jax.models import attention as A  # pylint: disable=g-import-not-at-top
  base_rss = common.peak_rss_bytes()
  b, h, dh = 1, 8, 64
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(kk, (b, h, length, dh)) for kk in ks[:3])
  rel = jax.random.normal(ks[3], (length, dh)) * 0.02

  @jax.jit
  def fwd_bwd(q, k, v, rel):
    f = lambda *a: jnp.sum(A.attention(*a, impl=impl, block_size=512))
    return jax.value_and_grad(f, argnums=(0, 1, 2, 3))(q, k, v, rel)

  times = common.time_fn(fwd_bwd, q, k, v, rel, repeats=repeats)
  common.emit("attn_fwd_bwd_time", min(times), "s", impl=impl, seq_len=length,
              times=[round(t, 4) for t in times])
  common.emit("attn_fwd_bwd_peak_rss", common.peak_rss_bytes() / 2**20, "MiB", impl=impl,
              seq_len=length, baseline_mib=round(base_rss / 2**20, 1))


def _train_setup(cfg, batch, length):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import models  # pylint: disable=g-import-not-at-top
  graphdef, params, rest = nnx.split(models.create_model(cfg, nnx.Rngs(0)), nnx.Param, ...)
  tx = optax.adamw(1e-4)
  opt = tx.init(params)
  tokens = jax.random.randint(jax.random.key(0), (batch, length + 1), 0, cfg.vocab_size)

  def loss_fn(p, key):
    logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1], deterministic=False, dropout_key=key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  @jax.jit
  def step(p, o, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  return step, params, opt


def _long_worker() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import rga  # pylint: disable=g-import-not-at-top
  cfg = rga.get_config("long").model
  cfg.vocab_size = 390
  step, p, o = _train_setup(cfg, 1, cfg.max_len)
  t0 = time.perf_counter()
  p, o, loss = step(p, o, jax.random.key(0))
  jax.block_until_ready(loss)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  p, o, loss = step(p, o, jax.random.key(1))
  jax.block_until_ready(loss)
  common.emit("rga_train_step_8192", time.perf_counter() - t0, "s", config="rga.py:long",
              batch=1, seq_len=cfg.max_len, rel_impl=cfg.rel_impl, remat=cfg.remat,
              first_step_with_compile_s=round(first, 1), loss=float(loss))
  common.emit("rga_train_step_8192_peak_rss", common.peak_rss_bytes() / 2**20, "MiB",
              config="rga.py:long")


def _mfu(impls, repeats: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from configs import rga  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import flops  # pylint: disable=g-import-not-at-top
  for impl in impls:
    cfg = rga.get_config("original").model
    cfg.rel_impl = impl
    batch, length = 4, cfg.max_len
    step, p, o = _train_setup(cfg, batch, length)
    p, o, loss = step(p, o, jax.random.key(0))
    jax.block_until_ready(loss)
    fpt = flops.train_flops_per_token(cfg, length)
    mfus, times, peaks = [], [], []
    for r in range(repeats):
      peak = common.matmul_peak_flops(repeats=3)
      t0 = time.perf_counter()
      p, o, loss = step(p, o, jax.random.key(r + 1))
      jax.block_until_ready(loss)
      dt = time.perf_counter() - t0
      times.append(dt)
      peaks.append(peak)
      mfus.append(flops.mfu(batch * length / dt, fpt, peak))
    common.emit("rga_original_train_step_time", min(times), "s", rel_impl=impl, batch=batch,
                seq_len=length, times=[round(t, 2) for t in times])
    common.emit("rga_original_tokens_per_s", batch * length / min(times), "tokens/s",
                rel_impl=impl)
    common.emit("matmul_peak", max(peaks) / 1e9, "GFLOP/s",
                all=[round(x / 1e9, 1) for x in peaks])
    # Conservative: the fastest step against the highest peak seen. (The best back-to-back
    # pair is not: one peak measured while a neighbour stole the CPU inflated it to 0.57.)
    common.emit("rga_original_train_mfu",
                flops.mfu(batch * length / min(times), fpt, max(peaks)),
                "fraction", rel_impl=impl, flops_per_token=fpt,
                pairs=[round(m, 3) for m in mfus],
                note="fastest step / highest matmul peak of the same process; machine shared")


def _run_sub(args, timeout):
  return common.run_worker("benchmarks.model_bench", args, timeout)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  repeats, timeout = _REPEATS.value, _TIMEOUT.value
  if _WORKER.value == "attn":
    return _attn_worker(_IMPL.value, _LENGTH.value, repeats)
  if _WORKER.value == "long":
    return _long_worker()
  if _ONLY.value in ("all", "mfu"):
    _mfu(_MFU_IMPLS.value.split(","), repeats)
  if _ONLY.value in ("all", "attn"):
    for length in [int(x) for x in _LENGTHS.value.split(",")]:
      for impl in _IMPLS.value.split(","):
        _, err = _run_sub(["--worker=attn", f"--impl={impl}", f"--length={length}",
                           f"--repeats={repeats}"], timeout)
        if err:
          common.emit("attn_fwd_bwd_time", None, "s", impl=impl, seq_len=length, error=err)
  if _ONLY.value in ("all", "long"):
    _, err = _run_sub(["--worker=long"], timeout)
    if err:
      common.emit("rga_train_step_8192", None, "s", error=err)


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # What the binaries set on a CPU host, before JAX starts.
  app.run(main)
