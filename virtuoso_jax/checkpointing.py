"""Orbax checkpoints: params, optimizer state, RNG/step and the grain iterator, saved together.

Layout: `<workdir>/checkpoints/<step>/{params,opt_state,train,data_iter}` (one Orbax
CheckpointManager; async saves; keeps the latest `ckpt.keep` plus the best by `eval/loss`).

- Resume: `Checkpointer.restore(abstract_state, data_iter)` restores the newest readable step.
  A corrupt latest step is reported with a warning, moved aside to
  `<workdir>/checkpoints_corrupt/`, and the previous step is used.
- Different mesh: the abstract state carries the *new* shardings (ShapeDtypeStructs), so a
  checkpoint written on one mesh restores onto another.
- Sampling: `restore_params(workdir, abstract_params)` reads the model parameters only.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

ITEMS = ("params", "opt_state", "train", "data_iter")
BEST_METRIC = "eval/loss"


class _OrbaxNoticeFilter(logging.Filter):
  """Drops Orbax warnings about how this module uses it on purpose: a read-only manager for
  sampling (three lines per restore) and a preemption save without eval metrics."""

  EXPECTED = ("Given directory is read only", "CheckpointManagerOptions.read_only=True",
              "Requested `tracked_metric`; did not provide metrics")

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(self.EXPECTED)


logging.getLogger("absl").addFilter(_OrbaxNoticeFilter())


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _manager(directory: str, *, keep: int = 3, keep_best: bool = True, async_save: bool = True,
             item_names=ITEMS) -> ocp.CheckpointManager:
  policies = [ocp.checkpoint_managers.LatestN(n=keep)]
  if keep_best:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[BEST_METRIC], reverse=True, n=1,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      best_fn=lambda m: m[BEST_METRIC], best_mode="min",  # Makes the manager store metrics.
      create=True)
  return ocp.CheckpointManager(directory, item_names=item_names, options=options)


class Checkpointer:
  """The training run's checkpoints. Every process must call save/restore (P15)."""

  def __init__(self, workdir: str, ckpt_config):
    self.directory = checkpoint_dir(workdir)
    self.corrupt_dir = os.path.join(os.path.abspath(workdir), "checkpoints_corrupt")
    self.config = ckpt_config
    self.manager = _manager(self.directory, keep=ckpt_config.keep,
                            keep_best=ckpt_config.keep_best, async_save=ckpt_config.async_save)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: dict[str, Any], data_iter=None,
           metrics: dict[str, float] | None = None) -> bool:
    """Starts an (async) save of `state` = {params, opt_state, train} and the iterator.

    Blocks until the device arrays are ready (never time or donate half-saved buffers, P14).
    Returns whether a save was started (False if this step is already saved).
    """
    if step in self.manager.all_steps():
      return False
    jax.block_until_ready(state)
    args = {k: ocp.args.StandardSave(state[k]) for k in ("params", "opt_state", "train")}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    return self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)

  def restore(self, abstract_state: dict[str, Any], data_iter=None) -> tuple[int, dict] | None:
    """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

    Returns (step, state) or None when there is no checkpoint. `data_iter` (if given) is set
    to the saved position in place.
    """
    for step in reversed(self.all_steps()):
      args = {k: ocp.args.StandardRestore(abstract_state[k])
              for k in ("params", "opt_state", "train")}
      if data_iter is not None:
        args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**args))
      # Orbax/tensorstore raise many types for damaged files (ValueError, OSError, KeyError,
      # json/msgpack errors...): any failure here means "this step is unreadable".
      except Exception as e:  # pylint: disable=broad-exception-caught
        log.warning("Checkpoint step %d in %s is unreadable (%s: %s); falling back to the "
                        "previous checkpoint.", step, self.directory, type(e).__name__, e)
        self._quarantine(step)
        continue
      state = {k: restored[k] for k in ("params", "opt_state", "train")}
      return step, state
    return None

  def _quarantine(self, step: int) -> None:
    """Moves an unreadable step aside (kept for inspection) so it is never used or overwritten."""
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.isdir(src):
      os.makedirs(self.corrupt_dir, exist_ok=True)
      dst = os.path.join(self.corrupt_dir, f"{step}.{int(time.time())}")
      shutil.move(src, dst)
      log.warning("Moved unreadable checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.manager.reload()

  def wait(self) -> None:
    """Waits for background saves; raises their errors (P14)."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(workdir: str, abstract_params: Any = None, *, step: int | None = None,
                   best: bool = False) -> tuple[int, Any]:
  """Model parameters only (no optimizer state), for the sampling binary.

  Args:
    workdir: the training run's workdir.
    abstract_params: target pytree of `jax.ShapeDtypeStruct`s (with shardings) or arrays, e.g.
      the `nnx.Param` state of `nnx.eval_shape(lambda: create_model(...))`. None: restore as
      saved (plain nested dicts of arrays).
    step: a specific step; default the latest (or the best with `best=True`).
    best: take the checkpoint with the lowest `eval/loss` instead of the latest.

  Returns:
    (step, params).
  """
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoints in {directory} (has {workdir} been trained?)")
  manager = ocp.CheckpointManager(
      directory, item_names=ITEMS,
      options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    if step is None and best:
      scored = [(m[BEST_METRIC], s) for s in manager.all_steps()
                if (m := manager.metrics(s)) and BEST_METRIC in m]
      if not scored:
        raise FileNotFoundError(f"no checkpoint in {directory} has an {BEST_METRIC} metric")
      step = min(scored)[1]
    elif step is None:
      step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoints in {directory}")
    if abstract_params is None:
      restore = ocp.args.StandardRestore()
    else:
      abstract = jax.tree.map(_abstract, abstract_params)
      restore = ocp.args.StandardRestore(abstract)
    restored = manager.restore(step, args=ocp.args.Composite(params=restore))
    return step, restored["params"]
  finally:
    manager.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
