"""The TF-free work of the `virtuoso_midi` build: read, hash, parse, encode, split, report.

Everything here runs without TensorFlow and without JAX, in the builder's process or in
`multiprocessing` workers started with the `spawn` method (so a parent that imported TF or
JAX never forks its threads into a worker). The builder
(`virtuoso_midi_dataset_builder.py`) only lists the source files and hands them here.

The build is two passes over the unique files:

1. `process_chunk` (in parallel): read a file, hash its bytes, parse it into notes
   (`virtuoso_jax.encoding.midi_to_notes`, which retries a file the fast parser rejects with
   a tolerant one), check the limits and encode it. The encoded example is spilled to a
   pickle in a temporary folder; only a small `Outcome` travels back to the parent.
2. `assign_splits` then puts each good, unique file in `train`/`validation`/`test` by its
   content hash, and the builder's `_generate_examples` streams the spilled examples of one
   split back out. A file is parsed once; memory stays flat on large corpora.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import importlib
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
import types
import zipfile
from typing import Any, Callable, Iterator, Sequence

from etils import epath
import numpy as np

MIDI_SUFFIXES = (".mid", ".midi")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Split name and its share of the content-hash space, in hash order.
SPLITS = (("train", 0.90), ("validation", 0.05), ("test", 0.05))
# Reasons a file is left out; every one is counted in the build report.
SKIP_REASONS = ("corrupt", "empty", "over_limit", "duplicate")
# At most this many file names are listed per skip reason in the stored report.
MAX_LISTED_PER_REASON = 200


def log(message: str) -> None:
  """Prints one progress line of the build (flushed: the trainer shows it live)."""
  print(f"[virtuoso_midi] {message}", flush=True)


class CorpusError(ValueError):
  """A corpus that cannot be built as asked (no or an empty MIDI folder, no usable file, a
  prepared dataset of another folder); the message names the folder and what to do."""


def same_folder(a, b) -> bool:
  """Whether two folder paths name the same folder (`~` and symlinks resolved)."""
  real = lambda p: os.path.realpath(os.path.expanduser(os.fspath(p)))
  return real(a) == real(b)


# --------------------------------------------------------------------------- items


@dataclasses.dataclass(frozen=True, order=True)
class Item:
  """One MIDI file of a source.

  Attributes:
    name: its source-relative name, '/'-separated (e.g. `songs.zip/folk/a.mid`); stored in
      the record's `name` feature and used in the report.
    path: the file on disk, or the `.zip` archive holding it.
    member: the member inside the `.zip` archive; '' for a plain file.
  """

  name: str
  path: str
  member: str = ""


def read_item(item: Item) -> bytes:
  """Returns the raw bytes of one item (a plain file or a `.zip` member)."""
  if not item.member:
    return epath.Path(item.path).read_bytes()
  with epath.Path(item.path).open("rb") as f, zipfile.ZipFile(f) as archive:
    return archive.read(item.member)


def is_midi_name(name: str) -> bool:
  """Whether a file name has a MIDI suffix (case-insensitive)."""
  return name.lower().endswith(MIDI_SUFFIXES)


def zip_items(archive_path: epath.Path, prefix: str) -> list[Item]:
  """The MIDI members of a `.zip` archive, named `<prefix>/<member>`.

  Raises:
    zipfile.BadZipFile: the archive cannot be read (the builder reports it).
  """
  with archive_path.open("rb") as f, zipfile.ZipFile(f) as archive:
    members = [i.filename for i in archive.infolist() if not i.is_dir()]
  return [
      Item(name=f"{prefix}/{m}", path=os.fspath(archive_path), member=m)
      for m in members
      if is_midi_name(m) and not _is_junk(m)
  ]


def _is_junk(name: str) -> bool:
  """macOS resource forks (`__MACOSX/`, `._x.mid`) look like MIDI files but are not."""
  parts = name.split("/")
  return "__MACOSX" in parts or parts[-1].startswith("._")


def _walk_files(root: epath.Path) -> list[epath.Path]:
  """Every file under `root`, recursively, sorted (epath has no recursive glob on GCS)."""
  files, stack = [], [root]
  while stack:
    folder = stack.pop()
    for child in folder.iterdir():
      (stack if child.is_dir() else files).append(child)
  return sorted(files)


def walk_midi_files(root: epath.Path, prefix: str = "") -> tuple[list[Item], list[epath.Path]]:
  """Lists the MIDI files and the archives under `root`, recursively, in sorted order.

  Args:
    root: a folder (epath: local or any filesystem epath supports).
    prefix: prepended (with '/') to each source-relative name.

  Returns:
    (items, archives): the MIDI files as `Item`s, and the archive files found.
  """
  items, archives = [], []
  for path in _walk_files(root):
    rel = path.relative_to(root).as_posix()
    if _is_junk(rel):
      continue
    name = f"{prefix}/{rel}" if prefix else rel
    if is_midi_name(rel):
      items.append(Item(name=name, path=os.fspath(path)))
    elif rel.lower().endswith(ARCHIVE_SUFFIXES):
      archives.append(path)
  return items, archives


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a worker needs to turn a file into an example (picklable, JSON-safe).

  Attributes:
    encoding: "token" or "char".
    encoding_config: `EncodingConfig.to_dict()`; its limits (`max_file_bytes`, `max_notes`,
      `max_seconds`, `max_tracks`) decide what is skipped as over a limit.
  """

  encoding: str
  encoding_config: dict[str, Any]


@dataclasses.dataclass
class Outcome:
  """What happened to one file (small: this is what workers send back).

  Attributes:
    name: the item's source-relative name.
    sha256: hex digest of the file's bytes ('' if it could not be read).
    status: "ok" or one of `SKIP_REASONS`.
    detail: why it was skipped (the parser's error, the limit), '' when ok.
    recovered: parsed only by the tolerant fallback parser.
    num_notes: notes in the example.
    length: tokens (token configs) or characters (char configs) of the example.
    seconds: duration of the song.
    clipped: notes with a clipped field, summed over fields.
    spill: (chunk file, index) of the spilled example; None when skipped.
  """

  name: str
  sha256: str = ""
  status: str = "ok"
  detail: str = ""
  recovered: bool = False
  num_notes: int = 0
  length: int = 0
  seconds: float = 0.0
  clipped: int = 0
  spill: tuple[str, int] | None = None


# --------------------------------------------------------------------------- encoding glue

_CODECS: dict[tuple[str, str], Any] = {}


def _encoding_module():
  """`virtuoso_jax.encoding`, imported lazily (it pulls symusic/mido; never jax)."""
  return importlib.import_module("virtuoso_jax.encoding")


def get_codec(encoding: str, encoding_config: dict[str, Any]):
  """The (cached) `TokenCodec` or `CharCodec` for a settings' encoding."""
  key = (encoding, repr(sorted(encoding_config.items())))
  if key not in _CODECS:
    enc = _encoding_module()
    config = enc.EncodingConfig.from_dict(encoding_config)
    if encoding == "token":
      _CODECS[key] = enc.TokenCodec(config)
    elif encoding == "char":
      _CODECS[key] = enc.CharCodec(config)
    else:
      raise ValueError(f"unknown encoding {encoding!r}: expected 'token' or 'char'")
  return _CODECS[key]


def _limit_error(error) -> bool:
  """Whether a `MidiError` is a limit (max_file_bytes, max_notes, ...) rather than bad data."""
  kind = getattr(error, "kind", None)
  if kind is not None:
    return kind == "over_limit"
  # The encoding contract has no machine-readable kind yet; its limit messages all name the
  # limit as "<limit>=<value>" ("over the limit max_file_bytes=...", "more than max_notes=...").
  return any(f"{k}=" in str(error) for k in ("max_file_bytes", "max_notes", "max_seconds", "max_tracks"))


def process_item(item: Item, settings: Settings) -> tuple[Outcome, dict[str, Any] | None]:
  """Turns one file into an example, or into the reason it was skipped. Never raises for bad
  input: a bad file must not stop a build.

  Returns:
    (outcome, example): the example holds the feature values (None when skipped).
  """
  out = Outcome(name=item.name)
  try:
    data = read_item(item)
  except (OSError, zipfile.BadZipFile, KeyError, EOFError) as e:
    out.status, out.detail = "corrupt", f"cannot read: {e}"
    return out, None
  out.sha256 = hashlib.sha256(data).hexdigest()
  if not data:
    out.status, out.detail = "empty", "0-byte file"
    return out, None
  enc = _encoding_module()
  config = enc.EncodingConfig.from_dict(settings.encoding_config)
  try:
    # allow_empty: a file without notes is told apart from a corrupt one here.
    notes, info = enc.midi_to_notes(data, dataclasses.replace(config, allow_empty=True),
                                    return_info=True)
  except enc.MidiError as e:
    out.status = "over_limit" if _limit_error(e) else "corrupt"
    out.detail = e.reason
    return out, None
  out.recovered = info.recovered
  if not len(notes):
    out.status = "empty"
    out.detail = "no notes" + (f" (tolerant parser: {info.recover_reason})" if info.recovered else "")
    return out, None
  example = encode_example(item.name, out.sha256, notes, settings)
  out.num_notes = len(notes)
  out.length = len(example["ids"]) if "ids" in example else len(example["text"])
  out.seconds = float(example["seconds"])
  out.clipped = int(sum(example["clipped"].values()))
  return out, example


def encode_example(name: str, sha256: str, notes, settings: Settings) -> dict[str, Any]:
  """The feature dict of one song (see the builder's `_info`)."""
  codec = get_codec(settings.encoding, settings.encoding_config)
  grid_ms = float(settings.encoding_config["grid_ms"])
  example: dict[str, Any] = {
      "name": name,
      "sha256": sha256,
      "num_notes": np.int32(len(notes)),
      "instruments": np.asarray(notes.instruments(), dtype=np.int32),
      "seconds": np.float32(notes.end * grid_ms / 1000.0),
  }
  if settings.encoding == "token":
    ids, report = codec.encode(notes, return_report=True)
    example["ids"] = np.asarray(ids, dtype=np.int32)
  else:
    example["text"], report = codec.encode(notes, name=name, return_report=True)
  example["clipped"] = clipped_counts(report)
  return example


# Fields the codecs may clip; the record's `clipped` feature has one count per field.
CLIPPED_FIELDS = ("duration",)


def clipped_counts(encode_report: dict[str, Any]) -> dict[str, np.int32]:
  """Per-field counts of notes the encoding clipped, from a codec's encode report.

  Raises:
    KeyError: the codec reports a clipped field the dataset has no feature for (the feature
      spec must grow, with a VERSION bump, rather than drop the count).
  """
  reported = {k[: -len("_clipped")] for k in encode_report if k.endswith("_clipped")}
  unknown = sorted(reported - set(CLIPPED_FIELDS))
  if unknown:
    raise KeyError(f"codec reports clipped fields {unknown} that virtuoso_midi has no feature for")
  return {f: np.int32(encode_report.get(f"{f}_clipped", 0)) for f in CLIPPED_FIELDS}


def process_chunk(task: tuple[str, Sequence[Item], Settings, str]) -> list[Outcome]:
  """Worker entry point: processes a chunk of items and spills the good examples.

  Args:
    task: (chunk id, items, settings, spill folder); the id names the spill file.

  Returns:
    One `Outcome` per item, in order.
  """
  index, items, settings, spill_dir = task
  outcomes, examples = [], []
  chunk_file = os.path.join(spill_dir, f"chunk-{index}.pkl")
  for item in items:
    outcome, example = process_item(item, settings)
    if example is not None:
      outcome.spill = (chunk_file, len(examples))
      examples.append(example)
    outcomes.append(outcome)
  if examples:
    with open(chunk_file, "wb") as f:
      pickle.dump(examples, f, protocol=pickle.HIGHEST_PROTOCOL)
  return outcomes


def isolate_chunk(task: tuple[str, Sequence[Item], Settings, str]) -> list[tuple]:
  """Splits a `process_chunk` task into one task per item (after a worker crash)."""
  index, items, settings, spill_dir = task
  return [(f"{index}-{j:05d}", [item], settings, spill_dir) for j, item in enumerate(items)]


def crashed_chunk(task: tuple[str, Sequence[Item], Settings, str], reason: str) -> list[Outcome]:
  """The outcome of an item that killed its worker process: corrupt."""
  return [Outcome(name=item.name, status="corrupt", detail=reason) for item in task[1]]


def make_spill_dir() -> str:
  """A fresh folder for spilled examples, under $VIRTUOSO_BUILD_TMP or the system temp."""
  return tempfile.mkdtemp(prefix="virtuoso_midi_", dir=os.environ.get("VIRTUOSO_BUILD_TMP") or None)


def remove_spill_dir(path: str) -> None:
  """Deletes a folder made by `make_spill_dir`."""
  shutil.rmtree(path, ignore_errors=True)


def load_spilled(chunk_file: str) -> list[dict[str, Any]]:
  """The examples a `process_chunk` call spilled."""
  with open(chunk_file, "rb") as f:
    return pickle.load(f)


# --------------------------------------------------------------------------- parallel map


def env_num_workers() -> int | None:
  """$VIRTUOSO_BUILD_WORKERS as an int, None when unset."""
  env = os.environ.get("VIRTUOSO_BUILD_WORKERS", "")
  if not env:
    return None
  try:
    return max(1, int(env))
  except ValueError as e:
    raise ValueError(f"VIRTUOSO_BUILD_WORKERS must be an integer, got {env!r}") from e


def default_num_workers() -> int:
  """$VIRTUOSO_BUILD_WORKERS, else every core this process may use."""
  env = env_num_workers()
  if env:
    return env
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # Not Linux.
    return max(1, os.cpu_count() or 1)


def _module_root(module_name: str) -> str:
  """The sys.path entry from which `module_name` is importable."""
  root = os.path.dirname(os.path.abspath(sys.modules[module_name].__file__))
  if os.path.basename(sys.modules[module_name].__file__).startswith("__init__."):
    root = os.path.dirname(root)
  for _ in range(module_name.count(".")):
    root = os.path.dirname(root)
  return root


class _Workers:
  """A `spawn` process pool whose broken state (a worker died) is reported, not hung on.

  `spawn`: the parent may hold TF/JAX threads; a fresh interpreter imports only the TF-free
  module of the mapped function. The child must find that module by the name the parent
  imported it under (`tfds build` puts the dataset folder on sys.path only briefly), and must
  not re-import the parent's __main__ (spawn does, to resolve pickled __main__ references;
  ours never are): under `tfds build` that is the tfds CLI, which imports TensorFlow (~10 s and
  ~1 GB per worker). So while tasks are submitted (when workers start), the module's root is
  on sys.path and __main__ is a bare module.
  """

  def __init__(self, fn: Callable[[Any], list[Any]], num_workers: int):
    self.fn = fn
    self.executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"))

  def submit(self, tasks: Sequence[Any]) -> list[concurrent.futures.Future]:
    root = _module_root(self.fn.__module__)
    added = root not in sys.path
    if added:
      sys.path.insert(0, root)
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
      return [self.executor.submit(self.fn, t) for t in tasks]
    finally:
      sys.modules["__main__"] = main
      if added:
        sys.path.remove(root)

  def close(self) -> None:
    self.executor.shutdown(wait=True, cancel_futures=True)


def _run_alone(fn: Callable[[Any], list[Any]], task: Any) -> list[Any]:
  """Runs one task in a fresh one-process pool (raises BrokenProcessPool if it kills it)."""
  workers = _Workers(fn, 1)
  try:
    return workers.submit([task])[0].result()
  finally:
    workers.close()


def _rerun_crashed(fn, task, isolate, crashed) -> list[Any]:
  """A task whose pool broke: rerun it alone; if it breaks again, rerun each of its parts
  (`isolate(task)`) alone, replacing a part that still kills its process by `crashed(part,
  reason)`. Without `isolate`, a task that kills its process twice is an error."""
  try:
    return _run_alone(fn, task)
  except concurrent.futures.process.BrokenProcessPool as e:
    if isolate is None:
      raise RuntimeError(f"a build worker died twice on the same task: {task!r}") from e
  results = []
  for part in isolate(task):
    try:
      results.extend(_run_alone(fn, part))
    except concurrent.futures.process.BrokenProcessPool as e:
      results.extend(crashed(part, f"the parser process died on it ({e})"))
  return results


def parallel_map(
    fn: Callable[[Any], list[Any]],
    tasks: Sequence[Any],
    *,
    num_workers: int,
    total: int,
    desc: str,
    isolate: Callable[[Any], list[Any]] | None = None,
    crashed: Callable[[Any, str], list[Any]] | None = None,
) -> Iterator[list[Any]]:
  """Maps `fn` over `tasks` (chunks of files; `fn` returns one result per file) in order, on
  `num_workers` spawned processes, printing progress lines (files done, files/s, ETA).

  `fn` must be a module-level function of a module importable by name. With one worker (or one
  task) it runs in this process. `num_workers` is taken as given; see `auto_workers`.

  A worker that dies (a segfault in a C++ parser, the OOM killer) does not stop the map: the
  tasks in flight are rerun, the culprit alone, then split by `isolate(task)` into parts run
  one by one; a part that still kills its process becomes `crashed(part, reason)`.
  """
  start = last = time.monotonic()
  done = 0

  def report(final: bool = False):
    elapsed = max(time.monotonic() - start, 1e-9)
    rate = done / elapsed
    eta = (total - done) / rate if rate > 0 else float("inf")
    tail = f"{elapsed:.1f} s" if final else f"ETA {eta:.0f} s"
    log(f"{desc}: {done}/{total} files, {rate:.1f} files/s, {tail}")

  num_workers = max(1, min(num_workers, len(tasks)))
  log(f"{desc}: {total} files on {num_workers} worker process(es)")

  def results() -> Iterator[list[Any]]:
    if num_workers == 1:
      yield from map(fn, tasks)
      return
    workers = _Workers(fn, num_workers)
    futures = workers.submit(tasks)
    try:
      i = 0
      while i < len(tasks):
        try:
          result = futures[i].result()
        except concurrent.futures.process.BrokenProcessPool:
          workers.close()
          log(f"{desc}: a worker process died; rerunning task {i} alone")
          result = _rerun_crashed(fn, tasks[i], isolate, crashed)
          workers = _Workers(fn, num_workers)
          futures[i + 1:] = workers.submit(tasks[i + 1:])
        yield result
        i += 1
    finally:
      workers.close()

  for result in results():
    done += len(result)
    now = time.monotonic()
    if now - last >= 5.0:
      last = now
      report()
    yield result
  report(final=True)


def auto_workers(num_files: int, files_per_worker: int) -> int:
  """All cores, but no more workers than `num_files / files_per_worker`: starting a spawned
  worker costs about half a second, more than parsing a few hundred MIDI files."""
  return max(1, min(default_num_workers(), num_files // max(1, files_per_worker)))


def chunked(items: Sequence[Any], num_workers: int, max_chunk: int = 64) -> list[list[Any]]:
  """Splits items into chunks: about 8 per worker (load balance), at most `max_chunk` long
  (progress granularity and spill size)."""
  if not items:
    return []
  size = max(1, min(max_chunk, -(-len(items) // (8 * max(1, num_workers)))))
  return [list(items[i:i + size]) for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- splits


def hash_fraction(sha256: str) -> float:
  """Where a content hash falls in [0, 1): the first 64 bits of the digest."""
  return int(sha256[:16], 16) / 2.0**64


def assign_splits(sha256s: Sequence[str]) -> dict[str, str]:
  """Assigns unique content hashes to `train`/`validation`/`test` (about 90/5/5).

  Hashes are sorted by `hash_fraction`; the cut points sit at 90 % and 95 % of the hash
  space. On a corpus too small for that to give every split a file (fewer than ~60 files),
  the cuts move the least needed so no split is empty; with fewer than 3 files, all go to
  `train`. A file's split therefore depends on its content only (and, for tiny corpora, on
  the other files), never on names or listing order.

  Returns:
    {sha256: split name}.
  """
  order = sorted(set(sha256s), key=lambda s: (hash_fraction(s), s))
  n = len(order)
  fractions = [hash_fraction(s) for s in order]
  a = sum(f < SPLITS[0][1] for f in fractions)
  b = sum(f < SPLITS[0][1] + SPLITS[1][1] for f in fractions)
  if n < 3:
    a = b = n
  else:
    b = min(max(b, 2), n - 1)
    a = min(max(a, 1), b - 1)
  result = {}
  for i, s in enumerate(order):
    result[s] = "train" if i < a else ("validation" if i < b else "test")
  return result


# --------------------------------------------------------------------------- report


class ReportBuilder:
  """Accumulates the build report from the outcomes of every file."""

  def __init__(self):
    self.files_read = 0
    self.recovered = 0
    self.skipped = collections.Counter({r: 0 for r in SKIP_REASONS})
    self.skipped_files: dict[str, list[dict[str, str]]] = {r: [] for r in SKIP_REASONS}
    self.notes = 0
    self.length = 0
    self.seconds = 0.0
    self.clipped = 0
    self.splits: dict[str, int] = {}
    self.source_notes: list[str] = []

  def skip(self, name: str, reason: str, detail: str) -> None:
    """Counts one skipped file (and lists it, up to `MAX_LISTED_PER_REASON`)."""
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r} for {name}")
    self.skipped[reason] += 1
    if len(self.skipped_files[reason]) < MAX_LISTED_PER_REASON:
      self.skipped_files[reason].append({"name": name, "detail": detail})

  def add(self, outcome: Outcome) -> None:
    """Counts one processed file (duplicates are counted by the caller via `skip`)."""
    self.files_read += 1
    if outcome.status != "ok":
      self.skip(outcome.name, outcome.status, outcome.detail)
      return
    self.recovered += int(outcome.recovered)

  def add_example(self, outcome: Outcome, split: str) -> None:
    """Counts one written example."""
    self.notes += outcome.num_notes
    self.length += outcome.length
    self.seconds += outcome.seconds
    self.clipped += outcome.clipped
    self.splits[split] = self.splits.get(split, 0) + 1

  def as_dict(self, *, encoding: str) -> dict[str, Any]:
    """The JSON-safe report stored in `DatasetInfo.metadata["report"]`."""
    return {
        "files_read": self.files_read,
        "recovered_by_tolerant_parser": self.recovered,
        "skipped": dict(self.skipped),
        "skipped_files": {r: list(v) for r, v in self.skipped_files.items()},
        "examples": sum(self.splits.values()),
        "notes": self.notes,
        ("tokens" if encoding == "token" else "characters"): self.length,
        "seconds": round(self.seconds, 3),
        "clipped_notes": self.clipped,
        "splits": dict(sorted(self.splits.items())),
        "source_notes": list(self.source_notes),
    }


def format_report(report: dict[str, Any]) -> str:
  """The human-readable build report printed at the end of a build."""
  unit = "tokens" if "tokens" in report else "characters"
  lines = [
      "build report",
      f"  files read:        {report['files_read']}"
      f" (recovered by the tolerant parser: {report['recovered_by_tolerant_parser']})",
      f"  examples written:  {report['examples']}  "
      + "  ".join(f"{k}={v}" for k, v in report["splits"].items()),
      f"  notes:             {report['notes']}",
      f"  {unit + ':':<19}{report[unit]}",
      f"  music:             {report['seconds'] / 3600:.2f} h",
      f"  clipped notes:     {report['clipped_notes']}",
      "  skipped:           "
      + ", ".join(f"{k}={v}" for k, v in report["skipped"].items()),
  ]
  for reason, files in report["skipped_files"].items():
    for entry in files[:10]:
      lines.append(f"    {reason}: {entry['name']}: {entry['detail']}")
    if report["skipped"][reason] > 10:
      lines.append(f"    {reason}: ... {report['skipped'][reason] - 10} more (see metadata)")
  lines.extend(f"  note: {n}" for n in report["source_notes"])
  return "\n".join(lines)


# --------------------------------------------------------------------------- Bach (music21)


def bach_chorale_works() -> list[str]:
  """The Bach chorales bundled with music21 (Riemenschneider numbering; unique works)."""
  from music21.corpus import chorales  # pylint: disable=g-import-not-at-top

  works = chorales.Iterator(numberingSystem="riemenschneider", returnType="filename")
  return sorted(set(works))


def isolate_bach(task: tuple[Sequence[str], str]) -> list[tuple[list[str], str]]:
  """Splits a `convert_bach_chunk` task into one task per work (after a worker crash)."""
  works, out_dir = task
  return [([w], out_dir) for w in works]


def crashed_bach(task: tuple[Sequence[str], str], reason: str) -> list[tuple[str, str]]:
  """The result of a work whose conversion killed its worker process."""
  return [(w, reason) for w in task[0]]


def _bach_work_path(corpus, work: str):
  """The corpus file of `work`: music21's getWork also returns prefix matches
  (`bach/bwv244.3` -> bwv244.3, bwv244.32, bwv244.37), so keep the exact stem."""
  found = corpus.getWork(work)
  found = found if isinstance(found, list) else [found]
  stem = work.rsplit("/", 1)[-1]
  exact = [p for p in found if os.path.basename(str(p)).rsplit(".", 1)[0] == stem]
  if not exact and len(found) == 1:  # The iterator's `bwv18.5-l` is the file bwv18.5-lz.
    return found[0]
  if not exact:
    raise LookupError(f"music21 corpus has no file named {stem!r}: {found}")
  # A few works exist in two formats (bwv277.krn and bwv277.mxl): MusicXML first.
  rank = {"mxl": 0, "xml": 1, "musicxml": 2}
  return min(exact, key=lambda p: (rank.get(str(p).rsplit(".", 1)[-1], 9), str(p)))


def convert_bach_chunk(task: tuple[Sequence[str], str]) -> list[tuple[str, str]]:
  """Worker entry point: converts music21 chorales to MIDI files in `out_dir`.

  Returns:
    One (work, error) pair per work; error is '' on success.
  """
  from music21 import converter, corpus  # pylint: disable=g-import-not-at-top

  works, out_dir = task
  results = []
  for work in works:
    target = os.path.join(out_dir, work.replace("/", "_") + ".mid")
    try:
      if not os.path.exists(target):
        score = converter.parse(_bach_work_path(corpus, work), forceSource=True, storePickle=False)
        tmp = target + ".tmp"
        score.write("midi", fp=tmp)
        os.replace(tmp, target)
      results.append((work, ""))
    except Exception as e:  # pylint: disable=broad-except
      # music21 raises many exception types; one bad chorale must not stop the build.
      results.append((work, f"{type(e).__name__}: {e}"))
  return results
