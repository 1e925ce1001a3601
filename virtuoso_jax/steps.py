"""The training math: optimizer, one train step, one eval step (pure functions, no mesh or data).

State (a plain pytree, sharded on the (data, fsdp, tensor) mesh by virtuoso_jax.trainer):
  {"params": nnx.State of the model's Params,
   "opt_state": optax state,
   "train": {"step": int32 (completed updates), "rng": uint32[2] base key data}}
The dropout key of update `s` is `fold_in(rng, s)`, so nothing random lives outside the state
and a resumed run is bit-for-bit the uninterrupted one (same program, same data position).

Gradient accumulation scans over micro-batches (rows `a, a+A, ...`, so each micro-batch stays
spread over every device). Loss = summed token NLL / counted targets of the whole global batch,
so accumulation and sharding do not change it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# ------------------------------------------------------------------ optimizer


def create_learning_rate_schedule(config) -> optax.Schedule:
  """warmup + cosine, constant (with optional warmup), or Noam (the original RGA)."""
  o = config.optim
  if o.schedule == "noam":
    d_model, warmup = float(config.model.emb_dim), float(o.warmup_steps)

    def noam(step):
      s = jnp.asarray(step, jnp.float32)
      # d^-0.5 * min(s^-0.5, s * warmup^-1.5); 0 at step 0.
      return d_model**-0.5 * jnp.minimum(jnp.where(s > 0, s, 1.0)**-0.5, s * warmup**-1.5)
    return noam
  if o.schedule == "constant":
    if o.warmup_steps:
      return optax.join_schedules(
          [optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps),
           optax.constant_schedule(o.learning_rate)], [o.warmup_steps])
    return optax.constant_schedule(o.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate, warmup_steps=o.warmup_steps,
      decay_steps=max(config.num_train_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.min_lr_ratio)


_EMBEDDING_AXES = ("length", "relative")  # Logical axes that only embedding tables have.


def weight_decay_mask(params) -> Any:
  """True for kernels (the matrices of linear maps, output head included); False for biases,
  norms (by name) and embedding tables (token: first logical axis `vocab`; positions: `length`;
  relative: `relative`, from the parameters' logical-axis metadata)."""
  def decay(path, v):
    value = v.get_value() if isinstance(v, nnx.Variable) else v
    name = str(getattr(path[-1], "key", getattr(path[-1], "name", ""))) if path else ""
    axes = ()
    if isinstance(v, nnx.Variable):
      axes = tuple(v.get_metadata().get("out_sharding") or ())
    out = (getattr(value, "ndim", 0) >= 2 and "bias" not in name and "scale" not in name
           and not (axes and (axes[0] == "vocab" or any(a in _EMBEDDING_AXES for a in axes))))
    return v.replace(out) if isinstance(v, nnx.Variable) else out
  return jax.tree_util.tree_map_with_path(decay, params,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  schedule = create_learning_rate_schedule(config)
  parts = []
  if o.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  if o.optimizer == "adamw":
    parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=weight_decay_mask))
  else:
    parts.append(optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps))
  return optax.chain(*parts)


# ------------------------------------------------------------------ steps


def _token_stats(logits, targets, mask):
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return nll * mask, correct * mask


def _seeded(rest, key):
  """`rest` (the model's non-Param state) with every RNG stream set to a key derived from `key`
  and its counter at 0: the step's dropout is a pure function of (rng, step)."""
  counter = iter(range(1 << 30))

  def one(v):
    if isinstance(v, nnx.RngKey):
      return v.replace(jax.random.fold_in(key, next(counter)))
    if isinstance(v, nnx.RngCount):  # Shape and dtype only: `rest` may be abstract.
      value = v.get_value()
      return v.replace(jnp.zeros(value.shape, value.dtype))
    return v
  return jax.tree.map(one, rest, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _micro_batches(x, *, accum_steps: int):
  """[B, ...] -> [A, B/A, ...]: micro-batch a = rows a, a+A, a+2A, ... (each stays spread over
  every device of the batch sharding)."""
  return jnp.swapaxes(x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]), 0, 1)


def train_step(state, batch, *, graphdef, rest, tx, accum_steps: int):
  """One optimizer update over the global batch. Returns (new_state, metrics)."""
  step = state["train"]["step"]
  key = jax.random.fold_in(jax.random.wrap_key_data(state["train"]["rng"]), step)
  total = jnp.maximum(jnp.sum(batch["mask"]), 1.0)

  def micro_loss(params, mb, k):
    model = nnx.merge(graphdef, params, _seeded(rest, k))
    logits = model(mb["inputs"], deterministic=False)
    nll, correct = _token_stats(logits, mb["targets"], mb["mask"])
    return jnp.sum(nll) / total, jnp.sum(correct)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)
  if accum_steps == 1:
    (loss, correct), grads = grad_fn(state["params"], batch, key)
  else:
    micro = jax.tree.map(functools.partial(_micro_batches, accum_steps=accum_steps), batch)

    def body(carry, inputs):
      g_acc, l_acc, c_acc = carry
      mb, i = inputs
      (l, c), g = grad_fn(state["params"], mb, jax.random.fold_in(key, i))
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, c_acc + c), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (grads, loss, correct), _ = jax.lax.scan(
        body, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
        (micro, jnp.arange(accum_steps)))
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  new_state = {"params": params, "opt_state": opt_state,
               "train": {"step": step + 1, "rng": state["train"]["rng"]}}
  metrics = {"train/loss": loss, "train/accuracy": correct / total,
             "train/grad_norm": optax.global_norm(grads)}
  return new_state, metrics


def eval_step(params, batch, log_unigram, note_table, *, graphdef, rest, accum_steps: int = 1):
  """Sums over one eval batch: nll, targets, correct, notes, seconds of music, unigram nll.
  With accum_steps > 1 the batch goes through the model in that many micro-batches (rows as in
  train_step), so evaluation fits wherever the train step's micro-batch does."""
  model_rest = _seeded(rest, jax.random.key(0))  # Deterministic: the keys are never drawn.

  def sums(mb):
    model = nnx.merge(graphdef, params, model_rest)
    logits = model(mb["inputs"], deterministic=True)
    nll, correct = _token_stats(logits, mb["targets"], mb["mask"])
    mask = mb["mask"]
    return {"nll": jnp.sum(nll), "count": jnp.sum(mask), "correct": jnp.sum(correct),
            "notes": jnp.sum(note_table[mb["targets"]] * mask),
            "seconds": jnp.sum(mb["seconds"]),
            "unigram_nll": -jnp.sum(log_unigram[mb["targets"]] * mask)}

  if accum_steps == 1:
    return sums(batch)
  micro = jax.tree.map(functools.partial(_micro_batches, accum_steps=accum_steps), batch)
  per = jax.lax.map(sums, micro)
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), per)


def summarize_eval(sums: dict[str, float]) -> dict[str, float]:
  count = max(sums["count"], 1.0)
  notes = max(sums["notes"], 1.0)
  loss = sums["nll"] / count
  return {"eval/loss": loss, "eval/accuracy": sums["correct"] / count,
          "eval/perplexity": math.exp(min(loss, 50.0)), "eval/nll_per_note": sums["nll"] / notes,
          "eval/unigram_nll": sums["unigram_nll"] / count,
          "eval/unigram_nll_per_note": sums["unigram_nll"] / notes,
          # Bits per second of music compares models across codecs (evaluation.py).
          "eval/bits_per_second": (sums["nll"] / math.log(2) / sums["seconds"]
                                   if sums["seconds"] > 0 else float("nan")),
          "eval/tokens": sums["count"], "eval/notes": sums["notes"],
          "eval/seconds": sums["seconds"]}


def note_marker_table(codec, kind: str) -> np.ndarray:
  """float32[V]: 1 for the one id field every note has exactly once (pitch; char: newline)."""
  table = np.zeros(codec.vocab_size, np.float32)
  if kind == "char":
    table[codec.newline_id] = 1.0
    return table
  ranges = codec.field_ranges
  ranges = ranges() if callable(ranges) else ranges
  lo, hi = ranges["pitch"] if "pitch" in ranges else ranges["instrument_pitch"]
  table[lo:hi] = 1.0
  return table
