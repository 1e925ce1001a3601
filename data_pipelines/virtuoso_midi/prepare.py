r"""Prepares a virtuoso_midi config without the `tfds` CLI (no TensorFlow needed).

  python -m data_pipelines.virtuoso_midi.prepare --config=bach_token
  python -m data_pipelines.virtuoso_midi.prepare --config=token --manual_dir=/my/midis \
      --data_dir=/data/tfds

  python -m data_pipelines.virtuoso_midi.prepare --config=token --manual_dir=/my/midis \
      --beam_pipeline_options=runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=8

It runs `Builder(...).download_and_prepare(file_format='array_record')`, printing what it does
(sources, progress with files/s and ETA, the build report) as `[virtuoso_midi] ...` lines only;
`--verbose` (or VIRTUOSO_VERBOSE=1) adds TFDS's progress bars, INFO logs and prints. The trainer runs exactly this in a
subprocess when the configured dataset is missing. Read the result with
`tfds.data_source('virtuoso_midi/<config>', data_dir=...)`.

`--data_dir` and `--manual_dir` may be remote (`gs://bucket/tfds`, any path etils.epath
accepts). array_record's writer only writes local files (riegeli's file writer; its reader
does read gs://), so a remote data_dir is built in a local staging folder and then uploaded,
its DatasetInfo files last: until those land, TFDS does not see the dataset as prepared.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string("config", "bach_token", "Builder config, e.g. bach_token, token, char.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Folder of MIDI files (token/char configs).")
_DOWNLOAD_DIR = flags.DEFINE_string("download_dir", "", "Download/cache folder ('' = <data_dir>/downloads).")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Processes of the Bach conversion (0 = all cores). The files are encoded in "
    "this process, or by the Beam runner given with --beam_pipeline_options.")
_BEAM_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "", "Build with Apache Beam with these options, comma-separated "
    "key=value as for `tfds build` (e.g. runner=DataflowRunner,project=...); '' = the builder "
    "chooses (in this process for small corpora, else Beam's Direct runner on all cores).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset is already prepared.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Also show TFDS's own output: progress bars, INFO logs (sets "
    "VIRTUOSO_VERBOSE=1). Default: only the [virtuoso_midi] lines, the report and warnings.")


def prepare(config: str, *, data_dir: str | None = None, manual_dir: str | None = None,
            download_dir: str | None = None, num_workers: int | None = None,
            overwrite: bool = False, beam_pipeline_options: str = ""):
  """Builds one config as array_record and returns the builder (its `info` holds the report).

  Args:
    config: builder config name (see the builder's docstring).
    data_dir: TFDS data dir (None: the TFDS default).
    manual_dir: the MIDI folder, for the `token`/`char` configs.
    download_dir: download/cache folder (None: `<data_dir>/downloads`).
    num_workers: processes of the Bach conversion (None: all cores).
    overwrite: delete and rebuild an existing preparation of this config and version.
    beam_pipeline_options: comma-separated Beam options, as `tfds build` takes them ('' = the
      builder chooses how to build).
  """
  # Imported here: `--help` and flag errors stay instant.
  from etils import epath  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import paths  # pylint: disable=g-import-not-at-top
  make = lambda: vm.Builder(config=config, data_dir=data_dir or None,
                            num_workers=num_workers or None)
  builder = make()
  where = os.fspath(builder.data_dir)
  if paths.is_remote(where):
    return _prepare_remote(config, builder, where, data_dir=data_dir, manual_dir=manual_dir,
                           download_dir=download_dir, num_workers=num_workers,
                           overwrite=overwrite, beam_pipeline_options=beam_pipeline_options)
  if builder.is_prepared():
    if not overwrite:
      builder.check_built_from(manual_dir)
      print(f"[virtuoso_midi] virtuoso_midi/{config} is already prepared at {where}", flush=True)
      return builder
    # As `tfds build --overwrite`: delete the prepared version (downloads stay cached), then
    # build with a fresh builder (one that loaded the old DatasetInfo cannot write a new one).
    print(f"[virtuoso_midi] --overwrite: deleting the prepared {where}", flush=True)
    epath.Path(where).rmtree()
    builder = make()
  print(f"[virtuoso_midi] preparing virtuoso_midi/{config} "
        f"(version {builder.version}, array_record) into {where}", flush=True)
  if manual_dir:
    print(f"[virtuoso_midi] reading MIDI files from {manual_dir}", flush=True)
  beam_options = None
  if beam_pipeline_options:
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
    beam_options = pipeline_options.PipelineOptions(
        flags=[f"--{opt}" for opt in beam_pipeline_options.split(",")])
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None,
                                                 beam_options=beam_options)
  start = time.monotonic()
  builder.download_and_prepare(file_format="array_record", download_dir=download_dir or None,
                               download_config=download_config)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  print(f"[virtuoso_midi] done in {time.monotonic() - start:.1f} s: virtuoso_midi/{config} "
        f"at {where}, splits {splits}", flush=True)
  return builder


def _prepare_remote(config: str, builder, where: str, *, data_dir, manual_dir, download_dir,
                    num_workers, overwrite, beam_pipeline_options):
  """`prepare` into a remote data_dir: build in a local staging data_dir, then upload the
  prepared version folder (the DatasetInfo files last)."""
  from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import paths  # pylint: disable=g-import-not-at-top
  if builder.is_prepared() and not overwrite:
    builder.check_built_from(manual_dir)
    print(f"[virtuoso_midi] virtuoso_midi/{config} is already prepared at {where}", flush=True)
    return builder
  with tempfile.TemporaryDirectory(prefix="virtuoso_midi_staging_") as staging:
    print(f"[virtuoso_midi] {where} is remote: building in {staging}, then uploading",
          flush=True)
    # A Beam runner on other machines cannot write into this staging folder: give such a
    # runner a data_dir its workers share as a file system (README, "With Apache Beam").
    local = prepare(config, data_dir=staging, manual_dir=manual_dir, download_dir=download_dir,
                    num_workers=num_workers, beam_pipeline_options=beam_pipeline_options)
    if paths.exists(where):  # A partial upload, or --overwrite: replaced whole.
      paths.rmtree(where)
    paths.copy_tree(local.data_dir, where, last=_INFO_FILES)
  print(f"[virtuoso_midi] uploaded virtuoso_midi/{config} to {where}", flush=True)
  return vm.Builder(config=config, data_dir=data_dir, num_workers=num_workers or None)


# The files TFDS checks to call a version folder prepared (tfds file_utils.is_valid_variant_dir).
_INFO_FILES = ("features.json", "dataset_info.json")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _VERBOSE.value:
    os.environ["VIRTUOSO_VERBOSE"] = "1"  # Read by the builder (progress bars, TFDS prints).
  from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm  # pylint: disable=g-import-not-at-top
  if not vm.processing.verbose():
    # Our own lines are printed; TFDS/absl INFO chatter (per-shard "Done writing ...") is not.
    vm.quiet_tfds_logging()
  try:
    prepare(_CONFIG.value, data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
            download_dir=_DOWNLOAD_DIR.value, num_workers=_NUM_WORKERS.value,
            overwrite=_OVERWRITE.value, beam_pipeline_options=_BEAM_OPTIONS.value)
  except (ValueError, FileNotFoundError) as e:
    # A bad config name, or a CorpusError: no/empty MIDI folder, no usable file, a prepared
    # dataset of another folder.
    print(f"[virtuoso_midi] ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
