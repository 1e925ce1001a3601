"""The training loop: `train_and_evaluate(config, workdir)`.

The loop only feeds batches to `Trainer.step` (virtuoso_jax.trainer: state, compiled steps) and
then runs a short list of periodic actions, each with its cadence (`Action.every`; also at the
last step, and some when the run stops early):

  preemption   every step: a SIGTERM (or a pod's preemption notice) asks the run to stop
  log          config.log_every_steps: mean train metrics, tokens/s, MFU, the progress line
  eval         config.eval_every_steps: the eval split's loss, bits per second of music
  metrics      whenever an action measured something: one row of metrics.jsonl / TensorBoard
  checkpoint   config.ckpt.every_steps, and when stopping early
  sample       config.sample.every_steps (0 = off): a MIDI of the current model, single process

Losses are fetched from the device one step late (the device stays busy meanwhile) and a
non-finite one stops the run before anything is written for it. Preparing the dataset and the
end-of-run sample are the binary's (virtuoso_jax.main) calls around this one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from typing import Any, Callable

import jax

from virtuoso_jax import checkpointing
from virtuoso_jax import config_lib
from virtuoso_jax import dataset
from virtuoso_jax import flops as flops_lib
from virtuoso_jax import metrics as metrics_lib
from virtuoso_jax import paths
from virtuoso_jax import run_dir
from virtuoso_jax import trainer as trainer_lib

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the message names the step."""


class DataExhaustedError(config_lib.ConfigError):
  """The training data iterator ended before num_train_steps (never a bare StopIteration)."""


# ------------------------------------------------------------------ periodic actions


@dataclasses.dataclass
class StepInfo:
  """What the actions of one step share: its number, whether the run stops after it, and the
  scalars measured so far at this step (the metrics row)."""
  step: int
  last_step: int
  stopping: bool = False
  scalars: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Action:
  """One thing the loop does periodically: `run(info)` every `every` steps (0 = only as the
  flags below say), at the last step if `at_last`, and when the run stops early if `on_stop`."""
  name: str
  run: Callable[[StepInfo], None]
  every: int
  at_last: bool = True
  on_stop: bool = False

  def due(self, info: StepInfo) -> bool:
    return bool((self.every and info.step % self.every == 0)
                or (self.at_last and info.step == info.last_step)
                or (self.on_stop and info.stopping))


def run_actions(actions: list[Action], info: StepInfo) -> None:
  for action in actions:
    if action.due(info):
      action.run(info)


class _Preemption:
  """SIGTERM -> save at the next step and exit cleanly (TPU preemption, `kill`).

  One process: a Python SIGTERM handler. Several (a pod): jax's preemption sync manager, whose
  own SIGTERM handler `jax.distributed.initialize` installed, tells every process the same step
  to stop at (`reached_preemption_sync_point`). A Python handler would replace that one, and a
  process told alone would stop and save while the others trained on, each then waiting in a
  different collective forever (seen in the two-process rehearsal, docs/pods.md)."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._pod = False

  def __enter__(self):
    self._pod = jax.process_count() > 1 and jax.config.jax_enable_preemption_service
    if self._pod:
      return self
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
    if self._pod:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = True
        log.warning("Preemption notice (SIGTERM to a process of this run): every process "
                    "saves a checkpoint at step %d and stops.", step)
    return self.requested


class _Losses:
  """Train metrics on the device, fetched one step late; a non-finite loss stops the run."""

  def __init__(self, where: str):
    self.pending: list[tuple[int, Any]] = []  # (step, device metrics) not yet checked.
    self.sums: dict[str, float] = {}
    self.count = 0
    self._where = where

  def add(self, step: int, device_metrics) -> None:
    self.pending.append((step, device_metrics))
    self.fetch(keep=1)  # Lag one step: the device stays busy while we look.

  def fetch(self, keep: int = 0) -> None:
    while len(self.pending) > keep:
      s, m = self.pending.pop(0)
      host = {k: float(v) for k, v in jax.device_get(m).items()}
      if not math.isfinite(host["train/loss"]):
        raise NonFiniteLossError(
            f"train loss is {host['train/loss']} at step {s}; stopping. The last good checkpoint "
            f"in {self._where} is kept (not overwritten).")
      for k, v in host.items():
        self.sums[k] = self.sums.get(k, 0.0) + v
      self.count += 1

  def take_means(self) -> dict[str, float]:
    """The mean of each metric since the last call (all pending steps fetched first)."""
    self.fetch()
    out = {k: v / self.count for k, v in self.sums.items()} if self.count else {}
    self.sums, self.count = {}, 0
    return out


class _Throughput:
  """Steps, seconds and input wait since the last log (eval time is not counted)."""

  def __init__(self, trainer: trainer_lib.Trainer, peak: float | None):
    self.trainer, self.peak = trainer, peak
    self.restart()

  def restart(self) -> None:
    self.t0, self.steps, self.input_s = time.perf_counter(), 0, 0.0

  def scalars(self) -> dict[str, float]:
    cfg = self.trainer.config
    seconds = time.perf_counter() - self.t0
    tps = self.steps * cfg.batch_size * cfg.model.max_len / max(seconds, 1e-9)
    out = {"perf/step_time_s": seconds / max(self.steps, 1), "perf/tokens_per_s": tps,
           "perf/tokens_per_s_per_device": tps / jax.device_count(),
           "perf/input_wait_frac": self.input_s / max(seconds, 1e-9)}
    if self.peak:
      out["perf/mfu"] = flops_lib.mfu(tps, self.trainer.flops_per_token, self.peak)
    self.restart()
    return out


def default_actions(trainer: trainer_lib.Trainer, *, losses: _Losses, throughput: _Throughput,
                    preemption: _Preemption, writer: metrics_lib.MetricWriter,
                    progress: metrics_lib.Progress, ckpt, train_iter,
                    last: dict[str, Any]) -> list[Action]:
  """The loop's actions, in the order they run within a step."""
  config = trainer.config

  def check_preemption(info: StepInfo) -> None:
    info.stopping = preemption.should_stop(info.step)

  def log_train(info: StepInfo) -> None:
    means = losses.take_means()
    if not means:
      return
    info.scalars.update(means)
    info.scalars.update(throughput.scalars())
    info.scalars["train/learning_rate"] = float(trainer.schedule(info.step - 1))
    progress.log(info.step, info.scalars)

  def evaluate(info: StepInfo) -> None:
    losses.fetch()  # A diverged run stops before it is evaluated.
    m = trainer.evaluate()
    info.scalars.update(m)
    log.info("eval at step %d: loss %.4f, accuracy %.3f, NLL/note %.3f (unigram baseline %.3f), "
             "%.1f bits/s of music, perplexity %.2f", info.step, m["eval/loss"],
             m["eval/accuracy"], m["eval/nll_per_note"], m["eval/unigram_nll_per_note"],
             m["eval/bits_per_second"], m["eval/perplexity"])
    throughput.restart()  # Eval time is not step time.

  def write_metrics(info: StepInfo) -> None:
    if info.scalars:
      writer.write(info.step, info.scalars)
      last.update(info.scalars)

  def save(info: StepInfo) -> None:
    losses.fetch()  # Never checkpoint a state whose loss is not finite.
    eval_loss = info.scalars.get("eval/loss")
    ckpt.save(info.step, trainer.state, train_iter,
              metrics={"eval/loss": eval_loss} if eval_loss is not None else None)

  def write_sample(info: StepInfo) -> None:
    """A sample of the model as it is now; a failure (e.g. the sampler's memory pre-flight) is
    reported and training goes on."""
    from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
    losses.fetch()
    out = paths.join(trainer.workdir, "samples", f"step_{info.step}")
    try:
      inference.write_config_sample(trainer.workdir, out, run=trainer.inference_run(info.step),
                                    why=f"config.sample.every_steps={config.sample.every_steps}")
    except (inference.SampleError, ValueError, OSError) as e:
      log.warning("Could not write the step-%d sample (%s: %s); training goes on.", info.step,
                  type(e).__name__, e)
    throughput.restart()  # Sampling time is not step time.

  actions = [
      Action("preemption", check_preemption, every=1),
      Action("log", log_train, every=config.log_every_steps),
      Action("eval", evaluate, every=config.eval_every_steps),
      Action("metrics", write_metrics, every=1),
  ]
  if ckpt is not None:
    actions.append(Action("checkpoint", save, every=config.ckpt.every_steps, on_stop=True))
  if config.sample.every_steps and jax.process_count() == 1:
    actions.append(Action("sample", write_sample, every=config.sample.every_steps,
                          at_last=False))  # The binary writes the end-of-run sample.
  elif config.sample.every_steps:
    log.warning("sample.every_steps: samples during training are written by single-process "
                "runs only; sample this run with python -m virtuoso_jax.sample.")
  return actions


# ------------------------------------------------------------------ the loop


def train_and_evaluate(config, workdir: str, *, codec=None) -> dict[str, Any]:
  """Trains (resuming from `<workdir>/checkpoints` if present) and evaluates.

  Returns the last logged train and eval metrics, "step", "trained_steps" (in this call) and
  "stopped": "done" | "preempted".
  """
  shown_workdir = workdir  # As the user wrote it, for the commands printed at the end.
  workdir = paths.absolute(workdir)  # Local or remote (gs://...): see virtuoso_jax.paths.
  # Before anything is built or written: a run of another model/data/optimizer in this workdir
  # stops here (the vocabulary is compared again once the codec resolves it).
  run_dir.check_workdir(config, workdir, shown_workdir)
  if config.memory.machine and jax.devices()[0].platform == "cpu":
    log.warning("This config is meant for %s; it runs on a CPU here (the memory pre-flight will "
                "tell whether it fits).", config.memory.machine)
  paths.makedirs(workdir)
  trainer = trainer_lib.Trainer(config, workdir, codec=codec)
  config = trainer.config
  run_dir.check_workdir(config, workdir, shown_workdir)
  is_main = jax.process_index() == 0
  info = trainer.data.info
  log.info("Mesh %s over %d devices (%d processes); batch %d x %d tokens",
           dict(trainer.mesh.shape), jax.device_count(), jax.process_count(),
           config.batch_size, config.model.max_len)
  log.info("Model %s: %s parameters, %.3g training FLOPs per token",
           config.model.name, f"{trainer.num_params:,}", trainer.flops_per_token)
  log.info("Data %s: %d train songs (%d windows, %s tokens), %d eval windows, vocab %d",
           dataset.dataset_name(config), info.num_train_songs, info.num_train_windows,
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
      trainer.load_fine_tune_params(config.ckpt.fine_tune_from)
    if start_step >= config.num_train_steps:
      log.info("Already trained to step %d (num_train_steps=%d): nothing to do. Train further "
               "with a larger --config.num_train_steps.", start_step, config.num_train_steps)
      if ckpt is not None:
        ckpt.close()
      return {"step": start_step, "stopped": "done", "trained_steps": 0}  # Nothing written.
    trainer.compile()  # With the memory pre-flight: a step that cannot fit stops here.
  except BaseException:
    if ckpt is not None:
      ckpt.manager.close()
    raise
  config = trainer.config  # grad_accum_steps as memory.auto_grad_accum chose it.
  if is_main:  # Only now: a run that cannot resume or fit has left config.json as it was.
    run_dir.write(workdir, config, trainer.data.info.codec)
  peak, peak_how = metrics_lib.peak_flops_per_s(override=config.perf.peak_flops)
  log.info("MFU denominator: %.4g FLOP/s (%s)", peak, peak_how)

  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard,
                                    resume_step=start_step)
  last: dict[str, Any] = {"stopped": "done"}
  losses = _Losses(ckpt.directory if ckpt else workdir)
  throughput = _Throughput(trainer, peak)
  step = start_step
  finished = False
  try:
    with _Preemption() as preemption:
      actions = default_actions(
          trainer, losses=losses, throughput=throughput, preemption=preemption, writer=writer,
          progress=metrics_lib.Progress(config.num_train_steps, start_step), ckpt=ckpt,
          train_iter=train_iter, last=last)
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
        throughput.input_s += time.perf_counter() - t
        losses.add(step + 1, trainer.step(batch))
        step += 1
        throughput.steps += 1
        info = StepInfo(step, config.num_train_steps)
        run_actions(actions, info)
        if info.stopping:
          last["stopped"] = "preempted"
          log.warning("Stopped at step %d on SIGTERM; checkpoint saved in %s", step,
                      ckpt.directory if ckpt else "(checkpoints disabled)")
          break
      losses.fetch()
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
    _log_done(last, config, ckpt, workdir, shown_workdir)
  return last


def _log_done(last, config, ckpt, workdir: str, shown_workdir: str) -> None:
  """The closing lines: the eval figures and where the outputs are."""
  lines = [f"Done at step {last['step']}."]
  if "eval/loss" in last:
    lines[0] += (f" Eval NLL {last['eval/loss']:.3f} nats/token (unigram baseline "
                 f"{last['eval/unigram_nll']:.3f}), {last['eval/nll_per_note']:.2f} per note "
                 f"(baseline {last['eval/unigram_nll_per_note']:.2f}), "
                 f"{last['eval/bits_per_second']:.1f} bits per second of music.")
  lines += [f"  checkpoints: {ckpt.directory if ckpt else '(disabled: ckpt.enabled=False)'}",
            f"  metrics:     {paths.join(workdir, 'metrics.jsonl')}"]
  if config.tensorboard:
    lines.append(f"  TensorBoard: tensorboard --logdir {paths.join(shown_workdir, 'tensorboard')}")
  if ckpt is not None:
    lines.append(f"  sample:      python -m virtuoso_jax.sample --workdir={shown_workdir} "
                 f"--out={paths.join(shown_workdir, 'samples')}")
  log.info("%s", "\n".join(lines))
