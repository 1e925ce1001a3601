"""The TF-free work of the `virtuoso_midi` build: list, read, hash, parse and encode a file.

Everything here runs without TensorFlow and without JAX: in a Beam worker (`beam_pipeline.py`),
or in the builder's process when no Beam options are given (`build_in_process`). The builder
(`virtuoso_midi_dataset_builder.py`) lists the source files with the functions here and hands
the list to one of the two.

The work of one file is `process_item`: read it (size checked before reading, the read
bounded), hash its bytes, parse it into notes (`virtuoso_jax.encoding.midi_to_notes`, which
retries a file the fast parser rejects with a tolerant one), check the limits and encode it.
It always runs inside a `FileSandbox` (a child process), so whatever one file does (any
exception, killing its process, hanging) is that file's skip, named with the reason in the
report; no other file is lost. What happens over all files (duplicates, splits, the report)
is in `aggregation.py`.

Listing (`walk_midi_files`, `zip_items`, `tar_items`) enters each real folder once, reads
archives one level deep, never follows links inside archives, and gives every example a
printable, bounded, unique name; what it leaves out goes to the report too.
"""

from __future__ import annotations

import array
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
from typing import Any, Sequence

from etils import epath
import numpy as np

try:  # `tfds build` imports this package as `virtuoso_midi`.
  from . import aggregation
except ImportError:  # pragma: no cover - imported as a top-level module.
  import aggregation  # type: ignore[no-redef]

MIDI_SUFFIXES = (".mid", ".midi")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def log(message: str) -> None:
  """Prints one progress line of the build (flushed: the trainer shows it live)."""
  print(f"[virtuoso_midi] {message}", flush=True)


def verbose() -> bool:
  """$VIRTUOSO_VERBOSE=1: also show TFDS's own output (progress bars, INFO logs, the full
  DatasetInfo of `tfds build`); otherwise only our `[virtuoso_midi]` lines and the report."""
  return os.environ.get("VIRTUOSO_VERBOSE", "").strip().lower() in ("1", "true", "yes", "on")


def file_timeout_s() -> float:
  """$VIRTUOSO_FILE_TIMEOUT (seconds, default 120): a file whose read+parse+encode takes longer
  is skipped as over_limit (its parser process is killed and replaced)."""
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
  """A file left out for a known reason (one of `aggregation.SKIP_REASONS`), before it is parsed."""

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
  """Why an archive member is not read ('' when it is read): see `aggregation.SKIP_REASONS`."""
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
  # seam for tests, which run it in the parser processes (FileSandbox).
  parser: str = ""


@dataclasses.dataclass
class Outcome:
  """What happened to one file (small; its example, if any, travels next to it).

  Attributes:
    name: the item's source-relative name.
    sha256: hex digest of the file's bytes ('' if it could not be read).
    status: "ok" or one of `aggregation.SKIP_REASONS`.
    detail: why it was skipped (the parser's error, the limit), '' when ok.
    recovered: parsed only by the tolerant fallback parser.
    num_notes: notes in the example.
    length: tokens (token configs) or characters (char configs) of the example.
    seconds: duration of the song.
    clipped: notes with a clipped field, summed over fields.
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
  """A file that exhausts the parser process's memory is over a limit; any other error, corrupt."""
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


def make_build_tmp() -> str:
  """A fresh local folder for the build (extracted tar members), under $VIRTUOSO_BUILD_TMP or
  the system temp."""
  return tempfile.mkdtemp(prefix="virtuoso_midi_", dir=os.environ.get("VIRTUOSO_BUILD_TMP") or None)


def remove_build_tmp(path: str) -> None:
  """Deletes a folder made by `make_build_tmp`."""
  shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- per-file isolation


def _death_text(exitcode: int | None) -> str:
  if exitcode is not None and exitcode < 0:
    try:
      return f"killed by {signal.Signals(-exitcode).name}"
    except ValueError:
      return f"killed by signal {-exitcode}"
  return f"exit code {exitcode}"


def _sandbox_main(conn, settings: Settings) -> None:
  """The sandbox process: imports the parser, says "ready", then answers each Item with
  `process_item(item, settings)` until it receives None."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; it stops us.
  _parser(settings)
  conn.send("ready")
  while True:
    item = conn.recv()
    if item is None:
      return
    conn.send(process_item(item, settings))


class FileSandbox:
  """Runs `process_item` on one file at a time in a child process of its own.

  Why: `process_item` turns any Python exception of a file into that file's skip, but a C++
  parser can also segfault, abort or loop forever on hostile bytes. In the caller's process
  that would kill (or hang) a whole Beam bundle; Beam would retry the bundle and then fail the
  pipeline, and the build would never name the file. Here the child dies or is killed instead:
  that file becomes `corrupt` ("the parser process died on it (killed by SIGSEGV)") or, past
  `timeout_s` ($VIRTUOSO_FILE_TIMEOUT), `over_limit`; the next file gets a fresh child. This is
  all the isolation there is: no pool, no scheduling (the Beam runner, or the in-process loop,
  decides what runs where); one child per caller, started lazily with `spawn` so it never
  inherits a parent's TensorFlow/JAX threads.
  """

  def __init__(self, settings: Settings, timeout_s: float | None = None,
               startup_timeout_s: float = 300.0):
    self.settings = settings
    self.timeout_s = file_timeout_s() if timeout_s is None else timeout_s
    self.startup_timeout_s = startup_timeout_s
    self._proc = None
    self._conn = None
    self._exitcode = None

  def _start(self) -> None:
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_sandbox_main, args=(child, self.settings), daemon=True)
    with _spawnable(_sandbox_main.__module__):
      self._proc.start()
    child.close()
    ready = mp_connection.wait([self._conn, self._proc.sentinel], self.startup_timeout_s)
    try:
      if self._conn in ready and self._conn.recv() == "ready":
        return
    except (EOFError, OSError):
      pass
    self._stop(kill=True)
    # Before any file: a broken environment (an import error, shown above), not a bad file.
    raise RuntimeError(f"the build's parser process could not start ({_death_text(self._exitcode)}); "
                       "see its error above")

  def process(self, item: Item) -> tuple[Outcome, dict[str, Any] | None]:
    """`process_item(item, settings)`, or the outcome of the child dying or timing out on it."""
    if self._proc is None:
      self._start()
    self._conn.send(item)
    ready = mp_connection.wait([self._conn, self._proc.sentinel], self.timeout_s)
    if self._conn in ready:
      try:
        return self._conn.recv()
      except (EOFError, OSError):
        pass  # Died while answering: a death, below.
    if ready:
      self._stop(kill=True)
      reason = _death_text(self._exitcode)
      log(f"the parser process died ({reason}) on {item.name}; starting another")
      return Outcome(name=item.name, status="corrupt",
                     detail=f"the parser process died on it ({reason})"), None
    self._stop(kill=True)
    log(f"{item.name} took more than {self.timeout_s:g} s; stopped it")
    return Outcome(name=item.name, status="over_limit",
                   detail=f"took more than {self.timeout_s:g} s to read and parse (the per-file "
                          "time limit, $VIRTUOSO_FILE_TIMEOUT); its process was stopped"), None

  def _stop(self, *, kill: bool) -> None:
    if self._proc is None:
      return
    if not kill:
      try:
        self._conn.send(None)
      except OSError:
        pass
      self._proc.join(5)
    if self._proc.is_alive():
      self._proc.kill()
    self._proc.join(5)
    self._exitcode = self._proc.exitcode
    self._conn.close()
    self._proc = self._conn = None

  def close(self) -> None:
    """Stops the child (it finishes nothing: call between files)."""
    self._stop(kill=False)


# --------------------------------------------------------------------------- in-process build


class ExampleSpill:
  """An append-only local file of pickled examples, read back by (offset, length).

  Why: the in-process build must hold the kept examples until the splits are known (after the
  last file) and TFDS's writer asks for them, split by split. Held in memory, they would grow
  with the corpus (~5 KB a song of 1.2k tokens, ~80 KB for Lakh's); on disk the build keeps
  only their 16-byte locations. The file is the build's own, written and read by the same
  process, so pickle is safe here.
  """

  FILE_NAME = "examples.pkl"

  def __init__(self, work_dir: str):
    """Creates a fresh folder for the file under `work_dir` (a local folder)."""
    self.dir = tempfile.mkdtemp(prefix="spill_", dir=work_dir)
    self.path = os.path.join(self.dir, self.FILE_NAME)
    self._out = open(self.path, "wb")  # pylint: disable=consider-using-with
    self._size = 0

  def write(self, example: dict[str, Any]) -> tuple[int, int]:
    """Appends one example; returns its (offset, length) in the file."""
    data = pickle.dumps(example, protocol=pickle.HIGHEST_PROTOCOL)
    self._out.write(data)
    offset, self._size = self._size, self._size + len(data)
    return offset, len(data)

  def finish(self) -> None:
    """Done writing (the file is complete for `read`)."""
    if not self._out.closed:
      self._out.close()

  def read(self, locations: Sequence[int]):
    """Yields the examples at `locations` (offset, length, offset, length, ...), in that order."""
    self.finish()
    with open(self.path, "rb") as f:
      for k in range(0, len(locations), 2):
        f.seek(locations[k])
        data = f.read(locations[k + 1])
        if len(data) != locations[k + 1]:
          raise OSError(f"spill file {self.path} ends before the record at offset "
                        f"{locations[k]} ({len(data)} of {locations[k + 1]} bytes)")
        yield pickle.loads(data)

  def remove(self) -> None:
    """Closes and deletes the file and its folder (safe to call twice)."""
    self.finish()
    shutil.rmtree(self.dir, ignore_errors=True)


@dataclasses.dataclass
class InProcessBuild:
  """What `build_in_process` found: where each split's examples are in the spill file (a flat
  `array('q')` of offset, length pairs, in file-list order), the report of the files read, and
  every skip as (order, skipped.tsv row). No example is held in memory: `examples(split)`
  reads them back. `remove()` deletes the spill file (the builder calls it when the build
  ends, written or failed)."""

  spill: ExampleSpill
  locations: dict[str, array.array]
  report: aggregation.Report
  skipped_rows: list[tuple[Any, str]]

  @property
  def num_examples(self) -> int:
    return sum(len(v) // 2 for v in self.locations.values())

  def splits(self) -> list[str]:
    """The splits with at least one example, in `aggregation.SPLIT_NAMES` order."""
    return [s for s in aggregation.SPLIT_NAMES if self.locations.get(s)]

  def examples(self, split: str):
    """Yields (sha256, example) of one split, read back from the spill file."""
    for example in self.spill.read(self.locations.get(split, ())):
      yield example["sha256"], example

  def remove(self) -> None:
    self.spill.remove()


def build_in_process(items: Sequence[Item], settings: Settings, *, desc: str,
                     work_dir: str) -> InProcessBuild:
  """The build without Beam: the same per-file work (`FileSandbox`, one file at a time) and the
  same aggregations as `beam_pipeline.build`, run in a loop here. Each first copy of a file's
  content is appended to an `ExampleSpill` under `work_dir` as soon as it is encoded, so this
  process holds per file only its small `Outcome` and a location, whatever the corpus size
  (the builder uses it whenever no Beam options are given). On an error the spill is removed.
  """
  total = len(items)
  log(f"{desc}: {total} files in this process, one at a time (its parser in a child process)")
  start = last = time.monotonic()
  copies: dict[str, aggregation.FirstCopy] = {}
  unread = []
  spill = ExampleSpill(work_dir)
  sandbox = FileSandbox(settings)
  try:
    for index, item in enumerate(items):
      outcome, example = sandbox.process(item)
      if outcome.sha256:
        # Files come in list order, so a content seen before is a duplicate: not spilled.
        first = outcome.sha256 not in copies
        location = spill.write(example) if first and example is not None else None
        copies.setdefault(outcome.sha256, aggregation.FirstCopy()).add((index, outcome, location))
      else:
        unread.append((index, outcome, None))
      del example
      now = time.monotonic()
      if now - last >= 5.0:
        last = now
        rate = (index + 1) / max(now - start, 1e-9)
        log(f"{desc}: {index + 1}/{total} files, {rate:.1f} files/s, ETA {(total - index - 1) / rate:.0f} s")
    spill.finish()
  except BaseException:
    spill.remove()
    raise
  finally:
    sandbox.close()
  elapsed = max(time.monotonic() - start, 1e-9)
  log(f"{desc}: {total}/{total} files, {total / elapsed:.1f} files/s, {elapsed:.1f} s")

  unique = sorted([c.first for c in copies.values()] + unread, key=lambda r: r[0])
  cut_acc = aggregation.SplitCuts()
  for _, outcome, _ in unique:
    if outcome.status == "ok":
      cut_acc.add(outcome.sha256)
  cuts = cut_acc.cuts()
  report = aggregation.Report()
  rows = []

  def add(event):
    report.add(event)
    skipped = aggregation.skip_of(event)
    if skipped is not None:
      rows.append((skipped[0], aggregation.tsv_row(*skipped[1:])))

  locations: dict[str, array.array] = {}
  for index, outcome, location in unique:
    split = cuts.split_of(outcome.sha256) if outcome.status == "ok" else None
    add(aggregation.file_event((1, index), outcome, split))
    if split is not None:
      locations.setdefault(split, array.array("q")).extend(location)
  for c in copies.values():
    for event in aggregation.duplicate_events(c):
      add(event)
  return InProcessBuild(spill=spill, locations=locations, report=report,
                        skipped_rows=sorted(rows))


# --------------------------------------------------------------------------- worker processes


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


def module_root(module_name: str) -> str:
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
  root = module_root(module_name)
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


# --------------------------------------------------------------------------- Bach (music21)


def bach_chorale_works() -> list[str]:
  """The Bach chorales bundled with music21 (Riemenschneider numbering; unique works)."""
  from music21.corpus import chorales  # pylint: disable=g-import-not-at-top

  works = chorales.Iterator(numberingSystem="riemenschneider", returnType="filename")
  return sorted(set(works))


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


def convert_bach(works: Sequence[str], out_dir: str, num_workers: int) -> dict[str, str]:
  """Converts music21 chorales to MIDI files in `out_dir` on `num_workers` spawned processes
  (music21 is pure Python: an error of one work is that work's, reported by the caller; a
  process that dies is an error of the build).

  Returns:
    {work: error} for the works that failed.
  """
  if not works:
    return {}
  chunk = max(1, min(8, -(-len(works) // max(1, num_workers))))
  tasks = [(list(works[i:i + chunk]), out_dir) for i in range(0, len(works), chunk)]
  start = time.monotonic()
  log(f"converting music21 Bach chorales to MIDI: {len(works)} on {num_workers} process(es)")
  failed = {}
  with concurrent.futures.ProcessPoolExecutor(
      max(1, min(num_workers, len(tasks))), mp_context=multiprocessing.get_context("spawn")) as pool:
    with _spawnable(convert_bach_chunk.__module__):
      futures = [pool.submit(convert_bach_chunk, t) for t in tasks]
    for future in futures:
      failed.update({w: err for w, err in future.result() if err})
  log(f"converting music21 Bach chorales to MIDI: done in {time.monotonic() - start:.1f} s")
  return failed
