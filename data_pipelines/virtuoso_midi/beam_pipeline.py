"""The virtuoso_midi build as an Apache Beam pipeline: any runner (Direct, Dataflow, Flink, Spark).

The builder lists the files (its driver holds that list and nothing that grows with the data),
writes it to `ITEMS_FILE` in a work folder every worker can read (inside the data dir being
prepared), and hands TFDS one `SplitOf` transform per split. The first one applied builds the
whole graph; the others take their split's output of it:

  ITEMS_FILE -> Reshuffle -> ParseAndEncode: `processing.process_item` in a `FileSandbox`
      per DoFn instance -> (index, Outcome, example)
  with a content hash -> CombinePerKey(FirstCopy) by sha256: the first copy in listing order
      is kept, the others become duplicate events (one example per hash is ever held)
  good first copies -> CombineGlobally(SplitCuts) -> side input of AssignSplit
  AssignSplit -> Partition(train, validation, test) -> (sha256, example) -> TFDS's writer
  events (each file: written or skipped; each duplicate) -> CombineGlobally(Report) ->
      `REPORT_FILE`; every skip -> `SKIPPED_ROWS` (WriteToText)

The builder reads `REPORT_FILE` and `SKIPPED_ROWS` back once the pipeline has run, adds what
listing left out, and stores the report in the DatasetInfo (as the in-process path does with
the same `aggregation` classes). This module imports apache_beam; only the Beam path imports it.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Sequence

import apache_beam as beam
from etils import epath

try:  # `tfds build` imports this package as `virtuoso_midi`.
  from . import aggregation
  from . import processing
except ImportError:  # pragma: no cover - imported as a top-level module.
  import aggregation  # type: ignore[no-redef]
  import processing  # type: ignore[no-redef]

ITEMS_FILE = "items.jsonl"
REPORT_FILE = "report.pkl"
SKIPPED_ROWS = "skipped_rows.tsv"
# TFDS's Beam writer refuses an empty split; the cuts give every split a file from 3 files on.
MIN_FILES = 3


def write_items(items: Sequence[processing.Item], work_dir: epath.Path) -> None:
  """The file list, one JSON object a line ({"index", "name", "path", "member"})."""
  with (work_dir / ITEMS_FILE).open("w") as f:
    for index, item in enumerate(items):
      f.write(json.dumps({"index": index, "name": item.name, "path": item.path,
                          "member": item.member}) + "\n")


def _item(line: str) -> tuple[int, processing.Item]:
  d = json.loads(line)
  return d["index"], processing.Item(name=d["name"], path=d["path"], member=d["member"])


class _ParseAndEncode(beam.DoFn):
  """(index, Item) -> (index, Outcome, example or None), one file at a time in this DoFn
  instance's `FileSandbox` (see there why a child process)."""

  def __init__(self, settings: processing.Settings):
    super().__init__()
    self._settings = settings
    self._sandbox = None

  def setup(self):
    self._sandbox = processing.FileSandbox(self._settings)

  def process(self, indexed):
    index, item = indexed
    outcome, example = self._sandbox.process(item)
    yield index, outcome, example

  def teardown(self):
    if self._sandbox is not None:
      self._sandbox.close()


class _Accumulate(beam.CombineFn):
  """A Beam CombineFn around an `aggregation` accumulator class (`add`, `merge`); the output
  is the accumulator itself."""

  def __init__(self, accumulator_class):
    super().__init__()
    self._make = accumulator_class

  def create_accumulator(self):
    return self._make()

  def add_input(self, accumulator, element):
    return accumulator.add(element)

  def merge_accumulators(self, accumulators):
    accumulators = iter(accumulators)
    merged = next(accumulators)
    for other in accumulators:
      merged.merge(other)
    return merged

  def extract_output(self, accumulator):
    return accumulator


def too_few_files_error(config_name: str, num_good: int, num_files: int) -> str:
  if num_good == 0:
    return (f"virtuoso_midi/{config_name}: nothing to build: none of the {num_files} MIDI files "
            "found is usable")
  return (f"virtuoso_midi/{config_name}: only {num_good} usable distinct MIDI file(s); a Beam "
          f"build writes train, validation and test and needs at least {MIN_FILES}: build a "
          "corpus this small without Beam (no --beam_pipeline_options)")


def _assign(record, cuts: aggregation.Cuts, config_name: str, num_files: int):
  """(index, Outcome, example) -> (split or None, index, Outcome, example)."""
  if cuts.num_files < MIN_FILES:
    raise processing.CorpusError(too_few_files_error(config_name, cuts.num_files, num_files))
  index, outcome, example = record
  split = cuts.split_of(outcome.sha256) if outcome.status == "ok" else None
  return split, index, outcome, example


def _skip_rows(event) -> list[str]:
  skipped = aggregation.skip_of(event)
  return [] if skipped is None else [aggregation.tsv_row(*skipped[1:])]


def _write_pickle(value: Any, path: str) -> None:
  epath.Path(path).write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def read_results(work_dir: epath.Path) -> tuple[aggregation.Report, epath.Path | None]:
  """After the pipeline ran: the report of the files read, and the skipped rows' file."""
  report = pickle.loads((work_dir / REPORT_FILE).read_bytes())
  rows = work_dir / SKIPPED_ROWS
  return report, (rows if rows.exists() else None)


def build(pipeline: beam.Pipeline, *, work_dir: epath.Path, settings: processing.Settings,
          config_name: str, num_files: int) -> dict[str, beam.PCollection]:
  """Adds the build to `pipeline`; returns {split: PCollection of (sha256, example)}."""
  records = (
      pipeline
      | "ReadFileList" >> beam.io.ReadFromText(os.fspath(work_dir / ITEMS_FILE))
      | "ToItems" >> beam.Map(_item)
      | "Spread" >> beam.Reshuffle()
      | "ParseAndEncode" >> beam.ParDo(_ParseAndEncode(settings)))
  hashed, unread = records | "ByHash" >> beam.Partition(lambda r, _: 0 if r[1].sha256 else 1, 2)
  copies = (
      hashed
      | "KeyByHash" >> beam.Map(lambda r: (r[1].sha256, r))
      | "FirstCopy" >> beam.CombinePerKey(_Accumulate(aggregation.FirstCopy))
      | "Copies" >> beam.Values())
  unique = (copies | "Firsts" >> beam.Map(lambda c: c.first), unread) | "Unique" >> beam.Flatten()
  cuts = (
      unique
      | "Good" >> beam.Filter(lambda r: r[1].status == "ok")
      | "Hashes" >> beam.Map(lambda r: r[1].sha256)
      | "SplitCuts" >> beam.CombineGlobally(_Accumulate(aggregation.SplitCuts))
      | "Cuts" >> beam.Map(lambda acc: acc.cuts()))
  assigned = unique | "AssignSplit" >> beam.Map(
      _assign, cuts=beam.pvalue.AsSingleton(cuts), config_name=config_name, num_files=num_files)
  events = (
      assigned | "FileEvents" >> beam.Map(lambda r: aggregation.file_event((1, r[1]), r[2], r[0])),
      copies | "DuplicateEvents" >> beam.FlatMap(aggregation.duplicate_events),
  ) | "Events" >> beam.Flatten()
  _ = (events
       | "Report" >> beam.CombineGlobally(_Accumulate(aggregation.Report))
       | "WriteReport" >> beam.Map(_write_pickle, path=os.fspath(work_dir / REPORT_FILE)))
  _ = (events
       | "SkipRows" >> beam.FlatMap(_skip_rows)
       | "WriteSkipRows" >> beam.io.WriteToText(os.fspath(work_dir / SKIPPED_ROWS), num_shards=1,
                                                shard_name_template=""))
  by_split = (
      assigned
      | "Written" >> beam.Filter(lambda r: r[0] is not None)
      | "BySplit" >> beam.Partition(lambda r, _: aggregation.SPLIT_NAMES.index(r[0]),
                                    len(aggregation.SPLIT_NAMES)))
  return {name: by_split[i] | f"{name}Examples" >> beam.Map(lambda r: (r[2].sha256, r[3]))
          for i, name in enumerate(aggregation.SPLIT_NAMES)}


class Build:
  """The graph of one build, added to the pipeline by the first `SplitOf` expanded."""

  def __init__(self, **kwargs):
    self._kwargs = kwargs
    self._outputs: dict[str, beam.PCollection] | None = None

  def split(self, name: str) -> beam.PTransform:
    return SplitOf(self, name)

  def outputs(self, pipeline: beam.Pipeline) -> dict[str, beam.PCollection]:
    if self._outputs is None:
      self._outputs = build(pipeline, **self._kwargs)
    return self._outputs


class SplitOf(beam.PTransform):
  """What TFDS's `_split_generators` returns per split: that split's (key, example)s."""

  def __init__(self, shared: Build, split: str):
    super().__init__()
    self._shared = shared
    self._split = split

  def expand(self, pbegin):
    return self._shared.outputs(pbegin.pipeline)[self._split]
