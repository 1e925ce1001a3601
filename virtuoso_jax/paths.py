"""The one path abstraction: every file virtuoso_jax names, reads or writes goes through here.

A path is a local file name or any URI etils.epath accepts (`gs://bucket/run`, `s3://...`), the
same paths Orbax and TFDS take (they use epath too). Local paths keep their exact behaviour
(`~` expanded, made absolute, atomic replace for whole-file writes, appends for logs); remote
ones are objects in a bucket, which have no append, no rename and no free-space figure, so:

  write_text/write_bytes/write_json  local: temp file + os.replace; remote: one object upload
                                     (an object is replaced whole, never seen half written)
  LineLog                            append-only text log (metrics.jsonl): local file appends;
                                     remote: the object rewritten whole on every flush
  move                               local: rename; remote: copy every object, then delete
  free_bytes                         local: the disk's free space; remote: None (no quota here)
  local_file                         a local stand-in for tools that only take local names
                                     (FluidSynth), copied down / uploaded around the block

Which client serves a remote path is epath's choice: TensorFlow's file system when TF is
importable (on a TPU VM, GCS with the VM's credentials), else fsspec (`gcsfs` for gs://,
`pip install virtuoso_jax[gcs]`); `EPATH_USE_TF=0` forces fsspec. Imports no JAX.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import Any, Iterator, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(p: PathLike) -> bool:
  """Whether `p` names an object store path (`gs://...`, `s3://...`), not a local file."""
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path: remote as given, local with `~` expanded and made absolute."""
  text = os.fspath(p)
  if is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def absolute(p: PathLike) -> str:
  """The canonical string of `p` (what logs, config.json and error messages show)."""
  return os.fspath(path(p))


def join(base: PathLike, *parts: str) -> str:
  """`base/part/...` as a string; a relative local base stays relative (as os.path.join)."""
  return posixpath.join(os.fspath(base), *parts) if is_remote(base) else os.path.join(
      os.fspath(base), *parts)


def name(p: PathLike) -> str:
  """The last component (os.path.basename for local and remote paths alike)."""
  return posixpath.basename(os.fspath(p).rstrip("/")) if is_remote(p) else os.path.basename(
      os.fspath(p))


def parent(p: PathLike) -> str:
  """The folder holding `p` (os.path.dirname of the absolute path)."""
  return os.fspath(path(p).parent)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def is_file(p: PathLike) -> bool:
  return path(p).is_file()


def is_dir(p: PathLike) -> bool:
  return path(p).is_dir()


def same(a: PathLike, b: PathLike) -> bool:
  """Whether two paths name the same file or folder (local: `~` and symlinks resolved)."""
  if is_remote(a) or is_remote(b):
    return absolute(a).rstrip("/") == absolute(b).rstrip("/")
  return os.path.realpath(absolute(a)) == os.path.realpath(absolute(b))


def listdir(p: PathLike) -> list[str]:
  """The names in folder `p`, sorted; [] when it does not exist."""
  d = path(p)
  if not d.is_dir():
    return []
  return sorted(c.name for c in d.iterdir())


def makedirs(p: PathLike) -> None:
  """Creates folder `p` and its parents (a no-op for an existing one; object stores have no
  folders, epath makes the marker its backend needs)."""
  path(p).mkdir(parents=True, exist_ok=True)


def size(p: PathLike) -> int:
  """The file's size in bytes (OSError/FileNotFoundError when it cannot be read)."""
  return int(path(p).stat().length)


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def write_bytes(p: PathLike, data: bytes) -> str:
  """Writes `data` to `p` whole: a reader sees the old content or the new, never a part.
  Creates the parent folder. Returns the path written."""
  target = path(p)
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(target):
    target.write_bytes(data)  # An object upload replaces the object atomically.
  else:
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, target)
  return os.fspath(target)


def write_text(p: PathLike, text: str) -> str:
  return write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, obj: Any, **dump_kwargs) -> str:
  return write_text(p, json.dumps(obj, **dump_kwargs))


def rmtree(p: PathLike) -> None:
  """Deletes folder `p` and everything in it (a no-op when absent)."""
  d = path(p)
  if d.exists():
    d.rmtree()


def walk_files(p: PathLike) -> Iterator[epath.Path]:
  """Every file under folder `p`, recursively, folder by folder in name order (epath's own
  walk drops the gs:// scheme from the folders it yields on fsspec). Local links to folders
  are not entered (as pathlib's rglob), so a link loop cannot make it endless."""
  stack = [path(p)]
  while stack:
    folder = stack.pop()
    children = sorted(folder.iterdir())
    subdirs = []
    for child in children:
      if child.is_dir():
        if not is_remote(child) and os.path.islink(child):
          continue
        subdirs.append(child)
      else:
        yield child
    stack.extend(reversed(subdirs))


def tree_bytes(p: PathLike) -> int:
  """Total size of the files under folder `p` (0 when absent; unreadable files count 0)."""
  total = 0
  if not exists(p):
    return 0
  for f in walk_files(p):
    try:
      total += int(f.stat().length)
    except OSError:
      pass
  return total


def free_bytes(p: PathLike) -> int | None:
  """Free space of the disk holding `p` (its nearest existing parent); None for a remote path
  (a bucket reports no free space) or when it cannot be read."""
  if is_remote(p):
    return None
  d = absolute(p)
  while d and not os.path.exists(d):
    d = os.path.dirname(d)
  try:
    return shutil.disk_usage(d or ".").free
  except OSError:
    return None


def copy_tree(src: PathLike, dst: PathLike, *, last: tuple[str, ...] = ()) -> None:
  """Copies every file under folder `src` to the same place under `dst` (overwriting). Files
  named in `last` are copied after all others, so a reader that checks for them (a TFDS
  dataset's dataset_info.json) never sees a half-copied folder as complete."""
  src_p, dst_p = path(src), path(dst)
  order = lambda f: (last.index(f.name) + 1 if f.name in last else 0, os.fspath(f))
  files = sorted(walk_files(src_p), key=order)
  for f in files:
    target = dst_p / os.fspath(f.relative_to(src_p))
    target.parent.mkdir(parents=True, exist_ok=True)
    f.copy(target, overwrite=True)


def move(src: PathLike, dst: PathLike) -> None:
  """Moves file or folder `src` to `dst` (which must not exist). Local: a rename (entry by
  entry when `src` is a mount point); remote: object stores have no rename, so every object is
  copied, then `src` deleted."""
  if not (is_remote(src) or is_remote(dst)):
    s, d = absolute(src), absolute(dst)
    try:
      os.rename(s, d)
    except OSError:  # A mount point or another disk: move its entries instead.
      if not os.path.isdir(s):
        shutil.move(s, d)
        return
      os.makedirs(d)
      for entry in os.listdir(s):
        shutil.move(os.path.join(s, entry), os.path.join(d, entry))
    return
  if is_dir(src):
    copy_tree(src, dst)
    rmtree(src)
  else:
    path(src).copy(path(dst))
    path(src).unlink()


@contextlib.contextmanager
def local_file(p: PathLike, *, write: bool) -> Iterator[str]:
  """A local file name standing for `p`, for tools that only take local names.

  Local `p`: its own name. Remote: read (`write=False`) a local copy of it; write
  (`write=True`) a temporary name whose file is uploaded to `p` when the block ends without an
  exception (and only if the tool wrote it)."""
  if not is_remote(p):
    yield os.fspath(p)
    return
  with tempfile.TemporaryDirectory(prefix="virtuoso_jax_") as tmp:
    local = os.path.join(tmp, name(p))
    if not write:
      with open(local, "wb") as f:
        f.write(read_bytes(p))
    yield local
    if write and os.path.exists(local):
      with open(local, "rb") as f:
        write_bytes(p, f.read())


class LineLog:
  """An append-only text log (metrics.jsonl) at `p`.

  Local: a file opened for appending, flushed per `append`. Remote: objects cannot be appended
  to, so the log's text is kept and the object rewritten whole on every `append` (a log of
  thousands of rows is a few hundred KB; each rewrite is one upload).
  """

  def __init__(self, p: PathLike):
    self.path = absolute(p)
    self._remote = is_remote(self.path)
    if self._remote:
      self._text = read_text(self.path) if exists(self.path) else ""
      self._file = None
    else:
      makedirs(parent(self.path))
      self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def append(self, text: str) -> None:
    if self._remote:
      self._text += text
      write_text(self.path, self._text)
    else:
      self._file.write(text)
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
