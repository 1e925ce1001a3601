"""A training run's directory (`--workdir`): the one owner of its files.

  config.json     the resolved config (written by training once the step compiled and fits)
  encoding.json   the codec's EncodingConfig, so sampling never needs the dataset
  checkpoints/    Orbax (virtuoso_jax.checkpointing)
  metrics.jsonl   virtuoso_jax.metrics

Training writes `config.json`/`encoding.json` (`write`) and refuses a workdir whose run it
cannot resume (`check_workdir`); the sampling, composing and evaluation binaries read them back
(`load_config`, `load_codec`). Imports no JAX (only `check_workdir`'s multi-process sync does,
lazily).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import ml_collections

from virtuoso_jax import config_lib
from virtuoso_jax import encoding
from virtuoso_jax import paths

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
ENCODING_FILE = "encoding.json"


class RunError(ValueError):
  """A run directory (or a request about one) that cannot be served: the message names the
  path or flag and the reason. The sampling binaries call it SampleError."""


class RunConfigMismatchError(config_lib.ConfigError):
  """The workdir holds a run whose config cannot be resumed with this one (nothing touched)."""


# ------------------------------------------------------------------ writing


def write(workdir: str, config, codec) -> None:
  """`config.json` (the resolved config) and `encoding.json` (the codec) of a training run."""
  paths.write_text(paths.join(workdir, CONFIG_FILE), config_lib.to_json(config))
  write_encoding(workdir, config, codec)


def write_encoding(workdir: str, config, codec) -> None:
  from virtuoso_jax import dataset  # pylint: disable=g-import-not-at-top
  paths.write_json(paths.join(workdir, ENCODING_FILE),
                   {"kind": config.data.encoding, "encoding": codec.config.to_dict(),
                    "token_version": getattr(codec, "version", 1),
                    "controls": _controls_dict(codec), "dataset": dataset.dataset_name(config)},
                   indent=2, sort_keys=True)


def _controls_dict(codec) -> dict[str, Any] | None:
  controls = getattr(codec, "controls", None)
  return None if controls is None else controls.to_dict()


def read_encoding(workdir: str) -> dict[str, Any] | None:
  """The saved `encoding.json` as a dict ({"kind", "encoding", "token_version", "controls",
  "dataset"}; files written before token versions lack the last three's first two: version 1),
  None if absent."""
  path = paths.join(workdir, ENCODING_FILE)
  if not paths.is_file(path):
    return None
  return paths.read_json(path)


def saved_controls(workdir: str):
  """The ControlConfig in `workdir`'s encoding.json (a version-2 run), else None."""
  saved = read_encoding(workdir)
  if not saved or not saved.get("controls"):
    return None
  try:
    return encoding.ControlConfig.from_dict(saved["controls"])
  except (ValueError, TypeError) as e:
    raise RunError(f"{paths.join(workdir, ENCODING_FILE)} has unreadable controls "
                   f"({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------ reading


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json over today's schema, validated: a hand-edited or foreign config is a
  RunError naming the file and the field."""
  workdir = paths.absolute(workdir)
  if not paths.is_dir(workdir):
    raise RunError(f"workdir {workdir} does not exist (train first: python -m "
                   f"virtuoso_jax.main --config=configs/rga.py:tiny --workdir={workdir})")
  cfg_path = paths.join(workdir, CONFIG_FILE)
  if not paths.is_file(cfg_path):
    raise RunError(f"{cfg_path} not found: {workdir} is not a training workdir")
  try:
    config = _with_schema_defaults(config_lib.from_json_file(cfg_path))
    config_lib.validate(config)
    if not (isinstance(config.model.vocab_size, int) and config.model.vocab_size > 0):
      raise ValueError(f"model.vocab_size={config.model.vocab_size!r} (a trained run's is > 0)")
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise RunError(f"{cfg_path} is not a valid virtuoso_jax run config: "
                   f"{e if isinstance(e, config_lib.ConfigError) else f'{type(e).__name__}: {e}'}"
                   ) from e
  return config


def load_codec(workdir: str):
  """(config, codec) of a training run, without JAX, a model or a checkpoint: the codec from
  `encoding.json`, else rebuilt from the run's dataset (and then cached there)."""
  workdir = paths.absolute(workdir)
  config = load_config(workdir)
  kind = config.data.encoding
  path = paths.join(workdir, ENCODING_FILE)
  try:
    saved = read_encoding(workdir)
    enc = None if saved is None else encoding.EncodingConfig.from_dict(saved["encoding"])
    controls = (None if saved is None or not saved.get("controls")
                else encoding.ControlConfig.from_dict(saved["controls"]))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise RunError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to rebuild it "
                   "from the dataset") from e
  if saved is not None:
    if saved.get("kind", kind) != kind:
      raise RunError(f"{path} is for a {saved.get('kind')} codec but {workdir}/{CONFIG_FILE} "
                     f"trains a {kind} model (data.encoding={kind!r})")
    codec = encoding.make_codec(kind, enc, controls)
    if saved.get("token_version", 1) != getattr(codec, "version", 1):
      raise RunError(f"{path} says token version {saved.get('token_version')} but describes a "
                     f"version-{codec.version} codec; the file is damaged")
  else:
    from virtuoso_jax import dataset  # pylint: disable=g-import-not-at-top
    if not dataset.is_prepared(config):
      raise RunError(
          f"{workdir} has no {ENCODING_FILE} and its dataset {dataset.dataset_name(config)} is "
          f"not in {dataset.data_dir(config)}, so the codec cannot be rebuilt; prepare it with: "
          f"{' '.join(dataset.prepare_command(config))}")
    codec = dataset.load_codec(config)
    try:
      write_encoding(workdir, config, codec)
    except OSError:  # A read-only workdir still samples; it just is not cached.
      pass
  if config.model.vocab_size < codec.vocab_size:
    raise RunError(f"{paths.join(workdir, CONFIG_FILE)}: model.vocab_size="
                   f"{config.model.vocab_size} is smaller than the vocabulary of the run's "
                   f"token-version-{getattr(codec, 'version', 1)} codec ({codec.vocab_size} ids, "
                   f"{path}); the checkpoint and this codec do not belong together")
  return config, codec


def _with_schema_defaults(config):
  """A run's config.json over today's schema (configs/default.py): a field added to the schema
  after the run was trained takes its default, so older runs still validate and sample."""
  default_file = config_lib.REPO_ROOT / "configs" / "default.py"
  if not default_file.is_file():
    return config
  merged = config_lib.load_config(str(default_file)).to_dict()

  def overlay(base, top):
    for k, v in top.items():
      if isinstance(v, dict) and isinstance(base.get(k), dict):
        overlay(base[k], v)
      else:
        base[k] = v

  overlay(merged, config.to_dict())
  return ml_collections.ConfigDict(merged)


# ------------------------------------------------------------------ resuming


def saved_run_config(workdir: str) -> dict[str, Any] | None:
  """The saved config of the run in `workdir`, if it holds one worth protecting (checkpoints or
  metrics rows); None for an empty or fresh workdir (or one without a readable config.json)."""
  from virtuoso_jax import checkpointing  # pylint: disable=g-import-not-at-top  (jax)
  path = paths.join(workdir, CONFIG_FILE)
  if not paths.is_file(path):
    return None
  ckpt_dir = checkpointing.checkpoint_dir(workdir)
  has_ckpt = any(n.isdigit() for n in paths.listdir(ckpt_dir))
  metrics = paths.join(workdir, "metrics.jsonl")
  has_rows = paths.is_file(metrics) and paths.size(metrics) > 0
  if not (has_ckpt or has_rows):
    return None
  try:
    return paths.read_json(path)
  except (OSError, ValueError):
    log.warning("%s is unreadable; not comparing configs.", path)
    return None


def check_workdir(config, workdir: str, shown_workdir: str | None = None) -> None:
  """Stops (RunConfigMismatchError, nothing touched) if `workdir` holds a run whose saved config
  differs from `config` in a field a resume cannot cross (`config_lib.resume_conflicts`);
  with `ckpt.overwrite=True` moves that run aside instead."""
  shown = shown_workdir or workdir
  saved = saved_run_config(workdir)
  if saved is None:
    return
  conflicts = config_lib.resume_conflicts(saved, config)
  if not conflicts:
    return
  diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in conflicts)
  if config.ckpt.overwrite:
    moved = _move_aside(workdir)
    log.warning("ckpt.overwrite=True: the run in %s (config differs: %s) was moved to %s; "
                "starting a new run.", shown, diff, moved)
    return
  raise RunConfigMismatchError(
      f"{shown} holds a run whose config differs in fields a resume cannot cross: {diff}. "
      "Nothing was changed. Either train in another --workdir, start a new run from its "
      f"weights with --workdir=NEW --config.ckpt.fine_tune_from={shown} (model shapes must "
      f"match), or replace it with --config.ckpt.overwrite=True (the old run is moved to "
      f"{shown}.old-<timestamp>, not deleted).")


def _move_aside(workdir: str) -> str:
  """Renames `workdir` to `<workdir>.old-<timestamp>` (process 0) and recreates it empty."""
  import jax  # pylint: disable=g-import-not-at-top
  dest = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  n = 1
  while paths.exists(dest):
    n += 1
    dest = f"{workdir}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
  if jax.process_index() == 0:
    paths.move(workdir, dest)
    paths.makedirs(workdir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("move_run_aside")
  return dest


def check_same_encoding(src: str, config, codec) -> None:
  """config.ckpt.fine_tune_from: the run in `src` must read the same token ids as this one
  (its encoding.json, when it has one, against `config`/`codec`); else RunConfigMismatchError."""
  theirs = read_encoding(src)
  if theirs is None:
    return
  theirs = dict(theirs, controls=theirs.get("controls"))  # Older files: version 1.
  ours = {"kind": config.data.encoding, "encoding": codec.config.to_dict(),
          "controls": _controls_dict(codec)}
  for key in ("kind", "encoding", "controls"):
    if json.dumps(theirs.get(key), sort_keys=True) != json.dumps(ours[key], sort_keys=True):
      raise RunConfigMismatchError(
          f"config.ckpt.fine_tune_from={src}: that run's token encoding ({key}: "
          f"{theirs.get(key)}) differs from this run's ({ours[key]}); its parameters would "
          "read other ids")
