"""Orbax checkpoints: params, optimizer state, RNG/step and the grain iterator, saved together.

Layout: `<workdir>/checkpoints/<step>/{params,opt_state,train,data_iter,integrity}` (one Orbax
CheckpointManager; async saves; keeps the latest `ckpt.keep` plus the best by `eval/loss`).

- Integrity: every save also stores `integrity` (JSON): two 32-bit digests per array of
  params/opt_state/train, computed on the devices by one jitted reduction over the global
  array (`state_digest`). A digest is a wrapping sum of a hash of (flat index, bits) over the
  elements, so it does not depend on the sharding, the mesh or the process count: each process
  hashes only its own shards, XLA adds the partial sums, and the same digest is recomputed on
  restore onto any other mesh. One flipped bit changes it.
- Resume: `Checkpointer.restore(abstract_state, data_iter)` restores the newest step that
  reads AND matches its digests. A step that fails is moved aside to
  `<workdir>/checkpoints_corrupt/` only once an older step has restored: then the failure is
  that step's own (damage), not the new program's. If no step restores, nothing is moved and
  `CheckpointRestoreError` names every step's failure. A checkpoint whose arrays have other
  names/shapes/dtypes than the state (a config change) raises `CheckpointMismatchError` before
  anything is read or moved.
- Saving: `CheckpointSaveError` (one line: the path, the free space, the last good step) when
  the disk lacks room for another checkpoint of the last one's size, or when an asynchronous
  save failed (raised at the next save, `wait` or `close`).
- Different mesh: the abstract state carries the *new* shardings (ShapeDtypeStructs), so a
  checkpoint written on one mesh restores onto another.
- Sampling: `restore_params(workdir, abstract_params)` reads the model parameters only;
  `fine_tune_params(workdir, abstract_params)` the same after checking names and shapes.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from virtuoso_jax import config_lib
from virtuoso_jax import paths

log = logging.getLogger(__name__)

STATE_ITEMS = ("params", "opt_state", "train")
INTEGRITY = "integrity"
ITEMS = STATE_ITEMS + ("data_iter", INTEGRITY)
BEST_METRIC = "eval/loss"
DIGEST_ALGORITHM = "fmix32-index-sum-x2-v1"
# Room kept free beyond one checkpoint's size (Orbax metadata, the filesystem's own slack).
SAVE_HEADROOM_BYTES = 64 << 20


class CheckpointError(config_lib.ConfigError):
  """A checkpoint problem the user acts on; main prints it as one `error:` line."""


class CheckpointSaveError(CheckpointError):
  """A save failed or cannot fit (the message names the path, the free space, the last good
  checkpoint)."""


class CheckpointRestoreError(CheckpointError):
  """No checkpoint step could be restored (nothing was moved or deleted)."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint's arrays do not match the state to restore (names, shapes or dtypes)."""


class _IntegrityError(Exception):
  """A step restored but its arrays differ from the digests saved with them."""


def checkpoint_dir(workdir: str) -> str:
  return paths.join(paths.absolute(workdir), "checkpoints")


# ------------------------------------------------------------------ digests


def _fmix32(h):
  """murmur3's 32-bit finaliser (a bijection that spreads every input bit)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x):
  """The array's bits as uint32, one word per element (64-bit elements folded)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = x.dtype.itemsize * 8
  if bits == 32:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if bits < 32:
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32)
  pair = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., bits // 32]
  out = pair[..., 0]
  for i in range(1, pair.shape[-1]):
    out = out ^ _fmix32(pair[..., i] + jnp.uint32(0x9E3779B9 * i & 0xFFFFFFFF))
  return out


def _leaf_digest(x):
  w = _words(x)
  idx = jnp.zeros(w.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(w.ndim)):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
    stride *= w.shape[axis]
  a = _fmix32(w ^ _fmix32(idx * jnp.uint32(0x9E3779B9) + jnp.uint32(0x243F6A88)))
  b = _fmix32((w + jnp.uint32(0x7F4A7C15)) * jnp.uint32(0x27D4EB2F) ^ _fmix32(idx ^ jnp.uint32(0x85A308D3)))
  return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


@functools.lru_cache(maxsize=None)
def _digest_fn(out_sharding):
  return jax.jit(lambda tree: jax.tree.map(_leaf_digest, tree), out_shardings=out_sharding)


def _path_str(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _flat(tree) -> dict[str, Any]:
  return {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_digest(tree) -> dict[str, list[int]]:
  """{array path: [digest_a, digest_b]} of every array leaf of `tree`, independent of sharding.

  Every process must call it (the reduction is one collective program over the global arrays).
  """
  flat = {k: v for k, v in _flat(tree).items() if hasattr(v, "dtype")}
  if not flat:
    return {}
  arrays = {k: v if isinstance(v, jax.Array) else jnp.asarray(v) for k, v in flat.items()}
  # One program per set of devices (a jit cannot mix arrays committed to different devices).
  groups: dict[tuple[int, ...], dict[str, jax.Array]] = {}
  for k, v in arrays.items():
    groups.setdefault(tuple(sorted(d.id for d in v.sharding.device_set)), {})[k] = v
  digests = {}
  for group in groups.values():
    meshes = {getattr(v.sharding, "mesh", None) for v in group.values()}
    out_sharding = None
    mesh = next(iter(meshes))
    if isinstance(mesh, jax.sharding.Mesh):  # Replicated: every process reads its copy.
      out_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    digests.update(jax.device_get(_digest_fn(out_sharding)(group)))
  return {k: [int(x) for x in np.asarray(v)] for k, v in digests.items()}


def _digest_items(state) -> dict[str, dict[str, list[int]]]:
  return {k: state_digest(state[k]) for k in STATE_ITEMS if k in state}


def _compare_digests(saved: dict, actual: dict) -> list[str]:
  """Names of the arrays whose digests differ (or are missing from one side)."""
  bad = []
  for item, arrays in saved.items():
    got = actual.get(item, {})
    for name, digest in arrays.items():
      if list(got.get(name, [])) != list(digest):
        bad.append(f"{item}/{name}")
  return bad


# ------------------------------------------------------------------ shapes


def _saved_arrays(metadata_item) -> dict[str, tuple[tuple[int, ...], str]]:
  tree = getattr(metadata_item, "tree", metadata_item)
  out = {}
  for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(m, "shape") and hasattr(m, "dtype"):
      out[_path_str(p)] = (tuple(m.shape), str(np.dtype(m.dtype)) if m.dtype is not None else "?")
  return out


def _abstract_arrays(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  return {k: (tuple(v.shape), str(np.dtype(v.dtype)))
          for k, v in _flat(tree).items() if hasattr(v, "shape")}


def _describe_mismatch(item: str, saved: dict, wanted: dict, limit: int = 6) -> list[str]:
  diffs = []
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      diffs.append(f"{item}/{name} {wanted[name][0]} not in the checkpoint")
    elif name not in wanted:
      diffs.append(f"{item}/{name} {saved[name][0]} only in the checkpoint")
    elif saved[name] != wanted[name]:
      (s_shape, s_dtype), (w_shape, w_dtype) = saved[name], wanted[name]
      what = f"{s_shape} -> {w_shape}" if s_shape != w_shape else f"{s_dtype} -> {w_dtype}"
      diffs.append(f"{item}/{name} {what}")
  if len(diffs) > limit:
    diffs = diffs[:limit] + [f"... {len(diffs) - limit} more"]
  return diffs


# ------------------------------------------------------------------ sizes and errors


def _tree_bytes(tree) -> int:
  return sum(int(getattr(x, "nbytes", 0) or 0) for x in jax.tree.leaves(tree))


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def _root_cause(e: BaseException) -> BaseException:
  """The innermost OSError of an exception chain (the disk's own words), else `e`."""
  seen, cur, found = set(), e, None
  while cur is not None and id(cur) not in seen:
    seen.add(id(cur))
    if isinstance(cur, OSError):
      found = cur
    cur = cur.__cause__ or cur.__context__
  return found or e


def _one_line(e: BaseException, limit: int = 300) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return f"{type(e).__name__}: {text[:limit]}"


def _item_handlers() -> dict[str, Any]:
  """Explicit handlers, so a fresh manager can read an item's metadata before restoring it."""
  handlers = {k: ocp.StandardCheckpointHandler() for k in STATE_ITEMS}
  handlers[INTEGRITY] = ocp.JsonCheckpointHandler()
  handlers["data_iter"] = grain.checkpoint.CheckpointHandler()
  return handlers


def _manager(directory: str, *, keep: int = 3, keep_best: bool = True,
             async_save: bool = True) -> ocp.CheckpointManager:
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
  return ocp.CheckpointManager(directory, item_handlers=_item_handlers(), options=options)


def _all_processes_agree(ok: bool, name: str) -> bool:
  """True iff `ok` on every process (so every process raises, or none: saves are collective)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  del name
  return bool(np.all(np.asarray(flags)))


class Checkpointer:
  """The training run's checkpoints. Every process must call save/restore (P15)."""

  def __init__(self, workdir: str, ckpt_config):
    self.directory = checkpoint_dir(workdir)
    self.corrupt_dir = paths.join(paths.absolute(workdir), "checkpoints_corrupt")
    self.config = ckpt_config
    self.manager = _manager(self.directory, keep=ckpt_config.keep,
                            keep_best=ckpt_config.keep_best, async_save=ckpt_config.async_save)
    self._saving_step: int | None = None  # The step of the save in flight (async).
    self._sized_step: int | None = None  # The committed step whose size is `_last_bytes`.
    self._last_bytes = 0

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  # ---------------------------------------------------------------- save

  def _last_good(self) -> str:
    steps = [s for s in self.all_steps() if s != self._saving_step]
    if not steps:
      return "there is no earlier checkpoint"
    return f"the last good checkpoint, step {steps[-1]}, is kept in {self.directory}"

  def _save_failed(self, step: int | None, e: BaseException) -> CheckpointSaveError:
    cause = _root_cause(e)
    free = paths.free_bytes(self.directory)
    where = f"step {step} to {self.directory}" if step is not None else f"to {self.directory}"
    reason = ("no space left on device" if getattr(cause, "errno", None) == errno.ENOSPC
              else _one_line(cause))
    return CheckpointSaveError(
        f"saving checkpoint {where} failed ({reason}); free space there: "
        f"{_gib(free) if free is not None else 'unknown'}. {self._last_good().capitalize()}.")

  def _finish_pending(self) -> None:
    """Waits for the save in flight; a failure there becomes one CheckpointSaveError."""
    step = self._saving_step
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._saving_step = None
      self.manager.reload()
      raise self._save_failed(step, e) from None
    self._saving_step = None

  def _needed_bytes(self, state) -> int:
    latest = self.manager.latest_step()
    if latest is not None and latest != self._sized_step:
      size = paths.tree_bytes(paths.join(self.directory, str(latest)))
      if size:
        self._sized_step, self._last_bytes = latest, size
    estimate = self._last_bytes or _tree_bytes(state)
    return int(estimate * 1.1) + SAVE_HEADROOM_BYTES

  def save(self, step: int, state: dict[str, Any], data_iter=None,
           metrics: dict[str, float] | None = None) -> bool:
    """Starts an (async) save of `state` = {params, opt_state, train}, the iterator and the
    arrays' digests.

    Blocks until the device arrays are ready (never time or donate half-saved buffers, P14).
    Returns whether a save was started (False if this step is already saved). Raises
    CheckpointSaveError if the previous save failed or the disk lacks room for this one.
    """
    self._finish_pending()
    if step in self.manager.all_steps():
      return False
    jax.block_until_ready(state)
    needed = self._needed_bytes(state)
    free = paths.free_bytes(self.directory)  # None in a bucket: no quota to check.
    if not _all_processes_agree(free is None or free >= needed, f"space_{step}"):
      raise CheckpointSaveError(
          f"not enough disk space to save checkpoint step {step} in {self.directory}: "
          f"{_gib(free or 0)} free, a checkpoint needs about {_gib(needed)}. "
          f"{self._last_good().capitalize()}; free some space (or lower --config.ckpt.keep) "
          "and rerun to resume.")
    args = {k: ocp.args.StandardSave(state[k]) for k in STATE_ITEMS}
    args[INTEGRITY] = ocp.args.JsonSave({"algorithm": DIGEST_ALGORITHM,
                                         "digests": _digest_items(state)})
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
    self._saving_step = step
    try:
      started = self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics,
                                  force=True)
    except Exception as e:  # pylint: disable=broad-exception-caught
      self._saving_step = None
      self.manager.reload()
      raise self._save_failed(step, e) from None
    if not started:
      self._saving_step = None
    return started

  # ---------------------------------------------------------------- restore

  def check_compatible(self, abstract_state: dict[str, Any], step: int | None = None) -> None:
    """Raises CheckpointMismatchError if `step` (default: the newest) saved arrays of other
    names/shapes/dtypes than `abstract_state`. Unreadable metadata is not judged here."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return
    try:
      metadata = self.manager.item_metadata(step)
    except Exception:  # pylint: disable=broad-exception-caught
      return  # Damaged metadata: restore() reports it.
    diffs = []
    for k in STATE_ITEMS:
      item = metadata[k] if k in metadata.keys() else None
      if item is None:
        continue
      diffs += _describe_mismatch(k, _saved_arrays(item), _abstract_arrays(abstract_state[k]))
    if diffs:
      raise CheckpointMismatchError(
          f"checkpoint step {step} in {self.directory} does not match this run's state: "
          f"{'; '.join(diffs)}. It was written by another model/optimizer config; nothing was "
          "moved or changed.")

  def _restore_step(self, step: int, abstract_state, data_iter):
    args = {k: ocp.args.StandardRestore(abstract_state[k]) for k in STATE_ITEMS}
    if data_iter is not None:
      args["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    stored = self._stored_items(step)
    has_digests = INTEGRITY in stored
    if has_digests:
      args[INTEGRITY] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    state = {k: restored[k] for k in STATE_ITEMS}
    if has_digests:
      saved = restored[INTEGRITY]
      if saved.get("algorithm") != DIGEST_ALGORITHM:
        log.warning("Checkpoint step %d: digests of unknown algorithm %r; not verified.", step,
                    saved.get("algorithm"))
      else:
        bad = _compare_digests(saved["digests"], _digest_items(state))
        if bad:
          raise _IntegrityError(
              f"{len(bad)} array(s) differ from their saved digests: {', '.join(bad[:4])}"
              + (" ..." if len(bad) > 4 else ""))
    else:
      log.warning("Checkpoint step %d has no digests (saved by an older version); restored "
                  "without an integrity check.", step)
    return state

  def _stored_items(self, step: int) -> set[str]:
    try:
      return set(paths.listdir(paths.join(self.directory, str(step))))
    except OSError:
      return set()

  def restore(self, abstract_state: dict[str, Any], data_iter=None) -> tuple[int, dict] | None:
    """Restores the newest checkpoint that reads and matches its digests, onto
    `abstract_state`'s shardings.

    Returns (step, state) or None when there is no checkpoint. `data_iter` (if given) is set
    to the saved position in place. Newer steps that failed are quarantined only when an older
    one restored; if none restores, raises CheckpointRestoreError and moves nothing.
    """
    steps = self.all_steps()
    if not steps:
      return None
    self.check_compatible(abstract_state, steps[-1])
    failed: list[tuple[int, str]] = []
    for step in reversed(steps):
      try:
        state = self._restore_step(step, abstract_state, data_iter)
      # Orbax/tensorstore raise many types for damaged files (ValueError, OSError, KeyError,
      # json/msgpack errors...), and _IntegrityError for arrays that read but changed.
      except Exception as e:  # pylint: disable=broad-exception-caught
        why = _one_line(e)
        log.warning("Checkpoint step %d in %s failed to restore (%s); trying the previous "
                    "checkpoint.", step, self.directory, why)
        failed.append((step, why))
        continue
      for bad, why in failed:
        log.warning("Checkpoint step %d is damaged (%s) while step %d restores: moving it "
                    "aside.", bad, why, step)
        self._quarantine(bad)
      return step, state
    raise CheckpointRestoreError(
        f"no checkpoint in {self.directory} could be restored ("
        + "; ".join(f"step {s}: {w}" for s, w in failed)
        + "). All of them failing points at a mismatch between these checkpoints and this "
        "program or config rather than damage, so nothing was moved; train in another "
        "--workdir, or fix the config to match the run's config.json.")

  def _quarantine(self, step: int) -> None:
    """Moves a damaged step aside (kept for inspection) so it is never used or overwritten."""
    src = paths.join(self.directory, str(step))
    if jax.process_index() == 0 and paths.is_dir(src):
      paths.makedirs(self.corrupt_dir)
      dst = paths.join(self.corrupt_dir, f"{step}.{int(time.time())}")
      paths.move(src, dst)
      log.warning("Moved damaged checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"quarantine_{step}")
    self.manager.reload()

  def wait(self) -> None:
    """Waits for background saves; a failed one raises CheckpointSaveError (P14)."""
    self._finish_pending()

  def close(self) -> None:
    try:
      self._finish_pending()
    finally:
      self.manager.close()


def _read_only_manager(workdir: str) -> tuple[str, ocp.CheckpointManager]:
  directory = checkpoint_dir(workdir)
  if not paths.is_dir(directory):
    raise FileNotFoundError(f"no checkpoints in {directory} (has {workdir} been trained?)")
  return directory, ocp.CheckpointManager(
      directory, item_handlers=_item_handlers(),
      options=ocp.CheckpointManagerOptions(read_only=True))


def _choose_step(manager, directory: str, step: int | None, best: bool) -> int:
  """The step to read: `step` if given (it must exist), else the best by eval loss with `best`,
  else the latest. FileNotFoundError says which is missing."""
  steps = manager.all_steps()
  if step is None and best:
    scored = [(m[BEST_METRIC], s) for s in steps
              if (m := manager.metrics(s)) and BEST_METRIC in m]
    if not scored:
      raise FileNotFoundError(f"no checkpoint in {directory} has an {BEST_METRIC} metric (use "
                              "the latest instead)")
    step = min(scored)[1]
  elif step is None:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoints in {directory}")
  if step not in steps:
    raise FileNotFoundError(f"step {step} is not in {directory} (steps: "
                            f"{', '.join(map(str, steps)) or 'none'})")
  return int(step)


def params_mismatch(workdir: str, abstract_params: Any, *, step: int | None = None,
                    best: bool = False) -> tuple[int, list[str]]:
  """(the step `restore_params` would read, how its saved parameters differ from
  `abstract_params` in names, shapes and dtypes), from Orbax's metadata alone: no array is
  read, so a mismatch never starts a restore (whose reads still in flight would hit a closed
  event loop at exit). An empty list: they fit. Raises FileNotFoundError (no such checkpoint) or
  CheckpointError (its metadata is unreadable)."""
  directory, manager = _read_only_manager(workdir)
  try:
    step = _choose_step(manager, directory, step, best)
    try:
      saved = _saved_arrays(manager.item_metadata(step)["params"])
    except Exception as e:  # pylint: disable=broad-exception-caught  (a damaged step: say which)
      raise CheckpointError(f"checkpoint step {step} in {directory} is unreadable: "
                            f"{type(e).__name__}: {str(e)[:300]}") from e
    return step, _describe_mismatch(
        "params", saved, _abstract_arrays(jax.tree.map(_abstract, abstract_params)))
  finally:
    manager.close()


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
  directory, manager = _read_only_manager(workdir)
  try:
    step = _choose_step(manager, directory, step, best)
    if abstract_params is None:
      restore = ocp.args.StandardRestore()
    else:
      abstract = jax.tree.map(_abstract, abstract_params)
      restore = ocp.args.StandardRestore(abstract)
    restored = manager.restore(step, args=ocp.args.Composite(params=restore))
    return step, restored["params"]
  finally:
    manager.close()


def fine_tune_params(workdir: str, abstract_params: Any) -> tuple[int, Any]:
  """The latest params of another run, checked against `abstract_params` (names, shapes and
  dtypes: a difference is a CheckpointMismatchError naming them) and against their digests."""
  directory, manager = _read_only_manager(workdir)
  try:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"ckpt.fine_tune_from: no checkpoints in {directory}")
    abstract = jax.tree.map(_abstract, abstract_params)
    diffs = _describe_mismatch("params", _saved_arrays(manager.item_metadata(step)["params"]),
                               _abstract_arrays(abstract))
    if diffs:
      raise CheckpointMismatchError(
          f"ckpt.fine_tune_from={workdir}: its parameters (step {step}) do not fit this model: "
          f"{'; '.join(diffs)}. Fine-tuning needs the same model shapes (model.* and the "
          "vocabulary).")
    args = {"params": ocp.args.StandardRestore(abstract)}
    has_digests = paths.is_dir(paths.join(directory, str(step), INTEGRITY))
    if has_digests:
      args[INTEGRITY] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    if has_digests:
      saved = restored[INTEGRITY]
      bad = _compare_digests({"params": saved["digests"]["params"]},
                             {"params": state_digest(restored["params"])})
      if bad:
        raise CheckpointError(f"ckpt.fine_tune_from={workdir}: checkpoint step {step} is damaged "
                              f"({', '.join(bad[:4])} differ from their digests)")
    return step, restored["params"]
  finally:
    manager.close()


def _abstract(x):
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
