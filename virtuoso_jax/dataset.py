"""The configured dataset: its name, where it lives, preparing it, and its codec.

One module for what `main`, `sample`, `compose`, `evaluate` and the batch pipeline
(`input_pipeline`) all need to know about a dataset, without importing the batch pipeline
(grain) or JAX at import time:

  builder_config(config)   "bach_token", "token" (a user's folder), ... from data.source/encoding
  dataset_name(config)     "virtuoso_midi/bach_token"
  data_dir(config)         the TFDS data_dir
  is_prepared(config)      whether it is built there
  ensure_prepared(config)  builds it once (process 0, a `data_pipelines` subprocess) if missing
  load_codec(config)       the codec it was encoded with (its DatasetInfo metadata)

virtuoso_jax never imports data_pipelines: preparing runs its CLI in a subprocess.
"""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

from virtuoso_jax import config_lib
from virtuoso_jax import paths

log = logging.getLogger(__name__)

# data.source of a dataset built from the user's own MIDI folder (data.manual_dir); its TFDS
# builder config is named by the encoding alone ("token", "char").
MANUAL_SOURCE = "manual"


class DatasetNotPreparedError(RuntimeError):
  """The configured dataset is not prepared and cannot be prepared automatically."""


class ManualDirMismatchError(DatasetNotPreparedError):
  """A `token`/`char` dataset was built from another folder than the one asked for."""


def builder_config(config) -> str:
  """The TFDS builder config name: `{source}_{encoding}`, or `{encoding}` for a user's folder."""
  d = config.data
  return d.encoding if d.source == MANUAL_SOURCE else f"{d.source}_{d.encoding}"


def dataset_name(config) -> str:
  return f"{config.data.tfds_name}/{builder_config(config)}"


def data_dir(config) -> str:
  """The TFDS data_dir: config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets;
  local or remote (`gs://bucket/tfds`: TFDS and the array_record reader open it themselves)."""
  d = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.expanduser(d)


def builder(config):
  """The TFDS builder of the prepared dataset, read by name (no data_pipelines import)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.builder(dataset_name(config), data_dir=data_dir(config))


def is_prepared(config) -> bool:
  """Whether the prepared dataset exists under data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    b = builder(config)
  except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError):
    return False
  return b.is_prepared() if hasattr(b, "is_prepared") else True


def prepare_command(config) -> list[str]:
  """The `data_pipelines` command that prepares the configured dataset."""
  cmd = [sys.executable, "-m", "data_pipelines.virtuoso_midi.prepare",
         f"--config={builder_config(config)}", f"--data_dir={data_dir(config)}"]
  if config.data.manual_dir:
    cmd.append(f"--manual_dir={os.path.expanduser(config.data.manual_dir)}")
  return cmd


def not_prepared_error(config, why: str = "") -> DatasetNotPreparedError:
  """The error for a dataset that is not there (`why`: what stops preparing it here), naming
  the command that prepares it."""
  return DatasetNotPreparedError(
      f"dataset {dataset_name(config)} is not prepared in {data_dir(config)}{why}; run: "
      + " ".join(prepare_command(config)))


def prepare_dataset(config, repo_root: str | os.PathLike | None = None) -> None:
  """Prepares the configured dataset by running the data_pipelines CLI in a subprocess, from
  the repository root (`repo_root`, else the checkout this package is installed from)."""
  root = pathlib.Path(repo_root or config_lib.REPO_ROOT)
  cmd = prepare_command(config)
  if config.data.tfds_name != "virtuoso_midi":
    raise DatasetNotPreparedError(
        f"dataset {dataset_name(config)} is not prepared in {data_dir(config)}; only "
        "virtuoso_midi can be prepared automatically (check data.tfds_name / data.data_dir)")
  if config.data.source == MANUAL_SOURCE and not config.data.manual_dir:
    raise DatasetNotPreparedError(
        f"dataset {dataset_name(config)} is not prepared in {data_dir(config)}, and it is built "
        f"from your own MIDI folder: pass --config.data.manual_dir=/path/to/midis (or build it "
        f"first: tfds build data_pipelines/virtuoso_midi --config={builder_config(config)} "
        f"--manual_dir=/path/to/midis --data_dir={data_dir(config)})")
  if not (root / "data_pipelines" / "virtuoso_midi").is_dir():
    raise DatasetNotPreparedError(
        f"dataset {dataset_name(config)} is not prepared in {data_dir(config)}, and no "
        f"data_pipelines/ folder was found under {root} to prepare it. From a virtuoso_jax "
        f"checkout run: {' '.join(cmd)}")
  log.warning("Dataset %s is not prepared in %s; preparing it now (once): %s",
              dataset_name(config), data_dir(config), " ".join(cmd))
  result = subprocess.run(cmd, cwd=root, check=False)
  if result.returncode != 0:
    raise DatasetNotPreparedError(
        f"preparing {dataset_name(config)} failed (exit code {result.returncode}); "
        f"command: {' '.join(cmd)} (cwd {root})")
  if not is_prepared(config):
    raise DatasetNotPreparedError(
        f"{' '.join(cmd)} finished but {dataset_name(config)} is still not found in "
        f"{data_dir(config)}")


def ensure_prepared(config) -> None:
  """Prepares the configured dataset if it is missing (data.prepare_if_missing; process 0 runs
  `prepare_dataset`, the others wait for it), else DatasetNotPreparedError naming the command.
  The training binary calls it before train.train_and_evaluate."""
  if is_prepared(config):
    return
  if not config.data.prepare_if_missing:
    raise not_prepared_error(config, " and data.prepare_if_missing is False")
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    prepare_dataset(config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("dataset_prepared")


def load_codec(config):
  """The codec the dataset was encoded with (`DatasetInfo.metadata["encoding"]`), of the
  config's data.encoding, version 5 when the config trains beyond continuation (the records
  are version 1, which version 5 reads unchanged); a `manual` dataset built from another folder
  than data.manual_dir is a ManualDirMismatchError."""
  from virtuoso_jax import encoding  # pylint: disable=g-import-not-at-top
  metadata = builder(config).info.metadata or {}
  if "encoding" not in metadata:
    raise ValueError(f"dataset {dataset_name(config)} in {data_dir(config)} has no "
                     "metadata['encoding']; rebuild it with the current data_pipelines")
  mismatch = manual_dir_mismatch(config.data.manual_dir,
                                 (metadata.get("report") or {}).get("manual_dir"))
  if mismatch:
    raise ManualDirMismatchError(
        f"dataset {dataset_name(config)} in {data_dir(config)} {mismatch}. Use one data_dir per "
        f"corpus (--config.data.data_dir=...), or rebuild it: "
        + " ".join(prepare_command(config)) + " --overwrite")
  return encoding.make_codec(config.data.encoding,
                             encoding.EncodingConfig.from_dict(metadata["encoding"]),
                             control_config(config))


def control_config(config):
  """The ControlConfig of token codec version 5 when the config trains beyond continuation
  (any of data.infill_rate, accompany_rate, attribute_rate > 0), else None (version 1). With
  data.attribute_bins > 0 its edges are placeholders until training fits them to the corpus
  (`tasks.fit_controls`); the vocabulary is already final."""
  from virtuoso_jax import encoding  # pylint: disable=g-import-not-at-top
  d = config.data
  if not (d.infill_rate > 0 or d.accompany_rate > 0 or d.attribute_rate > 0):
    return None
  latest = {"task_ids": True, "infill_control_ids": True, "control_fields": True}
  if d.attribute_bins:
    return encoding.ControlConfig.generic(int(d.attribute_bins), int(d.anticipation_ms),
                                          **latest)
  return encoding.ControlConfig(anticipation_ms=int(d.anticipation_ms), **latest)


def manual_dir_mismatch(wanted, built_from) -> str:
  """'' if a dataset built from the folder `built_from` serves a request for `wanted`, else the
  reason ("was built from X, not from Y"). `token`/`char` datasets share one name per data_dir,
  so training or rebuilding on the wrong corpus would otherwise be silent. Used by training
  (load_codec) and by the TFDS builder (data_pipelines)."""
  if not wanted or not built_from or paths.same(wanted, built_from):
    return ""
  return f"was built from {built_from}, not from {wanted}"
