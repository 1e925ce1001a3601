"""The trainer's state and compiled steps: `Trainer(config, workdir)` builds the mesh, the input
pipeline, the sharded model and optimizer state, and `compile()` lowers and compiles the train
and eval steps (virtuoso_jax.steps) before step 0, with the memory pre-flight
(virtuoso_jax.preflight). The loop that drives it lives in virtuoso_jax.train.

The step is jitted with donated state buffers; `Trainer.step` runs one update in place.
"""

from __future__ import annotations

import functools
import logging
import time

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
from flax import nnx

from virtuoso_jax import checkpointing
from virtuoso_jax import config_lib
from virtuoso_jax import dataset
from virtuoso_jax import flops as flops_lib
from virtuoso_jax import host_memory
from virtuoso_jax import input_pipeline
from virtuoso_jax import paths
from virtuoso_jax import preflight
from virtuoso_jax import run_dir
from virtuoso_jax import sharding as sharding_lib
from virtuoso_jax import steps

log = logging.getLogger(__name__)


# CPU train steps with at least this much temporary memory are dispatched one at a time
# (Trainer.step); smaller ones keep asynchronous dispatch, where an overlap costs little heap.
SERIALIZE_STEPS_ABOVE_BYTES = 256 << 20


class Trainer:
  """Everything a run needs, built once: mesh, data, model, optimizer, compiled steps."""

  def __init__(self, config, workdir: str, *, codec=None):
    from virtuoso_jax import models  # pylint: disable=g-import-not-at-top
    config_lib.validate(config)
    self.workdir = workdir
    self.mesh = sharding_lib.create_mesh(config.parallel)
    self.rules = sharding_lib.logical_rules(config.parallel)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh, self.rules)
    if codec is None:
      if not dataset.is_prepared(config):  # The binary prepares (dataset.ensure_prepared).
        raise dataset.not_prepared_error(config)
      codec = dataset.load_codec(config)
    codec = self._with_run_controls(config, workdir, codec)
    config = config_lib.resolve_vocab_size(config, codec.vocab_size,
                                           f"dataset {dataset.dataset_name(config)}")
    self.config = config
    # Before the data pipeline reads the training split: a parameter the mesh cannot shard
    # (e.g. an odd vocabulary on tensor=2) stops the run here (sharding.ShardingError).
    model = sharding_lib.create_sharded(
        lambda: models.create_model(config.model, nnx.Rngs(config.seed)), self.mesh, self.rules)
    self.data = input_pipeline.InputPipeline(config, batch_sharding=self.batch_sharding,
                                             codec=codec)
    info = self.data.info
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    self.graphdef, self.rest = graphdef, rest
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    self.flops_per_token = float(flops_lib.train_flops_per_token(config.model, config.model.max_len))
    self.tx = steps.create_optimizer(config)
    self.schedule = steps.create_learning_rate_schedule(config)

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
    self.note_table = jax.device_put(jnp.asarray(steps.note_marker_table(codec, info.kind)), replicated)

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
        functools.partial(steps.train_step, graphdef=graphdef, rest=rest, tx=self.tx,
                          accum_steps=accum_steps),
        in_shardings=(state_shardings or self.state_shardings, self.batch_sharding),
        out_shardings=(state_shardings or self.state_shardings, self.replicated),
        donate_argnums=0)

  def _jit_eval_step(self, accum_steps: int):
    return jax.jit(functools.partial(steps.eval_step, graphdef=self.graphdef, rest=self.rest,
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
    temporaries while the running step still holds its own, and the heap would keep both
    (docs/benchmarks.md, "Serialised CPU steps"). The wait costs one dispatch per step (ms);
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
    return steps.summarize_eval({k: float(v) for k, v in jax.device_get(sums).items()})

  def inference_run(self, step: int):
    """The model as it is now, on this process's default device, ready for
    virtuoso_jax.inference (single-process runs: every parameter is addressable here)."""
    from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
    params, rest = jax.device_get((self.state["params"], self.rest))
    model = nnx.merge(self.graphdef, params, rest)
    return inference.Run(self.workdir, self.config, self.data.info.codec, model, int(step),
                         self.data.info.codec.grammar())

  @staticmethod
  def _with_run_controls(config, workdir: str, codec):
    """A version-2 codec with the attribute edges the run keeps: those in its encoding.json
    (a resumed run), else those of the run it fine-tunes, else (data.attribute_bins > 0) edges
    fitted to the training split (`tasks.fit_controls`)."""
    if getattr(codec, "version", 1) < 2:
      return codec
    from virtuoso_jax import encoding  # pylint: disable=g-import-not-at-top
    from virtuoso_jax import tasks  # pylint: disable=g-import-not-at-top
    controls = run_dir.saved_controls(workdir)
    if controls is None and config.ckpt.fine_tune_from:
      controls = run_dir.saved_controls(paths.absolute(config.ckpt.fine_tune_from))
    if controls is None and config.data.attribute_bins:
      t0 = time.perf_counter()
      songs = input_pipeline.SongSource(config, config.data.train_split, codec)
      controls = tasks.fit_controls(codec, songs, int(config.data.attribute_bins),
                                    int(config.model.max_len), int(config.seed))
      log.info("Attribute bins fitted to the training split in %.1fs: %s",
               time.perf_counter() - t0,
               {n: [round(x, 2) for x in controls.edges(n)] for n in encoding.BINNED_ATTRIBUTES})
    if controls is None:
      return codec
    return encoding.make_codec(config.data.encoding, codec.config, controls)

  def load_fine_tune_params(self, src: str) -> None:
    """config.ckpt.fine_tune_from: the other run's latest params (same shapes and encoding);
    the optimizer state stays fresh and training starts at step 0."""
    shown, src = src, paths.absolute(src)
    if paths.same(src, self.workdir):
      raise config_lib.ConfigError(
          f"config.ckpt.fine_tune_from={shown!r} is this run's own --workdir; give the workdir "
          "of another run")
    run_dir.check_same_encoding(src, self.config, self.data.info.codec)
    abstract = self.abstract_state()["params"]
    step, params = checkpointing.fine_tune_params(src, abstract)
    self.state = dict(self.state, params=params)
    log.info("Fine-tuning from %s (its step %d): parameters loaded; new optimizer state; "
             "starting at step 0.", src, step)
