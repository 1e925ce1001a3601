"""virtuoso_midi: MIDI corpora as one encoded example per song (char or token encoding).

Builder configs (`--config=` of `tfds build`), `{source}_{encoding}` or just `{encoding}`:

| config                      | source                                                                  |
| --------------------------- | ----------------------------------------------------------------------- |
| `token`, `char`             | your folder (`--manual_dir`): `.mid`/`.midi` files, recursively, and    |
|                             | the MIDI files inside `.zip`/`.tar.gz` archives in it                   |
| `bach_token`, `bach_char`   | the Bach chorales bundled with music21, converted to MIDI (no network)  |
| `tegridy_token/char`        | the four Tegridy MIDI Dataset zips Optimus-VIRTUOSO trained on          |
| `maestro_token/char`        | MAESTRO v3.0.0, MIDI only                                               |
| `lakh_token/char`           | the Lakh MIDI Dataset, `lmd_full`                                       |

Encodings: `token` writes `ids` (int32, BOS ... EOS) with `virtuoso_jax.encoding.TokenCodec`;
`char` writes `text` (the Optimus TXT of one song) with `CharCodec`. Every example also has
`name` (source-relative path), `sha256` (of the file's bytes), `num_notes`, `instruments`,
`seconds` and `clipped` (per-field counts of notes the encoding had to clip).

Splits `train`/`validation`/`test` (about 90/5/5) by content hash: identical files collapse to
one example and a file never lands in two splits. `DatasetInfo.metadata["encoding"]` is the
`EncodingConfig.to_dict()` the records were written with, `metadata["report"]` the build
report (files read, recovered, skipped by reason with names, notes, tokens, per-split counts).

This module does file I/O through epath only (DatasetBuilderTestCase mocks `open`/`os`). It
lists the files, then builds them in one of two ways:
- given Beam options (`tfds build --beam_pipeline_options=...`, `prepare
  --beam_pipeline_options=...`; any runner: Direct, Flink, Spark, Dataflow), as an Apache Beam
  pipeline (`beam_pipeline.py`);
- otherwise in this process, one file at a time, at any corpus size
  (`processing.build_in_process`): each example is spilled to a local file as it is encoded,
  so memory stays flat. Beam's local runners (Direct, and the Python portable job service)
  hold each stage's output in the launching process, growing with the encoded data, so the
  builder never starts one by itself; a cluster runner keeps the data on its workers.
Both run the same per-file function (`processing.process_item`, in a `processing.FileSandbox`)
and the same aggregations (`aggregation.py`), and write the same records and report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import pathlib
import sys
import time
from typing import Any

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

try:
  from virtuoso_jax import encoding as enc
except ModuleNotFoundError as _e:  # pragma: no cover - depends on how the package is installed.
  # `tfds build data_pipelines/virtuoso_midi` from a checkout that was not `pip install`ed: the
  # tfds console script does not put the working directory on sys.path. Use this checkout's
  # virtuoso_jax (spawned build workers inherit sys.path).
  _REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
  if _e.name != "virtuoso_jax" or not (_REPO_ROOT / "virtuoso_jax" / "__init__.py").is_file():
    raise ModuleNotFoundError(
        f"{_e}; install virtuoso_jax first: pip install -e '.[tfds]' (from the repository "
        "root)") from _e
  sys.path.insert(0, os.fspath(_REPO_ROOT))
  from virtuoso_jax import encoding as enc
from virtuoso_jax import dataset as vj_dataset  # pylint: disable=g-bad-import-order
from virtuoso_jax import paths  # pylint: disable=g-bad-import-order


def _build_module(name: str):
  """This folder's module `name`, as `data_pipelines.virtuoso_midi.<name>` when that package is
  this folder: Beam pickles our DoFns by module name, and a remote runner's workers have the
  package installed under that name (setup.py), not as the `virtuoso_midi` that `tfds build`
  imports this folder as. Otherwise (another checkout installed, or none) the module next to
  this file."""
  here = pathlib.Path(__file__).resolve().parent
  try:
    package = importlib.import_module("data_pipelines.virtuoso_midi")
    if pathlib.Path(package.__file__).resolve().parent == here:
      return importlib.import_module(f"data_pipelines.virtuoso_midi.{name}")
  except ImportError:
    pass
  if __package__:
    return importlib.import_module(f"{__package__}.{name}")
  return importlib.import_module(name)  # pragma: no cover - imported as a top-level module.


aggregation = _build_module("aggregation")
processing = _build_module("processing")

_HOMEPAGE = "https://github.com/asigalov61/Tegridy-MIDI-Dataset"

# The Tegridy MIDI Dataset zips the original notebooks trained on (CC BY-NC-SA 4.0), each
# pinned to the commit of asigalov61/Tegridy-MIDI-Dataset that holds the version used.
_TEGRIDY_RAW = "https://github.com/asigalov61/Tegridy-MIDI-Dataset/raw/{commit}/{name}-CC-BY-NC-SA.zip"
_TEGRIDY_COMMITS = {
    "Tegridy-Children-Songs": "26f42f781914fd98a0d02cc2766f4a5f764013c3",
    "Endless-Violin-Carousel": "2f2336eabc89718a2f40902751ac818837de4d0b",
    "Endless-Piano-Carousel": "2f2336eabc89718a2f40902751ac818837de4d0b",
    "Tegridy-Piano-Violin": "0fd1b6a6df5a6e033ab5f99d355f7c7bd6c51dc4",
}
TEGRIDY_URLS = {name: _TEGRIDY_RAW.format(commit=c, name=name) for name, c in _TEGRIDY_COMMITS.items()}
MAESTRO_URLS = {
    "maestro-v3.0.0": "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
}
LAKH_URLS = {"lmd_full": "http://hog.ee.columbia.edu/craffel/lmd/lmd_full.tar.gz"}

SOURCES = ("manual", "bach", "tegridy", "maestro", "lakh")
ENCODINGS = ("token", "char")
_SOURCE_DESCRIPTIONS = {
    "manual": "your MIDI folder (--manual_dir), archives inside it included",
    "bach": "the Bach chorales bundled with music21, converted to MIDI at build time",
    "tegridy": "the four Tegridy MIDI Dataset zips Optimus-VIRTUOSO trained on",
    "maestro": "MAESTRO v3.0.0 (MIDI only)",
    "lakh": "the Lakh MIDI Dataset (lmd_full)",
}


@dataclasses.dataclass(eq=False)
class VirtuosoMidiConfig(tfds.core.BuilderConfig):
  """What changes the bytes on disk: the source, the encoding and the limits.

  Attributes:
    source: one of `SOURCES`.
    encoding: "token" or "char".
    encoding_config: the `EncodingConfig` the records are written with (None: defaults).
      Its limits (`max_file_bytes`, `max_notes`, `max_seconds`, `max_tracks`) decide which
      files are skipped as over a limit.
  """

  source: str = "manual"
  encoding: str = "token"
  encoding_config: Any = None

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"config {self.name!r}: source {self.source!r} not in {SOURCES}")
    if self.encoding not in ENCODINGS:
      raise ValueError(f"config {self.name!r}: encoding {self.encoding!r} not in {ENCODINGS}")
    if self.encoding_config is None:
      self.encoding_config = enc.EncodingConfig()

  def settings(self) -> processing.Settings:
    """What the workers need (plain, picklable values)."""
    return processing.Settings(
        encoding=self.encoding,
        encoding_config=self.encoding_config.to_dict(),
    )


CorpusError = processing.CorpusError
# Fewer train songs than this: the build warns that the corpus is too small to learn much.
SMALL_TRAIN_SPLIT = 10


def _under_tfds_cli() -> bool:
  """Whether this process is the `tfds` command line (`tfds build ...`)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name == "tensorflow_datasets.scripts.cli.main":
    return True  # python -m tensorflow_datasets.scripts.cli.main build ...
  argv0 = sys.argv[0] if sys.argv else ""
  return ("tensorflow_datasets.scripts.cli.main" in sys.modules
          and (os.path.basename(argv0) == "tfds" or argv0.endswith(os.path.join("cli", "main.py"))))


class _QuietTfdsFilter:
  """Drops TFDS's warning about the (still empty) folder of a dataset not built yet."""

  def filter(self, record) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


def quiet_tfds_logging() -> None:
  """TFDS/absl log lines at WARNING and above only (no per-shard "Done writing ...", no
  "Generating dataset ..."), without the not-built-yet warning. For command lines (`prepare`,
  and `tfds build` when this module is imported by it); $VIRTUOSO_VERBOSE=1 keeps them all."""
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietTfdsFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietTfdsFilter())


@contextlib.contextmanager
def _no_tfds_progress_bars():
  """TFDS's tqdm bars ("Generating splits...", "Shuffling ...") off while the build runs:
  they write terminal escape codes (`\x1b[A`) into logs and subprocess output. Our own
  progress lines remain. $VIRTUOSO_VERBOSE=1 keeps them."""
  if processing.verbose():
    yield
    return
  tqdm_utils = tfds.core.utils.tqdm_utils
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.disable_progress_bar()
  try:
    yield
  finally:
    if was_active:
      tfds.enable_progress_bar()


class _DatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo whose repr is one line under `tfds build`: the CLI prints `repr(info)` (~150
  lines) after a build, after our report. Elsewhere, or with $VIRTUOSO_VERBOSE=1, the full one."""

  def __repr__(self):
    if not _under_tfds_cli() or processing.verbose():
      return super().__repr__()
    splits = ", ".join(f"{k}={v.num_examples}" for k, v in sorted(self.splits.items()))
    return (f"[virtuoso_midi] {self.full_name} prepared at {self.data_dir}: {splits} "
            "(the full DatasetInfo: dataset_info.json there, or VIRTUOSO_VERBOSE=1)")


@contextlib.contextmanager
def _clean_exit_under_tfds_cli():
  """Under `tfds build`, a CorpusError is one `[virtuoso_midi] ERROR: ...` line and exit
  status 1 (the CLI would print a traceback for it); called from Python, it is raised."""
  try:
    yield
  except CorpusError as e:
    if not _under_tfds_cli():
      raise
    print(f"[virtuoso_midi] ERROR: {e}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


if _under_tfds_cli() and not processing.verbose():
  # `tfds build` imports this module after setting up its INFO logging; only our lines, the
  # report and warnings stay. (What the CLI logs or prints before importing us, e.g.
  # "Loading dataset ... from path", cannot be silenced from here.)
  quiet_tfds_logging()


def _make_config(source: str, encoding: str) -> VirtuosoMidiConfig:
  name = encoding if source == "manual" else f"{source}_{encoding}"
  return VirtuosoMidiConfig(
      name=name,
      description=f"{encoding} encoding of {_SOURCE_DESCRIPTIONS[source]}.",
      source=source,
      encoding=encoding,
  )


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for virtuoso_midi (see the module docstring for configs and features)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: char/token encodings (virtuoso_jax.encoding, 10 ms grid), "
               "manual/bach/tegridy/maestro/lakh sources, content-hash splits, build report.",
  }
  BUILDER_CONFIGS = [_make_config(s, e) for s in SOURCES for e in ENCODINGS]
  DEFAULT_CONFIG_NAME = "bach_token"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Only the `token` and `char` configs read --manual_dir: a folder of your own MIDI files
  (.mid/.midi, searched recursively; .zip/.tar.gz archives in it are read too), e.g.
    tfds build data_pipelines/virtuoso_midi --config=token --manual_dir=/my/midis
  The other configs (bach_*, tegridy_*, maestro_*, lakh_*) need no manual step.
  """

  def __init__(self, *, file_format=None, num_workers: int | None = None, **kwargs):
    """Like any builder; array_record by default. `num_workers`: processes of the Bach
    conversion (default: $VIRTUOSO_BUILD_WORKERS, else all cores). The files are encoded in this
    process unless Beam options are given, whose runner decides the workers."""
    super().__init__(file_format=file_format or "array_record", **kwargs)
    self._num_workers = num_workers or processing.default_num_workers()
    self._listing = processing.Listing()
    self._source_notes: list[str] = []
    self._build_tmp: str | None = None
    self._num_tars = 0
    self._manual_dir_given = False
    self._in_process: processing.InProcessBuild | None = None
    self._beam_build = None  # beam_pipeline.Build of a Beam build.

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    features: dict[str, Any] = {
        "name": tfds.features.Text(),
        "sha256": tfds.features.Text(),
        "num_notes": np.int32,
        "instruments": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "seconds": np.float32,
        "clipped": {f: np.int32 for f in processing.CLIPPED_FIELDS},
    }
    if config.encoding == "token":
      features["ids"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
    else:
      features["text"] = tfds.features.Text()
    info = self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        homepage=_HOMEPAGE,
        # The records' ids are token-codec version 1; version 2 (controls, attributes) is derived
        # from them at training time, never stored.
        metadata=tfds.core.MetadataDict(encoding=config.encoding_config.to_dict(),
                                        token_version=1),
    )
    info.__class__ = _DatasetInfo  # Only __repr__ differs.
    return info

  def _log_download_bytes(self) -> None:
    """TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown size,
    ..." here; our own lines say what is read and prepared (shown with VIRTUOSO_VERBOSE=1)."""
    if processing.verbose():
      super()._log_download_bytes()

  def _log_download_done(self) -> None:
    if processing.verbose():
      super()._log_download_done()

  # ------------------------------------------------------------------------- sources

  def _list_source(self, dl_manager) -> list[processing.Item]:
    """Every candidate MIDI file of the config's source, in a deterministic order (what
    listing leaves out is in `self._listing`)."""
    source = self.builder_config.source
    if source == "manual":
      return self._folder_items(self._manual_root(dl_manager), "", dl_manager)
    if source == "bach":
      return self._bach_items(dl_manager)
    if source in ("tegridy", "maestro"):
      urls = TEGRIDY_URLS if source == "tegridy" else MAESTRO_URLS
      archives = dl_manager.download(urls)
      items = []
      for name in sorted(archives):
        items.extend(self._archive_items(epath.Path(archives[name]), name, dl_manager))
      return items
    if source == "lakh":
      folders = dl_manager.download_and_extract(LAKH_URLS)
      items = []
      for name in sorted(folders):
        items.extend(self._folder_items(epath.Path(folders[name]), name, dl_manager))
      return items
    raise ValueError(f"unknown source {source!r}")

  def _manual_root(self, dl_manager) -> epath.Path:
    """The user's MIDI folder; a missing or empty one is a CorpusError that says what to do
    (TFDS's own check asserts, with instructions written for downloaded datasets)."""
    try:
      return epath.Path(dl_manager.manual_dir)
    except AssertionError:
      given = getattr(dl_manager, "_manual_dir", None)  # What TFDS was given, for the message.
      usage = (f"tfds build data_pipelines/virtuoso_midi --config={self.builder_config.name} "
               "--manual_dir=/path/to/your/midis")
      if not given or not self._manual_dir_given:
        default = f" (none in the default {given})" if given else ""
        raise CorpusError(f"config {self.builder_config.name} reads your MIDI folder{default}; "
                          f"pass it with --manual_dir: {usage}") from None
      if not epath.Path(given).exists():
        raise CorpusError(f"MIDI folder not found: {given} ({usage})") from None
      raise CorpusError(f"MIDI folder is empty: {given} (put .mid/.midi files or .zip/.tar.gz "
                        "archives of them in it)") from None

  def _folder_items(self, root: epath.Path, prefix: str, dl_manager) -> list[processing.Item]:
    if not root.is_dir():
      raise CorpusError(f"MIDI folder not found: {root}")
    items, archives = processing.walk_midi_files(root, prefix, self._listing)
    for archive in archives:
      rel = archive.relative_to(root).as_posix()
      items.extend(self._archive_items(archive, f"{prefix}/{rel}" if prefix else rel, dl_manager))
    return items

  def _archive_items(self, archive: epath.Path, prefix: str, dl_manager) -> list[processing.Item]:
    """The MIDI files of one archive, one level deep (an archive inside it is reported, not
    read): `.zip` members are read in place by the workers; tar members (`.tar.gz`, `.tgz`,
    `.tar`) are extracted one by one into the build's temporary folder. Members that are
    links, point outside the archive or are over `max_file_bytes` are left out and reported."""
    del dl_manager  # Archives are read here, not by TFDS's extractor (it drops members silently).
    try:
      if archive.name.lower().endswith(".zip"):
        return processing.zip_items(archive, prefix, self._listing)
      self._num_tars += 1
      extract_dir = os.path.join(self._build_tmp, "extracted", f"{self._num_tars:05d}")
      return processing.tar_items(archive, prefix, extract_dir,
                                  self.builder_config.encoding_config.max_file_bytes,
                                  self._listing)
    except Exception as e:  # pylint: disable=broad-except
      # zipfile/tarfile raise many types; one bad archive must not stop the build, and it
      # must show up in the report.
      self._listing.skip(prefix, "corrupt", f"unreadable archive: {type(e).__name__}: {e}")
      return []

  def _bach_items(self, dl_manager) -> list[processing.Item]:
    """Converts music21's Bach chorales to MIDI once (cached under the download folder)."""
    import music21  # pylint: disable=g-import-not-at-top

    works = processing.bach_chorale_works()
    out_dir = epath.Path(dl_manager.download_dir) / f"music21-{music21.__version__}-bach-chorales"
    out_dir.mkdir(parents=True, exist_ok=True)
    path_of = {w: out_dir / (w.replace("/", "_") + ".mid") for w in works}
    todo = [w for w in works if not path_of[w].exists()]
    processing.log(f"music21 Bach chorales: {len(works) - len(todo)} of {len(works)} already "
                   f"converted in {out_dir}")
    # A process converts 8 works or more: starting one costs about as much as converting 8.
    workers = max(1, min(self._num_workers, len(todo) // 8))
    failed = processing.convert_bach(todo, os.fspath(out_dir), workers)
    for work, err in sorted(failed.items()):
      self._listing.skip(work, "corrupt", f"music21 conversion failed: {err}")
    self._source_notes.append(
        f"music21 {music21.__version__}: {len(works)} Bach chorales (Riemenschneider), "
        f"{len(works) - len(failed)} converted to MIDI")
    return [processing.Item(name=f"{w}.mid", path=os.fspath(path_of[w]))
            for w in works if w not in failed]

  # ------------------------------------------------------------------------- generation

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Each split's examples: Beam transforms, or generators of what the in-process build
    found (`_download_and_prepare` lists the files and runs that build first)."""
    del dl_manager  # Listed and encoded already.
    if self._beam_build is not None:
      return {split: self._beam_build.split(split) for split in aggregation.SPLIT_NAMES}
    return {split: self._generate_examples(split) for split in self._in_process.splits()}

  def _generate_examples(self, split: str):
    """Yields (sha256, example) of one split, read back from the in-process build's spill
    file (nothing of it is held in memory)."""
    yield from self._in_process.examples(split)

  def check_built_from(self, manual_dir) -> None:
    """Raises CorpusError if this config is prepared from another folder than `manual_dir`
    (None/'' or a config with a fixed source: nothing to check)."""
    if not manual_dir or self.builder_config.source != "manual" or not self.is_prepared():
      return
    # Read from disk, not through self.info: loading the DatasetInfo here would make TFDS
    # refuse the file_format the caller passes on to download_and_prepare.
    stored = tfds.core.MetadataDict()
    stored.load_metadata(self.data_dir)
    built_from = (stored.get("report") or {}).get("manual_dir")
    mismatch = vj_dataset.manual_dir_mismatch(manual_dir, built_from)
    if mismatch:
      raise CorpusError(
          f"virtuoso_midi/{self.builder_config.name} in {self.data_dir} {mismatch}. Use another "
          "--data_dir for this corpus, or rebuild it in place with --overwrite")

  def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
    """TFDS's, but a prepared `token`/`char` dataset built from another folder than the
    `manual_dir` given now is an error instead of a silent "Reusing dataset" (both share one
    name per data_dir). Regenerating (`--overwrite`, a FORCE_REDOWNLOAD or REUSE_CACHE mode)
    rebuilds as usual."""
    self._manual_dir_given = bool(download_config is not None and download_config.manual_dir)
    with _clean_exit_under_tfds_cli(), _no_tfds_progress_bars():
      reuse = download_config is None or tfds.download.GenerateMode(
          download_config.download_mode) == tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
      if reuse and download_config is not None:
        self.check_built_from(download_config.manual_dir)
      super().download_and_prepare(download_dir=download_dir, download_config=download_config,
                                   **kwargs)

  @staticmethod
  def _with_beam(download_config) -> bool:
    """Whether to build with Beam: only when the caller gave a runner or options (`tfds build
    --beam_pipeline_options=...`). Otherwise the build runs in this process at any size: Beam's
    local runners would hold the encoded data in this process (docs/benchmarks.md)."""
    return download_config.beam_runner is not None or download_config.beam_options is not None

  def _download_and_prepare(self, dl_manager, download_config=None):
    """Lists the files, builds the splits (in this process or with Beam), then stores and
    prints the build report."""
    download_config = download_config or tfds.download.DownloadConfig()
    config = self.builder_config
    self._listing = processing.Listing()
    self._source_notes = []
    self._build_tmp = processing.make_build_tmp()  # Extracted tar members, spilled examples.
    self._num_tars = 0
    self._in_process = self._beam_build = None
    work_dir = None
    try:
      items = processing.unique_names(self._list_source(dl_manager))
      left_out = f" ({len(self._listing.skips)} left out while listing)" if self._listing.skips else ""
      processing.log(f"config {config.name}: {len(items)} MIDI files found{left_out}")
      desc = f"encoding ({config.encoding})"
      if not (items and self._with_beam(download_config)):
        self._in_process = processing.build_in_process(items, config.settings(), desc=desc,
                                                       work_dir=self._build_tmp)
        files_report = self._in_process.report
        if not self._in_process.num_examples:
          self._log_report(self._report_dict(files_report, dl_manager))
          found = (f"none of the {len(items)} MIDI files found is usable (see the report above)"
                   if items else "no .mid/.midi file (nor .zip/.tar.gz archive of them) was found")
          raise CorpusError(f"virtuoso_midi/{config.name}: nothing to build: {found}")
        super()._download_and_prepare(dl_manager, download_config)
        rows = [row for _, row in self._in_process.skipped_rows]
      else:
        beam_pipeline = _beam_pipeline_module()
        work_dir = epath.Path(self.data_dir) / "_virtuoso_midi_build"
        work_dir.mkdir(parents=True, exist_ok=True)
        beam_pipeline.write_items(items, work_dir)
        self._beam_build = beam_pipeline.Build(
            work_dir=work_dir, settings=config.settings(), config_name=config.name,
            num_files=len(items))
        processing.log(f"{desc}: {len(items)} files with Apache Beam "
                       f"({_describe_runner(download_config)})")
        start = time.monotonic()
        with _beam_workers_import_this_checkout():
          super()._download_and_prepare(dl_manager, download_config)
        elapsed = time.monotonic() - start
        processing.log(f"{desc}: {len(items)}/{len(items)} files, {len(items) / elapsed:.1f} "
                       f"files/s, {elapsed:.1f} s (parse, encode and write)")
        files_report, rows_file = beam_pipeline.read_results(work_dir)
        rows = _lines(rows_file) if rows_file is not None else ()
      report = self._report_dict(files_report, dl_manager)
      if sum(report["skipped"].values()):
        # Every skipped file (the metadata lists up to MAX_LISTED_PER_REASON per reason). Written
        # into the folder being prepared (TFDS renames it to the final one when we return).
        self._write_skipped_tsv(epath.Path(self.data_dir) / aggregation.SKIPPED_TSV, rows)
        final_dir = epath.Path(self.data_dir).parent / str(self.version)
        report["skipped_list"] = os.fspath(final_dir / aggregation.SKIPPED_TSV)
    finally:
      if self._in_process is not None:
        self._in_process.remove()  # Its spill file: written into the dataset, or failed.
      processing.remove_build_tmp(self._build_tmp)
      if work_dir is not None and work_dir.exists():
        work_dir.rmtree()
      self._in_process = None
    self.info.metadata["report"] = report
    self._log_report(report)
    train = report["splits"].get("train", 0)
    if train < SMALL_TRAIN_SPLIT:
      processing.log(
          f"WARNING: only {train} of {report['examples']} songs landed in train (splits are "
          "90/5/5 by content hash, so a corpus this small trains on very little); add more "
          "MIDI files for a useful model")

  def _report_dict(self, files_report: aggregation.Report, dl_manager) -> dict[str, Any]:
    """The stored report: what listing left out (first), then the files read."""
    report = aggregation.Report()
    for n, (name, reason, detail) in enumerate(self._listing.skips):
      report.skip((0, n), reason, name, detail)
    report.merge(files_report)
    out = report.as_dict(encoding=self.builder_config.encoding,
                         source_notes=self._source_notes + self._listing.notes)
    if self.builder_config.source == "manual":
      # Which folder this build read: training checks it against its data.manual_dir.
      out["manual_dir"] = paths.absolute(dl_manager.manual_dir)  # Local or gs://...
    return out

  def _write_skipped_tsv(self, path: epath.Path, rows) -> None:
    """skipped.tsv: a header, what listing left out, then every skipped file's row."""
    with path.open("w") as f:
      f.write(aggregation.SKIPPED_TSV_HEADER + "\n")
      for name, reason, detail in self._listing.skips:
        f.write(aggregation.tsv_row(reason, name, detail) + "\n")
      for row in rows:
        f.write(row + "\n")

  def _log_report(self, report: dict[str, Any]) -> None:
    if processing.verbose():
      print(flush=True)  # Off the end of TFDS's progress bars.
    processing.log(f"virtuoso_midi/{self.builder_config.name} "
                   + aggregation.format_report(report))


def _beam_pipeline_module():
  """beam_pipeline.py, imported only for a Beam build (it imports apache_beam)."""
  return _build_module("beam_pipeline")


def _lines(path: epath.Path):
  """The lines of a text file, streamed."""
  with path.open("r") as f:
    for line in f:
      yield line.rstrip("\n")


def _describe_runner(download_config) -> str:
  if download_config.beam_runner is not None:
    return f"runner {download_config.beam_runner!r}"
  options = download_config.beam_options.get_all_options(drop_default=True)
  shown = [f"{k}={v}" for k, v in sorted(options.items()) if k != "pipeline_type_check"]
  return ", ".join(shown) or "default options"


@contextlib.contextmanager
def _beam_workers_import_this_checkout():
  """While a Beam pipeline runs: $PYTHONPATH starts with the folders this builder's modules
  and virtuoso_jax were imported from, so the worker processes a local runner starts (they
  inherit the environment, not sys.path) unpickle our DoFns by the names the driver used
  (`tfds build` imports this folder as `virtuoso_midi`). Remote runners (Dataflow, Flink,
  Spark) need the code installed on their workers instead (README: `--setup_file`)."""
  roots = [processing.module_root(processing.__name__), processing.module_root(enc.__name__)]
  old = os.environ.get("PYTHONPATH")
  os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + ([old] if old else [])))
  try:
    yield
  finally:
    if old is None:
      os.environ.pop("PYTHONPATH", None)
    else:
      os.environ["PYTHONPATH"] = old
