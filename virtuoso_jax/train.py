"""Training loop: `train_and_evaluate(config, workdir)`.

State (a plain pytree, sharded on the (data, fsdp, tensor) mesh):
  {"params": nnx.State of the model's Params,
   "opt_state": optax state,
   "train": {"step": int32 (completed updates), "rng": uint32[2] base key data}}
The dropout key of update `s` is `fold_in(rng, s)`, so nothing random lives outside the state
and a resumed run is bit-for-bit the uninterrupted one (same program, same data position).

The step is jitted with donated state buffers, lowered and compiled before step 0; gradient
accumulation scans over micro-batches (rows `a, a+A, ...`, so each micro-batch stays spread
over every device). Loss = summed token NLL / counted targets of the whole global batch, so
accumulation and sharding do not change it.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import signal
import time
from typing import Any

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from virtuoso_jax import checkpointing
from virtuoso_jax import config_lib
from virtuoso_jax import flops as flops_lib
from virtuoso_jax import host_memory
from virtuoso_jax import input_pipeline
from virtuoso_jax import metrics as metrics_lib
from virtuoso_jax import preflight
from virtuoso_jax import sharding as sharding_lib

log = logging.getLogger(__name__)


# Written next to config.json; read by the sampling binary (virtuoso_jax.sample).
ENCODING_FILE = "encoding.json"


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the message names the step."""


class RunConfigMismatchError(config_lib.ConfigError):
  """The workdir holds a run whose config cannot be resumed with this one (nothing touched)."""


class DataExhaustedError(config_lib.ConfigError):
  """The training data iterator ended before num_train_steps (never a bare StopIteration)."""


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


# ------------------------------------------------------------------ setup

# CPU train steps with at least this much temporary memory are dispatched one at a time
# (Trainer.step); smaller ones keep asynchronous dispatch, where an overlap costs little heap.
SERIALIZE_STEPS_ABOVE_BYTES = 256 << 20


class Trainer:
  """Everything a run needs, built once: mesh, data, model, optimizer, compiled steps."""

  def __init__(self, config, workdir: str, *, codec=None):
    from virtuoso_jax import flops as flops_lib  # pylint: disable=g-import-not-at-top
    from virtuoso_jax import models  # pylint: disable=g-import-not-at-top
    config_lib.validate(config)
    self.workdir = workdir
    self.mesh = sharding_lib.create_mesh(config.parallel)
    self.rules = sharding_lib.logical_rules(config.parallel)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh, self.rules)
    if codec is None:
      if not input_pipeline.is_prepared(config):  # The binary prepares (ensure_prepared).
        raise input_pipeline.DatasetNotPreparedError(
            f"dataset {input_pipeline.dataset_name(config)} is not prepared in "
            f"{input_pipeline.data_dir(config)}; run: "
            + " ".join(input_pipeline.prepare_command(config)))
      codec = input_pipeline.load_codec(config)
    config = config_lib.resolve_vocab_size(config, codec.vocab_size,
                                           f"dataset {input_pipeline.dataset_name(config)}")
    # A parameter the mesh cannot shard (e.g. an odd vocabulary on tensor=2) stops the run
    # here, from shapes only, before the data pipeline reads the training split.
    sharding_lib.check_shardable(lambda: models.create_model(config.model, nnx.Rngs(0)),
                                 self.mesh, self.rules)
    self.config = config
    self.data = input_pipeline.InputPipeline(config, batch_sharding=self.batch_sharding,
                                             codec=codec)
    info = self.data.info

    model = sharding_lib.create_sharded(
        lambda: models.create_model(config.model, nnx.Rngs(config.seed)), self.mesh, self.rules)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    self.graphdef, self.rest = graphdef, rest
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    self.flops_per_token = float(flops_lib.train_flops_per_token(config.model, config.model.max_len))
    self.tx = create_optimizer(config)
    self.schedule = create_learning_rate_schedule(config)

    opt_shardings = sharding_lib.state_shardings(jax.eval_shape(self.tx.init, params), self.mesh,
                                                 self.rules)
    opt_state = jax.jit(self.tx.init, out_shardings=opt_shardings)(params)
    rng = jax.random.key_data(jax.random.key(config.seed))
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    train = {"step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
             "rng": jax.device_put(rng, replicated)}
    self.state = {"params": params, "opt_state": opt_state, "train": train}
    self.state_shardings = jax.tree.map(lambda x: x.sharding, self.state)

    self.log_unigram = jax.device_put(jnp.asarray(info.unigram_log_probs), replicated)
    self.note_table = jax.device_put(jnp.asarray(note_marker_table(codec, info.kind)), replicated)

    self.replicated = replicated
    self.accum_steps = int(config.grad_accum_steps)  # compile() may choose it (auto)
    self._train_step = self._jit_train_step(graphdef, rest, self.accum_steps)
    self._eval_step = self._jit_eval_step(self.accum_steps)
    self.compiled_train_step = self.compiled_eval_step = None  # set by compile()
    self._serialize_steps = False  # set by compile(): CPU and big temporaries (see step())
    self._heap_before_step = None  # host_memory.heap_in_use() before the last dispatch
    self._step_temp_bytes = 0  # the compiled step's temporaries (memory_analysis)
    self._programs = {}  # (accum, model changes) -> compiled train step, during compile()

  def _jit_train_step(self, graphdef, rest, accum_steps: int, state_shardings=None):
    return jax.jit(
        functools.partial(train_step, graphdef=graphdef, rest=rest, tx=self.tx,
                          accum_steps=accum_steps),
        in_shardings=(state_shardings or self.state_shardings, self.batch_sharding),
        out_shardings=(state_shardings or self.state_shardings, self.replicated),
        donate_argnums=0)

  def _jit_eval_step(self, accum_steps: int):
    return jax.jit(functools.partial(eval_step, graphdef=self.graphdef, rest=self.rest,
                                     accum_steps=accum_steps), out_shardings=self.replicated)

  def batch_abstract(self, max_len: int | None = None, *, eval_batch: bool = False
                     ) -> dict[str, jax.ShapeDtypeStruct]:
    b, l = self.config.batch_size, max_len or self.config.model.max_len
    names = ("inputs", "targets", "mask") + (("seconds",) if eval_batch else ())
    dtypes = {"inputs": jnp.int32, "targets": jnp.int32}
    return {k: jax.ShapeDtypeStruct((b, l), dtypes.get(k, jnp.float32),
                                    sharding=self.batch_sharding) for k in names}

  # ---------------------------------------------------------------- memory pre-flight

  def _abstract_variant(self, model_config):
    """(graphdef, rest, abstract state, state shardings) of the model `model_config` (another
    remat, attention or context setting of this run's model), from shapes only."""
    from virtuoso_jax import models  # pylint: disable=g-import-not-at-top
    model = nnx.eval_shape(lambda: models.create_model(model_config, nnx.Rngs(self.config.seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shard = lambda tree: sharding_lib.state_shardings(tree, self.mesh, self.rules)
    abstract = lambda tree, sh: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    params = abstract(params, shard(params))
    opt_state = jax.eval_shape(self.tx.init, params)
    opt_state = abstract(opt_state, shard(opt_state))
    state = {"params": params, "opt_state": opt_state, "train": self.abstract_state()["train"]}
    return graphdef, rest, state, jax.tree.map(lambda x: x.sharding, state)

  def _compile_train(self, accum_steps: int, **model_changes):
    """The train step compiled for `accum_steps` (and model fields changed), never run. Kept
    until compile() ends, so the pre-flight's pick is not compiled twice."""
    key = (accum_steps, tuple(sorted(model_changes.items())))
    if key not in self._programs:
      self._programs[key] = self._compile_train_uncached(accum_steps, **model_changes)
    return self._programs[key]

  def _compile_train_uncached(self, accum_steps: int, **model_changes):
    if not model_changes:
      fn, state = self._jit_train_step(self.graphdef, self.rest, accum_steps), self.abstract_state()
      return fn.lower(state, self.batch_abstract()).compile()
    model_config = ml_collections.ConfigDict(self.config.model.to_dict())
    model_config.update(model_changes)
    graphdef, rest, state, shardings = self._abstract_variant(model_config)
    fn = self._jit_train_step(graphdef, rest, accum_steps, shardings)
    return fn.lower(state, self.batch_abstract(model_config.max_len)).compile()

  def _compile_eval(self, accum_steps: int):
    return self._jit_eval_step(accum_steps).lower(
        self.abstract_state()["params"], self.batch_abstract(eval_batch=True), self.log_unigram,
        self.note_table).compile()

  def accum_choices(self) -> list[int]:
    """Accumulation steps that keep the global batch and a micro-batch spread evenly over
    the batch sharding's devices: the divisors A of batch_size with (batch_size / A) a multiple
    of the data-parallel size, ascending."""
    b = self.config.batch_size
    rows_per_shard = self.batch_sharding.shard_shape((b, 1))[0]
    parallel = b // rows_per_shard
    return [a for a in range(1, b + 1) if b % a == 0 and (b // a) % parallel == 0]

  def _memory_options(self) -> list[list[preflight.Option]]:
    """What the pre-flight tries when the train step does not fit, least change first, one
    group per kind of setting: more accumulation; remat; blockwise attention; a shorter
    context (each group's first fitting option is suggested)."""
    m, a, b = self.config.model, self.accum_steps, self.config.batch_size
    more = [k for k in self.accum_choices() if k > a]
    accum = lambda k: f" --config.grad_accum_steps={k}" if k != a else ""
    label = lambda k: f"micro-batch {b // k} of the global {b}"
    groups = [[preflight.Option(accum(k).strip(), functools.partial(self._compile_train, k),
                                label(k), k) for k in more]]
    if m.remat != "block":
      groups.append([preflight.Option("--config.model.remat=block" + accum(k), functools.partial(
          self._compile_train, k, remat="block"), label(k), k) for k in [a] + more])
    if m.name == "rga" and m.rel_impl != "blockwise":
      groups.append([preflight.Option("--config.model.rel_impl=blockwise", functools.partial(
          self._compile_train, a, rel_impl="blockwise"), "", a)])
    shorter, length = [], m.max_len // 2
    while length >= 128 and len(shorter) < 3:
      changes = {"max_len": length}
      if m.name == "rga":
        changes["max_relative"] = min(m.max_relative, length)
      shorter.append(preflight.Option(
          " ".join(f"--config.model.{k}={v}" for k, v in changes.items()),
          functools.partial(self._compile_train, a, **changes), "a shorter context", a))
      length //= 2
    groups.append(shorter)
    return groups

  def _agree(self, value: int) -> int:
    """The largest `value` over all processes (so every host makes the same choice)."""
    if jax.process_count() == 1:
      return value
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))

  def compile(self):
    """Lowers and compiles the train and eval steps before step 0, and checks that they fit
    in memory (virtuoso_jax.preflight): with memory.auto_grad_accum, picks the smallest
    accumulation (largest micro-batch) whose step fits; otherwise a step that cannot fit is
    refused (memory.check="refuse") with settings that would fit."""
    mem_cfg = self.config.memory
    budget = preflight.budget(list(self.mesh.devices.flat), limit_mib=mem_cfg.limit_mib,
                              limit_name="memory.limit_mib")
    t = time.perf_counter()
    if mem_cfg.auto_grad_accum:
      choices = [k for k in self.accum_choices() if k >= self.accum_steps]
      found = preflight.first_fit([preflight.Option(
          f"grad_accum_steps={k} (micro-batch {self.config.batch_size // k})",
          functools.partial(self._compile_train, k), cost=k) for k in choices], budget)
      # Every process takes the same (the largest) choice; none fitting: the largest, refused
      # below with suggestions.
      k = choices[self._agree(len(choices) - 1 if found is None else found[0])]
      if k != self.accum_steps:
        log.info("memory.auto_grad_accum: grad_accum_steps=%d, micro-batch %d of the global "
                 "batch %d (the same training as --config.grad_accum_steps=%d).", k,
                 self.config.batch_size // k, self.config.batch_size, k)
      self._set_accum(k)
    compiled = self._compile_train(self.accum_steps)
    fp = preflight.footprint(compiled)
    log.info("Compiled the train step in %.1f s", time.perf_counter() - t)
    self.compiled_train_step = compiled
    self._preflight("the train step", fp, budget, self._memory_options)
    self.compiled_eval_step = self._compile_eval(self.accum_steps)  # evaluate() runs this one.
    self._preflight("the eval step", preflight.footprint(self.compiled_eval_step),
                    budget, lambda: [[preflight.Option(
                        f"--config.grad_accum_steps={k}", functools.partial(self._compile_eval, k),
                        f"evaluation in {k} micro-batches too", k)
                                      for k in self.accum_choices() if k > self.accum_steps]])
    if fp is not None:
      # Per device; the simulated CPU devices of one process share its heap.
      local = sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)
      self._step_temp_bytes = fp.temp * local
    self._serialize_steps = (self._step_temp_bytes >= SERIALIZE_STEPS_ABOVE_BYTES
                             and all(d.platform == "cpu" for d in self.mesh.devices.flat))
    self._programs.clear()
    return self.compiled_train_step

  def _preflight(self, what, fp, budget, options):
    mode = self.config.memory.check
    fits = 1 if (fp is None or budget is None or budget.fits(fp)) else 0
    if mode == "refuse" and self._agree(1 - fits) and fits:
      # Another host cannot fit it: refuse on every host (none may wait for it at step 0).
      raise preflight.OutOfMemoryError(f"{what} does not fit on another process's host; see "
                                       "its error. Nothing was run.")
    preflight.check(what, fp, budget, mode=mode, options=options,
                    override="--config.memory.check=warn",
                    note=(f"This config is meant for {self.config.memory.machine}."
                          if self.config.memory.machine and budget is not None
                          and budget.platform == "cpu" else ""))

  def _set_accum(self, accum_steps: int):
    self.accum_steps = accum_steps
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.grad_accum_steps = accum_steps
    self.config = config
    self._train_step = self._jit_train_step(self.graphdef, self.rest, accum_steps)
    self._eval_step = self._jit_eval_step(accum_steps)

  def abstract_state(self):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        self.state)

  def step(self, batch):
    """Runs one update in place; returns the (device) metrics.

    On the CPU backend, when a step's temporaries reach `SERIALIZE_STEPS_ABOVE_BYTES`, a step
    is dispatched only once the previous one has finished and freed them
    (`host_memory.wait_for_release`). There the "device" memory is the process
    heap, which `virtuoso_jax` keeps rather than unmapping; a queued step would allocate its
    temporaries while the running step still holds its own, and the heap would keep both:
    char_gpt.py:original (13 GB of temporaries) grew to 24 GB and was OOM-killed on a 24 GiB
    machine, against 14.6 GB serialised. The wait costs one dispatch per step (milliseconds);
    the input pipeline still prefetches in its own threads. Accelerators keep asynchronous
    dispatch.
    """
    fn = self.compiled_train_step or self._train_step
    if self._serialize_steps:
      jax.block_until_ready(self.state)
      host_memory.wait_for_release(self._heap_before_step, self._step_temp_bytes)
      self._heap_before_step = host_memory.heap_in_use()
    self.state, metrics = fn(self.state, batch)
    return metrics

  def evaluate(self) -> dict[str, float]:
    sums = None
    for batch in self.data.eval_batches():
      fn = self.compiled_eval_step or self._eval_step
      out = fn(self.state["params"], batch, self.log_unigram, self.note_table)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if sums is None:
      raise ValueError(f"eval split {self.config.data.eval_split!r} has no windows")
    return summarize_eval({k: float(v) for k, v in jax.device_get(sums).items()})


# ------------------------------------------------------------------ the loop


class _Preemption:
  """SIGTERM -> save at the next step and exit cleanly (TPU preemption, `kill`)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no signal handling.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    log.warning("SIGTERM received: saving a checkpoint and stopping.")

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return multihost_utils.reached_preemption_sync_point(step) or self.requested
      except RuntimeError:
        return self.requested
    return self.requested


def _perf(trainer: Trainer, steps: int, seconds: float, input_seconds: float,
          peak: float | None) -> dict[str, float]:
  cfg = trainer.config
  tokens = steps * cfg.batch_size * cfg.model.max_len
  tps = tokens / max(seconds, 1e-9)
  out = {"perf/step_time_s": seconds / max(steps, 1), "perf/tokens_per_s": tps,
         "perf/tokens_per_s_per_device": tps / jax.device_count(),
         "perf/input_wait_frac": input_seconds / max(seconds, 1e-9)}
  if peak:
    out["perf/mfu"] = flops_lib.mfu(tps, trainer.flops_per_token, peak)
  return out


def train_and_evaluate(config, workdir: str, *, codec=None) -> dict[str, Any]:
  """Trains (resuming from `<workdir>/checkpoints` if present) and evaluates.

  Returns the last logged train and eval metrics, "step", "trained_steps" (in this call) and
  "stopped": "done" | "preempted". Preparing a missing dataset and writing a sample at the end
  are the binary's (virtuoso_jax.main) calls around this one.
  """
  shown_workdir = workdir  # As the user wrote it, for the commands printed at the end.
  workdir = os.path.abspath(workdir)
  # Before anything is built or written: a run of another model/data/optimizer in this workdir
  # stops here (the vocabulary is compared again once the codec resolves it).
  check_workdir(config, workdir, shown_workdir)
  if config.memory.machine and jax.devices()[0].platform == "cpu":
    log.warning("This config is meant for %s; it runs on a CPU here (the memory pre-flight will "
                "tell whether it fits).", config.memory.machine)
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, workdir, codec=codec)
  config = trainer.config
  check_workdir(config, workdir, shown_workdir)
  is_main = jax.process_index() == 0
  info = trainer.data.info
  log.info("Mesh %s over %d devices (%d processes); batch %d x %d tokens",
               dict(trainer.mesh.shape), jax.device_count(), jax.process_count(),
               config.batch_size, config.model.max_len)
  log.info("Model %s: %s parameters, %.3g training FLOPs per token",
               config.model.name, f"{trainer.num_params:,}", trainer.flops_per_token)
  log.info("Data %s: %d train songs (%d windows, %s tokens), %d eval windows, vocab %d",
               input_pipeline.dataset_name(config), info.num_train_songs, info.num_train_windows,
               f"{info.train_tokens:,}", info.num_eval_windows, info.vocab_size)

  ckpt = checkpointing.Checkpointer(workdir, config.ckpt) if config.ckpt.enabled else None
  train_iter = trainer.data.train_iterator()
  start_step = 0
  try:
    if ckpt is not None and ckpt.all_steps():
      restored = ckpt.restore(trainer.abstract_state(), train_iter)
      if restored is not None:
        start_step, trainer.state = restored
        log.info("Resumed from %s at step %d", ckpt.directory, start_step)
    elif config.ckpt.fine_tune_from:
      _load_fine_tune_params(trainer, workdir)
  except BaseException:
    if ckpt is not None:
      ckpt.manager.close()
    raise
  if start_step >= config.num_train_steps:
    log.info("Already trained to step %d (num_train_steps=%d): nothing to do. Train further with "
             "a larger --config.num_train_steps.", start_step, config.num_train_steps)
    if ckpt is not None:
      ckpt.close()
    return {"step": start_step, "stopped": "done", "trained_steps": 0}  # Nothing compiled or written.
  try:
    trainer.compile()  # With the memory pre-flight: a step that cannot fit stops here.
  except BaseException:
    if ckpt is not None:
      ckpt.manager.close()
    raise
  config = trainer.config  # grad_accum_steps as memory.auto_grad_accum chose it.
  if is_main:  # Only now: a run that cannot resume or fit has left config.json as it was.
    write_run_files(workdir, config, trainer.data.info.codec)
  peak, peak_how = metrics_lib.peak_flops_per_s(override=config.perf.peak_flops)
  log.info("MFU denominator: %.4g FLOP/s (%s)", peak, peak_how)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard,
                                    resume_step=start_step)
  progress = metrics_lib.Progress(config.num_train_steps, start_step)
  last: dict[str, Any] = {"stopped": "done"}
  pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet checked for NaN.
  window_t = time.perf_counter()
  window_steps, input_s = 0, 0.0
  accum: dict[str, float] = {}

  def check(upto_all: bool):
    """Fetches pending losses (all, or all but the newest) and stops on a non-finite one."""
    keep = 0 if upto_all else 1
    while len(pending) > keep:
      s, m = pending.pop(0)
      host = {k: float(v) for k, v in jax.device_get(m).items()}
      if not math.isfinite(host["train/loss"]):
        raise NonFiniteLossError(
            f"train loss is {host['train/loss']} at step {s}; stopping. The last good checkpoint "
            f"in {ckpt.directory if ckpt else workdir} is kept (not overwritten).")
      for k, v in host.items():
        accum[k] = accum.get(k, 0.0) + v
      accum["_n"] = accum.get("_n", 0.0) + 1

  step = start_step
  finished = False
  try:
    with _Preemption() as preemption:
      while step < config.num_train_steps:
        t = time.perf_counter()
        try:
          local = next(train_iter)
        except StopIteration:
          raise DataExhaustedError(
              f"the training data iterator ended before step {step + 1} of "
              f"{config.num_train_steps} (it was restored from the checkpoint at step "
              f"{start_step}); the checkpoint's data position does not fit this data config. "
              "Train in another --workdir.") from None
        batch = trainer.data.to_global(local)
        input_s += time.perf_counter() - t
        metrics = trainer.step(batch)
        step += 1
        window_steps += 1
        pending.append((step, metrics))
        check(upto_all=False)  # Lag one step: the device stays busy while we look.
        is_log = step % config.log_every_steps == 0 or step == config.num_train_steps
        is_eval = step % config.eval_every_steps == 0 or step == config.num_train_steps
        is_ckpt = ckpt is not None and (step % config.ckpt.every_steps == 0
                                        or step == config.num_train_steps)
        stop = preemption.should_stop(step)
        if is_log or is_eval or is_ckpt or stop:
          check(upto_all=True)
        scalars: dict[str, Any] = {}
        if is_log and accum:
          n = accum.pop("_n")
          scalars.update({k: v / n for k, v in accum.items()})
          accum.clear()
          elapsed = time.perf_counter() - window_t
          scalars.update(_perf(trainer, window_steps, elapsed, input_s, peak))
          scalars["train/learning_rate"] = float(trainer.schedule(step - 1))
          window_t, window_steps, input_s = time.perf_counter(), 0, 0.0
        eval_metrics = None
        if is_eval:
          eval_metrics = trainer.evaluate()
          scalars.update(eval_metrics)
          log.info("eval at step %d: loss %.4f, accuracy %.3f, NLL/note %.3f (unigram "
                   "baseline %.3f), %.1f bits/s of music, perplexity %.2f", step,
                   eval_metrics["eval/loss"], eval_metrics["eval/accuracy"],
                   eval_metrics["eval/nll_per_note"], eval_metrics["eval/unigram_nll_per_note"],
                   eval_metrics["eval/bits_per_second"], eval_metrics["eval/perplexity"])
          window_t = time.perf_counter()  # Do not count eval time as step time.
        if scalars:
          writer.write(step, scalars)
          last.update(scalars)
          if is_log:
            progress.log(step, scalars)
        if is_ckpt or (stop and ckpt is not None):
          ckpt.save(step, trainer.state, train_iter,
                    metrics={"eval/loss": eval_metrics["eval/loss"]} if eval_metrics else None)
        if stop:
          last["stopped"] = "preempted"
          log.warning("Stopped at step %d on SIGTERM; checkpoint saved in %s", step,
                          ckpt.directory if ckpt else "(checkpoints disabled)")
          break
    finished = True
  finally:
    writer.close()
    if ckpt is not None:
      if finished:
        ckpt.close()  # Raises CheckpointSaveError if the last save failed.
      else:  # Do not hide the error that stopped training behind a save error.
        try:
          ckpt.close()
        except Exception as e:  # pylint: disable=broad-exception-caught
          log.warning("While stopping: %s", e)
  last["step"] = step
  last["trained_steps"] = step - start_step
  if is_main:
    samples = os.path.join(shown_workdir, "samples")
    lines = [f"Done at step {step}."]
    if "eval/loss" in last:
      lines[0] += (f" Eval NLL {last['eval/loss']:.3f} nats/token (unigram baseline "
                   f"{last['eval/unigram_nll']:.3f}), {last['eval/nll_per_note']:.2f} per note "
                   f"(baseline {last['eval/unigram_nll_per_note']:.2f}), "
                   f"{last['eval/bits_per_second']:.1f} bits per second of music.")
    lines += [f"  checkpoints: {ckpt.directory if ckpt else '(disabled: ckpt.enabled=False)'}",
              f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}"]
    if config.tensorboard:
      lines.append(f"  TensorBoard: tensorboard --logdir {os.path.join(shown_workdir, 'tensorboard')}")
    if ckpt is not None:
      lines.append(f"  sample:      python -m virtuoso_jax.sample --workdir={shown_workdir} "
                   f"--out={samples}")
    log.info("%s", "\n".join(lines))
  return last


def _run_in(workdir: str) -> dict[str, Any] | None:
  """The saved config of the run in `workdir`, if it holds one worth protecting (checkpoints or
  metrics rows); None for an empty or fresh workdir (or one without a readable config.json)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  metrics = os.path.join(workdir, "metrics.jsonl")
  has_rows = os.path.isfile(metrics) and os.path.getsize(metrics) > 0
  if not (has_ckpt or has_rows):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    log.warning("%s is unreadable; not comparing configs.", path)
    return None


def check_workdir(config, workdir: str, shown_workdir: str | None = None) -> None:
  """Stops (RunConfigMismatchError, nothing touched) if `workdir` holds a run whose saved config
  differs from `config` in a field a resume cannot cross (`config_lib.resume_conflicts`);
  with `ckpt.overwrite=True` moves that run aside instead."""
  shown = shown_workdir or workdir
  saved = _run_in(workdir)
  if saved is None:
    return
  conflicts = config_lib.resume_conflicts(saved, config)
  if not conflicts:
    return
  diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in conflicts)
  if config.ckpt.overwrite:
    moved = _move_run_aside(workdir)
    log.warning("ckpt.overwrite=True: the run in %s (config differs: %s) was moved to %s; "
                "starting a new run.", shown, diff, moved)
    return
  raise RunConfigMismatchError(
      f"{shown} holds a run whose config differs in fields a resume cannot cross: {diff}. "
      "Nothing was changed. Either train in another --workdir, start a new run from its "
      f"weights with --workdir=NEW --config.ckpt.fine_tune_from={shown} (model shapes must "
      f"match), or replace it with --config.ckpt.overwrite=True (the old run is moved to "
      f"{shown}.old-<timestamp>, not deleted).")


def _move_run_aside(workdir: str) -> str:
  """Renames `workdir` to `<workdir>.old-<timestamp>` (process 0) and recreates it empty."""
  dest = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  n = 1
  while os.path.exists(dest):
    n += 1
    dest = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
  if jax.process_index() == 0:
    try:
      os.rename(workdir, dest)
    except OSError:  # A mount point or the like: move its entries instead.
      os.makedirs(dest)
      for name in os.listdir(workdir):
        shutil.move(os.path.join(workdir, name), os.path.join(dest, name))
    os.makedirs(workdir, exist_ok=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("move_run_aside")
  return dest


def _load_fine_tune_params(trainer: "Trainer", workdir: str) -> None:
  """config.ckpt.fine_tune_from: the other run's latest params (same shapes and encoding);
  the optimizer state stays fresh and training starts at step 0."""
  src = os.path.abspath(trainer.config.ckpt.fine_tune_from)
  if src == workdir:
    raise config_lib.ConfigError(
        f"config.ckpt.fine_tune_from={trainer.config.ckpt.fine_tune_from!r} is this run's own "
        "--workdir; give the workdir of another run")
  theirs_path = os.path.join(src, ENCODING_FILE)
  if os.path.isfile(theirs_path):
    with open(theirs_path, encoding="utf-8") as f:
      theirs = json.load(f)
    ours = {"kind": config_lib.encoding_kind(trainer.config),
            "encoding": trainer.data.info.codec.config.to_dict()}
    for key in ("kind", "encoding"):
      if json.dumps(theirs.get(key), sort_keys=True) != json.dumps(ours[key], sort_keys=True):
        raise checkpointing.CheckpointMismatchError(
            f"config.ckpt.fine_tune_from={src}: that run's token encoding ({key}: "
            f"{theirs.get(key)}) differs from this run's ({ours[key]}); its parameters would "
            "read other ids")
  abstract = trainer.abstract_state()["params"]
  step, params = checkpointing.fine_tune_params(src, abstract)
  trainer.state = dict(trainer.state, params=params)
  log.info("Fine-tuning from %s (its step %d): parameters loaded; new optimizer state; "
           "starting at step 0.", src, step)


def write_run_files(workdir: str, config, codec) -> None:
  """`<workdir>/config.json` (the resolved config) and `<workdir>/encoding.json` (the codec's
  `EncodingConfig`, so the sampling binary never needs the dataset)."""
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config_lib.to_json(config))
  kind = config_lib.encoding_kind(config)
  with open(os.path.join(workdir, ENCODING_FILE), "w", encoding="utf-8") as f:
    json.dump({"kind": kind, "encoding": codec.config.to_dict(),
               "dataset": input_pipeline.dataset_name(config)}, f, indent=2, sort_keys=True)



