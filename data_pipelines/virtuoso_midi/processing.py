"""The TF-free work of the `virtuoso_midi` build: read, hash, parse, encode, split, report.

Everything here runs without TensorFlow and without JAX, in the builder's process or in
`multiprocessing` workers started with the `spawn` method (so a parent that imported TF or
JAX never forks its threads into a worker). The builder
(`virtuoso_midi_dataset_builder.py`) only lists the source files and hands them here.

The build is two passes over the unique files:

1. `encode_items` (in parallel, one file at a time per worker): read a file (size checked
   before reading, the read bounded), hash its bytes, parse it into notes
   (`virtuoso_jax.encoding.midi_to_notes`, which retries a file the fast parser rejects with
   a tolerant one), check the limits and encode it. The encoded example is appended to the
   worker's spill file in a temporary folder; only a small `Outcome` travels back to the
   parent. Whatever one file does (any exception, killing its worker, hanging) is that file's
   skip, named with the reason in the report; no other file is lost.
2. `assign_splits` then puts each good, unique file in `train`/`validation`/`test` by its
   content hash, and the builder's `_generate_examples` streams the spilled examples of one
   split back out. A file is parsed once; memory stays flat on large corpora.

Listing (`walk_midi_files`, `zip_items`, `tar_items`) enters each real folder once, reads
archives one level deep, never follows links inside archives, and gives every example a
printable, bounded, unique name; what it leaves out goes to the report too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib
import multiprocessing
import os
import pickle
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import time
import types
import zipfile
from multiprocessing import connection as mp_connection
from typing import Any, Callable, Iterator, Sequence

from etils import epath
import numpy as np

MIDI_SUFFIXES = (".mid", ".midi")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
# Split name and its share of the content-hash space, in hash order.
SPLITS = (("train", 0.90), ("validation", 0.05), ("test", 0.05))
# Reasons a file is left out; every one is counted in the build report. `unsupported`: an
# archive member the build does not read (a link, a path outside the archive, an archive inside
# an archive, a device file).
SKIP_REASONS = ("corrupt", "empty", "over_limit", "duplicate", "unsupported")
# At most this many file names are listed per skip reason in the stored report (metadata);
# every skipped file is in `SKIPPED_TSV` next to the dataset's shards.
MAX_LISTED_PER_REASON = 200
SKIPPED_TSV = "skipped.tsv"


def log(message: str) -> None:
  """Prints one progress line of the build (flushed: the trainer shows it live)."""
  print(f"[virtuoso_midi] {message}", flush=True)


def verbose() -> bool:
  """$VIRTUOSO_VERBOSE=1: also show TFDS's own output (progress bars, INFO logs, the full
  DatasetInfo of `tfds build`); otherwise only our `[virtuoso_midi]` lines and the report."""
  return os.environ.get("VIRTUOSO_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def file_timeout_s() -> float:
  """$VIRTUOSO_FILE_TIMEOUT (seconds, default 120): a file whose read+parse+encode takes longer
  is skipped as over_limit (its worker process is killed and replaced)."""
  env = os.environ.get("VIRTUOSO_FILE_TIMEOUT", "")
  try:
    return float(env) if env else 120.0
  except ValueError as e:
    raise ValueError(f"VIRTUOSO_FILE_TIMEOUT must be a number of seconds, got {env!r}") from e


class CorpusError(ValueError):
  """A corpus that cannot be built as asked (no or an empty MIDI folder, no usable file, a
  prepared dataset of another folder); the message names the folder and what to do."""


# --------------------------------------------------------------------------- items


@dataclasses.dataclass(frozen=True, order=True)
class Item:
  """One MIDI file of a source.

  Attributes:
    name: its source-relative name, '/'-separated (e.g. `songs.zip/folk/a.mid`), made safe by
      `safe_name`; stored in the record's `name` feature and used in the report.
    path: the file on disk (a plain file, or a tar member extracted by `tar_items`), or the
      `.zip` archive holding it.
    member: the member inside the `.zip` archive; '' for a plain file.
  """

  name: str
  path: str
  member: str = ""


class SkipFile(Exception):
  """A file left out for a known reason (one of `SKIP_REASONS`), before it is parsed."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class Listing:
  """What listing a source found: the items to read, and what was left out while listing
  (`skips`: (name, reason, detail) for the report) or noted (`notes`)."""

  items: list[Item] = dataclasses.field(default_factory=list)
  skips: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)

  def skip(self, name: str, reason: str, detail: str) -> None:
    """Records a left-out file; its name as found, made printable (`printable`)."""
    self.skips.append((printable(name), reason, detail))


def printable(text: str, max_len: int = 300) -> str:
  """`text` for a report line: non-printable characters as visible escapes (`\x1b`), at most
  `max_len` characters (cut with '...')."""
  out = "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                for c in text)
  return out if len(out) <= max_len else out[:max_len - 3] + "..."


_READ_CHUNK = 1 << 20


def _bounded_read(f, limit: int, what: str) -> bytes:
  """Reads a stream to its end, but raises SkipFile(over_limit) as soon as it passes `limit`
  bytes (a zip member's header can lie about its size; a zip bomb is never inflated whole)."""
  chunks, total = [], 0
  while True:
    chunk = f.read(min(_READ_CHUNK, limit + 1 - total))
    if not chunk:
      return b"".join(chunks)
    chunks.append(chunk)
    total += len(chunk)
    if total > limit:
      raise SkipFile("over_limit", f"{what} is more than {limit} bytes, over the limit "
                     f"max_file_bytes={limit} (read stopped there)")


def read_item(item: Item, max_bytes: int | None = None) -> bytes:
  """Returns the raw bytes of one item (a plain file or a `.zip` member).

  Args:
    item: the item.
    max_bytes: the size limit (`max_file_bytes`); None: none. A file or member over it raises
      SkipFile(over_limit) after reading at most `max_bytes + 1` bytes: the declared size (file
      size, the zip header's) is checked first, then the read itself is bounded.
  """
  limit = max_bytes if max_bytes is not None else (1 << 62)
  if not item.member:
    if "://" not in item.path and not stat.S_ISREG(os.stat(item.path).st_mode):
      # A fifo would block the read forever; a device could be endless.
      raise SkipFile("unsupported", "not read: not a regular file (fifo, device, socket)")
    path = epath.Path(item.path)
    size = path.stat().length
    if size > limit:
      raise SkipFile("over_limit", f"file is {size} bytes, over the limit max_file_bytes={limit}")
    with path.open("rb") as f:
      return _bounded_read(f, limit, "file")
  with epath.Path(item.path).open("rb") as f, zipfile.ZipFile(f) as archive:
    info = archive.getinfo(item.member)
    if info.file_size > limit:
      raise SkipFile("over_limit", f"member is {info.file_size} bytes uncompressed (zip "
                     f"header), over the limit max_file_bytes={limit}; not decompressed")
    with archive.open(info) as member:
      return _bounded_read(member, limit, "member (decompressed)")


def is_midi_name(name: str) -> bool:
  """Whether a file name has a MIDI suffix (case-insensitive)."""
  return name.lower().endswith(MIDI_SUFFIXES)


def is_archive_name(name: str) -> bool:
  """Whether a file name has an archive suffix the build reads (case-insensitive)."""
  return name.lower().endswith(ARCHIVE_SUFFIXES)


# Longest component of an example name kept as is; longer ones are cut and get a hash.
MAX_NAME_PART = 120


def _safe_part(part: str) -> str:
  """One name component: non-printable characters (control characters, undecodable bytes)
  written as visible escapes (`\\x1b`), very long ones cut to `MAX_NAME_PART` characters with a
  short hash of the original (so they stay unique) and their suffix kept."""
  out = printable(part, max_len=1 << 30)
  if len(out) > MAX_NAME_PART:
    digest = hashlib.sha256(part.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    dot = out.rfind(".")
    suffix = out[dot:] if 0 < dot and len(out) - dot <= 8 else ""
    out = f"{out[:MAX_NAME_PART - len(suffix) - 12]}~{digest}{suffix}"
  return out


def safe_name(name: str) -> str:
  """A readable example/report name: '/'-separated, no empty or '.' components, each component
  made safe by `_safe_part` (a '..' is kept visible but cannot name a parent: `%2E%2E`)."""
  parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
  return "/".join("%2E%2E" if p == ".." else _safe_part(p) for p in parts) or "_"


def unsafe_member_path(name: str) -> str:
  """Why an archive member name points outside the archive ('' when it does not): absolute
  (`/x`, `C:/x`) or with a `..` component."""
  norm = name.replace("\\", "/")
  if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
    return "absolute path"
  if ".." in norm.split("/"):
    return "path with '..' (outside the archive)"
  return ""


def unique_names(items: Sequence[Item]) -> list[Item]:
  """Items whose names are unique: a later item whose (safe) name is taken gets `~2`, `~3`, ...
  before its suffix."""
  used: set[str] = set()
  out = []
  for item in items:
    name, k = item.name, 1
    while name in used:
      k += 1
      dot = item.name.rfind(".")
      base, suffix = (item.name[:dot], item.name[dot:]) if dot > item.name.rfind("/") else (item.name, "")
      name = f"{base}~{k}{suffix}"
    used.add(name)
    out.append(item if name == item.name else dataclasses.replace(item, name=name))
  return out


def _member_problem(name: str, *, link: str = "", special: bool = False) -> str:
  """Why an archive member is not read ('' when it is read): see `SKIP_REASONS`."""
  why = unsafe_member_path(name)
  if why:
    return f"not read: {why}"
  if link:
    return f"not read: {link} (links in archives are not followed)"
  if special:
    return "not read: not a regular file (device, fifo)"
  if is_archive_name(name):
    return ("not read: an archive inside an archive (only one level is read; extract it into "
            "the folder to include it)")
  return ""


def zip_items(archive_path: epath.Path, prefix: str, listing: Listing | None = None) -> list[Item]:
  """The MIDI members of a `.zip` archive, named `<prefix>/<member>` (read in place later).

  Members that are links, point outside the archive or are archives themselves are not read;
  each goes to `listing.skips` as `unsupported`, with why.

  Raises:
    zipfile.BadZipFile: the archive cannot be read (the builder reports it).
  """
  listing = listing if listing is not None else Listing()
  with archive_path.open("rb") as f, zipfile.ZipFile(f) as archive:
    infos = [i for i in archive.infolist() if not i.is_dir()]
  items = []
  for info in infos:
    m = info.filename
    if _is_junk(m):
      continue
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    problem = _member_problem(m, link="a symbolic link" if is_link else "")
    if problem:
      listing.skip(f"{prefix}/{m}", "unsupported", problem)
    elif is_midi_name(m):
      items.append(Item(name=safe_name(f"{prefix}/{m}"), path=os.fspath(archive_path), member=m))
  return items


# Tar members are not extracted when the build's temporary folder would be left with less.
MIN_FREE_BYTES = 1 << 30


def tar_items(archive_path: epath.Path, prefix: str, extract_dir: str, max_bytes: int,
              listing: Listing | None = None) -> list[Item]:
  """The MIDI members of a tar archive (`.tar`, `.tar.gz`, `.tgz`), extracted one by one into
  `extract_dir` (under numbered names: a member name never becomes a path), named
  `<prefix>/<member>`.

  Not extracted, each in `listing.skips` with why: links (symbolic and hard), members outside
  the archive (`../`, absolute), devices, archives inside the archive (`unsupported`), and
  members over `max_bytes` (`over_limit`: by the tar header, and by a bounded copy) or that
  would leave less than `MIN_FREE_BYTES` free in `extract_dir` (`over_limit`). An archive
  that breaks part way keeps the members read before, and is itself reported as corrupt.
  """
  listing = listing if listing is not None else Listing()
  items = []
  os.makedirs(extract_dir, exist_ok=True)
  read = 0
  try:
    with archive_path.open("rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
      for member in tar:
        read += 1
        name = member.name
        if member.isdir() or _is_junk(name):
          continue
        link = ""
        if member.issym():
          link = f"a symbolic link to {member.linkname!r}"
        elif member.islnk():
          link = f"a hard link to {member.linkname!r}"
        problem = _member_problem(name, link=link, special=not (link or member.isfile()))
        if problem:
          listing.skip(f"{prefix}/{name}", "unsupported", problem)
          continue
        if not is_midi_name(name):
          continue
        if member.size > max_bytes:
          listing.skip(f"{prefix}/{name}", "over_limit",
                       f"member is {member.size} bytes (tar header), over the limit "
                       f"max_file_bytes={max_bytes}; not extracted")
          continue
        free = shutil.disk_usage(extract_dir).free
        if free - member.size < MIN_FREE_BYTES:
          # A tar bomb of many members each under the limit must not fill the disk.
          listing.skip(f"{prefix}/{name}", "over_limit",
                       f"not extracted: the build's temporary folder would have less than "
                       f"{MIN_FREE_BYTES >> 20} MiB free ({free} bytes free); set "
                       "$VIRTUOSO_BUILD_TMP to a folder on a larger disk")
          continue
        target = os.path.join(extract_dir, f"{len(items):07d}.mid")
        try:
          data = _bounded_read(tar.extractfile(member), max_bytes, "member")
        except SkipFile as e:
          listing.skip(f"{prefix}/{name}", e.reason, e.detail)
          continue
        with open(target, "wb") as out:
          out.write(data)
        items.append(Item(name=safe_name(f"{prefix}/{name}"), path=target))
  except Exception as e:  # pylint: disable=broad-except
    # tarfile/gzip/zlib raise many types on a damaged archive; what was read stays.
    after = f" after {read} members" if read else ""
    listing.skip(prefix, "corrupt", f"unreadable archive{after}: {type(e).__name__}: {e}")
  return items


def _is_junk(name: str) -> bool:
  """macOS resource forks (`__MACOSX/`, `._x.mid`) look like MIDI files but are not."""
  parts = name.replace("\\", "/").split("/")
  return "__MACOSX" in parts or parts[-1].startswith("._")


def _real(path: epath.Path) -> str:
  """A key naming the file or folder `path` really is (symlinks resolved; remote paths as is)."""
  text = os.fspath(path)
  return text if "://" in text else os.path.realpath(text)


# Folder links noted in the report at most (the rest are counted).
_MAX_LINK_NOTES = 10


def _walk_files(root: epath.Path, listing: Listing) -> list[epath.Path]:
  """Every file under `root`, recursively, sorted (epath has no recursive glob on GCS).

  Each real folder is entered once (a symlink to a folder already entered, e.g. a loop, is
  noted in `listing.notes` and not followed again), so the walk ends and lists a file once per
  real folder it sits in."""
  files, stack = [], [root]
  seen = {_real(root)}
  aliases = []
  while stack:
    folder = stack.pop()
    subdirs = []
    for child in sorted(folder.iterdir()):
      if not child.is_dir():
        files.append(child)
        continue
      key = _real(child)
      if key in seen:
        aliases.append(child.relative_to(root).as_posix())
        continue
      seen.add(key)
      subdirs.append(child)
    stack.extend(reversed(subdirs))
  for rel in aliases[:_MAX_LINK_NOTES]:
    listing.notes.append(f"{safe_name(rel)}/: a link to a folder already read; not read again")
  if len(aliases) > _MAX_LINK_NOTES:
    listing.notes.append(f"... and {len(aliases) - _MAX_LINK_NOTES} more links to folders "
                         "already read")
  return sorted(files)


def walk_midi_files(root: epath.Path, prefix: str = "",
                    listing: Listing | None = None) -> tuple[list[Item], list[epath.Path]]:
  """Lists the MIDI files and the archives under `root`, recursively, in sorted order.

  A file reached again through a symlink (same real file) is read once; the other names go to
  `listing.skips` as duplicates.

  Args:
    root: a folder (epath: local or any filesystem epath supports).
    prefix: prepended (with '/') to each source-relative name.
    listing: collects what is left out while listing (None: a throwaway one).

  Returns:
    (items, archives): the MIDI files as `Item`s, and the archive files found.
  """
  listing = listing if listing is not None else Listing()
  items, archives = [], []
  first_name: dict[str, str] = {}
  for path in _walk_files(root, listing):
    rel = path.relative_to(root).as_posix()
    if _is_junk(rel) or not (is_midi_name(rel) or is_archive_name(rel)):
      continue
    name = safe_name(f"{prefix}/{rel}" if prefix else rel)
    key = _real(path)
    if key in first_name:
      listing.skip(name, "duplicate", f"the same file as {first_name[key]} (a link); read once")
      continue
    first_name[key] = name
    if is_midi_name(rel):
      items.append(Item(name=name, path=os.fspath(path)))
    else:
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
  # The parser, "module:function" with `midi_to_notes`'s signature ('' = that function); a
  # seam for tests, which run it in the spawned workers.
  parser: str = ""


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


def _parser(settings: Settings):
  if not settings.parser:
    return _encoding_module().midi_to_notes
  module, _, fn = settings.parser.partition(":")
  return getattr(importlib.import_module(module), fn)


def _error_text(e: BaseException) -> str:
  """`Type: message` of an unexpected exception, on one line and not too long."""
  text = " ".join(f"{type(e).__name__}: {e}".split())
  return text if len(text) <= 500 else text[:497] + "..."


def _error_status(e: BaseException) -> str:
  """A file that exhausts the worker's memory is over a limit; any other error, corrupt."""
  return "over_limit" if isinstance(e, MemoryError) else "corrupt"


def process_item(item: Item, settings: Settings) -> tuple[Outcome, dict[str, Any] | None]:
  """Turns one file into an example, or into the reason it was skipped. Never raises for bad
  input: any `Exception` of one file is that file's skip with its type and message (corrupt;
  a MemoryError, over_limit): a bad file must not stop a build. KeyboardInterrupt and
  SystemExit do propagate.

  Returns:
    (outcome, example): the example holds the feature values (None when skipped).
  """
  out = Outcome(name=item.name)
  try:
    return _process_item(item, settings, out)
  except Exception as e:  # pylint: disable=broad-except
    out.status, out.detail = _error_status(e), f"unexpected error: {_error_text(e)}"
    return out, None


def _process_item(item: Item, settings: Settings, out: Outcome):
  enc = _encoding_module()
  config = enc.EncodingConfig.from_dict(settings.encoding_config)
  try:
    data = read_item(item, config.max_file_bytes)
  except SkipFile as e:
    out.status, out.detail = e.reason, e.detail
    return out, None
  except Exception as e:  # pylint: disable=broad-except
    out.status, out.detail = "corrupt", f"cannot read: {_error_text(e)}"
    return out, None
  out.sha256 = hashlib.sha256(data).hexdigest()
  if not data:
    out.status, out.detail = "empty", "0-byte file"
    return out, None
  try:
    # allow_empty: a file without notes is told apart from a corrupt one here.
    notes, info = _parser(settings)(data, dataclasses.replace(config, allow_empty=True),
                                    return_info=True)
  except enc.MidiError as e:
    out.status = "over_limit" if _limit_error(e) else "corrupt"
    out.detail = e.reason
    return out, None
  except Exception as e:  # pylint: disable=broad-except
    # The parser's contract is MidiError; anything else is still this file's problem only.
    out.status, out.detail = _error_status(e), f"parser error: {_error_text(e)}"
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


def make_spill_dir() -> str:
  """A fresh folder for spilled examples, under $VIRTUOSO_BUILD_TMP or the system temp."""
  return tempfile.mkdtemp(prefix="virtuoso_midi_", dir=os.environ.get("VIRTUOSO_BUILD_TMP") or None)


def remove_spill_dir(path: str) -> None:
  """Deletes a folder made by `make_spill_dir`."""
  shutil.rmtree(path, ignore_errors=True)


class SpillReader:
  """Reads spilled examples back by `Outcome.spill` (file, offset); keeps one file open."""

  def __init__(self):
    self._path, self._file = None, None

  def load(self, spill: tuple[str, int]) -> dict[str, Any]:
    path, offset = spill
    if path != self._path:
      self.close()
      self._path, self._file = path, open(path, "rb")  # pylint: disable=consider-using-with
    self._file.seek(offset)
    return pickle.load(self._file)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    self._path, self._file = None, None


def _encode_worker(conn, settings: Settings, spill_file: str) -> None:
  """A build worker process: receives (index, item) until None, answers (index, Outcome), and
  appends each good example to its own spill file (the Outcome holds its offset)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops us.
  with open(spill_file, "ab") as spill:
    while True:
      task = conn.recv()
      if task is None:
        return
      index, item = task
      outcome, example = process_item(item, settings)
      if example is not None:
        offset = spill.tell()
        pickle.dump(example, spill, protocol=pickle.HIGHEST_PROTOCOL)
        spill.flush()
        outcome.spill = (spill_file, offset)
      conn.send((index, outcome))


def _death_text(exitcode: int | None) -> str:
  if exitcode is not None and exitcode < 0:
    try:
      return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
      return f"killed by signal {-exitcode}"
  return f"exit code {exitcode}"


class _EncodeWorker:
  """One spawned `_encode_worker` process and the items sent to it, in the order it works on
  them: `tasks[0]` is the one it is on (since `head_start`), the others wait in its pipe (so it
  never idles between files while the parent answers)."""

  def __init__(self, settings: Settings, spill_file: str):
    ctx = multiprocessing.get_context("spawn")
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(target=_encode_worker, args=(child, settings, spill_file), daemon=True)
    with _spawnable(_encode_worker.__module__):
      self.proc.start()
    child.close()
    self.tasks: collections.deque[int] = collections.deque()
    self.head_start = 0.0
    self.done = 0

  def give(self, index: int, item: Item) -> None:
    self.conn.send((index, item))
    if not self.tasks:
      self.head_start = time.monotonic()
    self.tasks.append(index)

  def stop(self, *, kill: bool) -> None:
    if not kill:
      try:
        self.conn.send(None)
      except OSError:
        pass
      self.proc.join(5)
    if self.proc.is_alive():
      self.proc.kill()
      self.proc.join(5)
    self.conn.close()


# Files sent to a worker ahead of its answers (it starts the next while the parent reads one).
_IN_FLIGHT = 2
# Workers that die before finishing any file, with no file finished by any worker yet, after
# which the build stops (a broken environment, not a bad file).
_MAX_STARTUP_DEATHS = 3


def encode_items(items: Sequence[Item], settings: Settings, spill_dir: str, *,
                 num_workers: int, timeout_s: float | None = None,
                 desc: str = "encoding") -> Iterator[Outcome]:
  """`process_item` over `items` on `num_workers` spawned processes (at least one: the parser
  never runs in the builder's process), yielding one Outcome per item, in item order, and
  printing progress lines (files done, files/s, ETA) every 5 s.

  Each worker takes one file at a time, so whatever one file does stays that file's skip:
  an exception is caught in the worker (`process_item`); a worker that dies on a file (a
  segfault in a C++ parser, the OOM killer) makes it `corrupt` ("the parser process died on
  it"); a file that takes more than `timeout_s` (default `file_timeout_s()`) has its worker
  killed and is `over_limit`. A dead or killed worker is replaced; no other file is lost.
  """
  timeout_s = file_timeout_s() if timeout_s is None else timeout_s
  total = len(items)
  num_workers = max(1, min(num_workers, total))
  log(f"{desc}: {total} files on {num_workers} worker process(es)")
  start = last = time.monotonic()
  pending = collections.deque(enumerate(items))
  results: dict[int, Outcome] = {}
  spawned = 0
  startup_deaths = 0
  any_done = False

  def spawn() -> _EncodeWorker:
    nonlocal spawned
    spawned += 1
    return _EncodeWorker(settings, os.path.join(spill_dir, f"worker-{spawned:05d}.pkl"))

  def feed(worker: _EncodeWorker) -> None:
    while pending and len(worker.tasks) < _IN_FLIGHT:
      worker.give(*pending.popleft())

  workers: list[_EncodeWorker] = []
  ok = False
  try:
    for _ in range(num_workers if total else 0):
      workers.append(spawn())
      feed(workers[-1])
    next_out = 0
    while next_out < total:
      while next_out in results:
        yield results.pop(next_out)
        next_out += 1
      if next_out >= total:
        break
      busy = [w for w in workers if w.tasks]
      now = time.monotonic()
      wait_s = min([max(0.0, w.head_start + timeout_s - now) for w in busy] + [5.0])
      mp_connection.wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], wait_s)
      for i, w in enumerate(workers):
        answered = False
        while w.tasks and w.conn.poll():
          try:
            got, outcome = w.conn.recv()
          except (EOFError, OSError):
            break  # Died mid-answer: handled below as a death.
          index = w.tasks.popleft()
          assert got == index, (got, index)
          results[index] = outcome
          w.done += 1
          w.head_start = time.monotonic()
          answered = any_done = True
        if answered:
          feed(w)
          continue
        if not w.tasks:
          continue
        index = w.tasks[0]
        if not w.proc.is_alive():
          reason = _death_text(w.proc.exitcode)
          results[index] = Outcome(name=items[index].name, status="corrupt",
                                   detail=f"the parser process died on it ({reason})")
          log(f"{desc}: a worker process died ({reason}) on {items[index].name}; replacing it")
          if w.done == 0 and not any_done:
            startup_deaths += 1
            if startup_deaths >= _MAX_STARTUP_DEATHS:
              raise RuntimeError(f"{startup_deaths} build worker processes died before "
                                 f"finishing any file ({reason}); see their errors above")
        elif time.monotonic() - w.head_start > timeout_s:
          results[index] = Outcome(
              name=items[index].name, status="over_limit",
              detail=f"took more than {timeout_s:g} s to read and parse (the per-file time "
                     "limit, $VIRTUOSO_FILE_TIMEOUT); its process was stopped")
          log(f"{desc}: {items[index].name} took more than {timeout_s:g} s; stopped it")
        else:
          continue
        # The files queued behind the culprit were not started: back to the front of the line.
        w.tasks.popleft()
        pending.extendleft((j, items[j]) for j in reversed(w.tasks))
        w.stop(kill=True)
        workers[i] = spawn()
        feed(workers[i])
      now = time.monotonic()
      if now - last >= 5.0:
        last = now
        done = next_out + len(results)
        rate = done / max(now - start, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        log(f"{desc}: {done}/{total} files, {rate:.1f} files/s, ETA {eta:.0f} s")
    ok = True
  finally:
    for w in workers:
      w.stop(kill=not ok)
  elapsed = max(time.monotonic() - start, 1e-9)
  log(f"{desc}: {total}/{total} files, {total / elapsed:.1f} files/s, {elapsed:.1f} s")


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


@contextlib.contextmanager
def _spawnable(module_name: str):
  """While `spawn` processes start: `module_name`'s root is on sys.path (the child finds the
  module by the name the parent imported it under) and __main__ is a bare module (the child
  does not re-import the parent's __main__; under `tfds build` that imports TensorFlow)."""
  root = _module_root(module_name)
  added = root not in sys.path
  if added:
    sys.path.insert(0, root)
  main = sys.modules["__main__"]
  sys.modules["__main__"] = types.ModuleType("__main__")
  try:
    yield
  finally:
    sys.modules["__main__"] = main
    if added:
      sys.path.remove(root)


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
    with _spawnable(self.fn.__module__):
      return [self.executor.submit(self.fn, t) for t in tasks]

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
    self.all_skips: list[tuple[str, str, str]] = []  # (reason, name, detail), every one.
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
    self.all_skips.append((reason, name, detail))
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

  def skipped_tsv(self) -> str:
    """Every skipped file, one `reason<TAB>name<TAB>detail` line each, after a header."""
    clean = lambda t: " ".join(str(t).split("\t")).replace("\n", " ").replace("\r", " ")
    rows = ["reason\tname\tdetail"]
    rows += [f"{clean(r)}\t{clean(n)}\t{clean(d)}" for r, n, d in self.all_skips]
    return "\n".join(rows) + "\n"

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
      where = report.get("skipped_list") or "metadata"
      lines.append(f"    {reason}: ... {report['skipped'][reason] - 10} more (all in {where})")
  if report.get("skipped_list"):
    lines.append(f"  every skipped file: {report['skipped_list']}")
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
