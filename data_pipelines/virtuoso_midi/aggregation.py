"""What the virtuoso_midi build computes over all files: duplicates, splits and the report.

Each is a small mergeable accumulator (`add`, `merge`), so the same code runs as a Beam
aggregation (`CombinePerKey`/`CombineGlobally`, in `beam_pipeline.py`) and in the builder's
in-process path (`processing.build_in_process`):

- `FirstCopy`: the copies of one content hash; the first in listing order is kept (with its
  example), the others are duplicates. Holds one example, whatever the number of copies.
- `SplitCuts`: where the train/validation/test cuts fall among the unique good files; holds
  counts and a few keys next to each cut, whatever the corpus size.
- `Report`: the build report's counts and the first `MAX_LISTED_PER_REASON` skipped files per
  reason (in listing order); every skip also becomes a `skipped.tsv` row (`skip_row`).

A file's contribution is an event: `file_event` (a file read and not a duplicate: written to a
split, or skipped with its reason) or one of `duplicate_events`. The events' `order` is
`(1, index in the file list)`; what listing left out comes first, as `(0, n)`.

Pure Python (no Beam, TF or JAX).
"""

from __future__ import annotations

import bisect
import dataclasses
import fractions
from typing import Any, Iterable, Optional

# Split name and its share of the content-hash space, in hash order.
SPLITS = (("train", 0.90), ("validation", 0.05), ("test", 0.05))
SPLIT_NAMES = tuple(name for name, _ in SPLITS)
# Reasons a file is left out; every one is counted in the build report. `unsupported`: an
# archive member the build does not read (a link, a path outside the archive, an archive inside
# an archive, a device file).
SKIP_REASONS = ("corrupt", "empty", "over_limit", "duplicate", "unsupported")
# At most this many file names are listed per skip reason in the stored report (metadata);
# every skipped file is in `SKIPPED_TSV` next to the dataset's shards.
MAX_LISTED_PER_REASON = 200
SKIPPED_TSV = "skipped.tsv"
SKIPPED_TSV_HEADER = "reason\tname\tdetail"

# --------------------------------------------------------------------------- duplicates


class FirstCopy:
  """The copies of one file content (one sha256): `first` = (index, outcome, example) of the
  copy earliest in the file list, `others` = (index, name) of the rest."""

  def __init__(self):
    self.first: Optional[tuple[int, Any, Any]] = None
    self.others: list[tuple[int, str]] = []

  def add(self, record: tuple[int, Any, Any]) -> "FirstCopy":
    """Adds one copy: (index in the file list, its Outcome, its example or None)."""
    if self.first is None:
      self.first = record
    elif record[0] < self.first[0]:
      self.others.append((self.first[0], self.first[1].name))
      self.first = record
    else:
      self.others.append((record[0], record[1].name))
    return self

  def merge(self, other: "FirstCopy") -> "FirstCopy":
    if other.first is not None:
      self.add(other.first)
    self.others.extend(other.others)
    return self


def duplicate_events(copies: FirstCopy) -> list[tuple]:
  """One `("duplicate", order, name, first_name)` event per copy that is not the first."""
  first_name = copies.first[1].name
  return [("duplicate", (1, index), name, first_name) for index, name in sorted(copies.others)]


# --------------------------------------------------------------------------- splits


def hash_fraction(sha256: str) -> float:
  """Where a content hash falls in [0, 1): the first 64 bits of the digest."""
  return int(sha256[:16], 16) / 2.0**64


def split_key(sha256: str) -> tuple[float, str]:
  """A file's place in split order (its hash fraction; the full hash breaks ties)."""
  return (hash_fraction(sha256), sha256)


_CUT_FRACTIONS = (SPLITS[0][1], SPLITS[0][1] + SPLITS[1][1])  # 0.90, 0.95
_NEAR = 3  # Keys kept next to each cut and at each end: enough for every move of a cut below.


def _keep(keys: list, key, smallest: bool) -> list:
  """`keys` (sorted, at most _NEAR) with `key` added, keeping the smallest or largest."""
  if key in keys:
    return keys
  keys = sorted(keys + [key])
  return keys[:_NEAR] if smallest else keys[-_NEAR:]


@dataclasses.dataclass(frozen=True)
class Cuts:
  """The split of a unique good file by its key: train below `train_below`, validation below
  `validation_below`, test above (None: no upper cut). `num_files`: the unique good files."""

  num_files: int
  train_below: Optional[tuple[float, str]]
  validation_below: Optional[tuple[float, str]]

  def split_of(self, sha256: str) -> str:
    key = split_key(sha256)
    if self.train_below is None or key < self.train_below:
      return "train"
    if self.validation_below is None or key < self.validation_below:
      return "validation"
    return "test"


class SplitCuts:
  """Accumulates the unique good files' hashes into `Cuts` (about 90/5/5 by hash).

  The cuts sit at 90 % and 95 % of the hash space. On a corpus too small for that to give
  every split a file (fewer than ~60 files) they move the least needed so no split is empty;
  with fewer than 3 files, all go to `train`. A file's split therefore depends on its content
  only (and, for tiny corpora, on the other files), never on names or listing order.

  Moving a cut needs the key at a given rank; the ranks the rule can ask for are within
  `_NEAR` of an end or of a fixed cut, so those keys are all that is kept besides the counts.
  """

  def __init__(self):
    self.n = 0
    self.below = [0] * len(_CUT_FRACTIONS)  # Files under each fixed cut.
    self.lowest: list = []                   # The smallest keys.
    self.highest: list = []                  # The largest keys.
    self.under: list[list] = [[] for _ in _CUT_FRACTIONS]  # Largest keys under each cut.
    self.over: list[list] = [[] for _ in _CUT_FRACTIONS]   # Smallest keys at/over each cut.

  def add(self, sha256: str) -> "SplitCuts":
    """Adds one unique good file (each hash once)."""
    key = split_key(sha256)
    self.n += 1
    self.lowest = _keep(self.lowest, key, smallest=True)
    self.highest = _keep(self.highest, key, smallest=False)
    for i, cut in enumerate(_CUT_FRACTIONS):
      if key[0] < cut:
        self.below[i] += 1
        self.under[i] = _keep(self.under[i], key, smallest=False)
      else:
        self.over[i] = _keep(self.over[i], key, smallest=True)
    return self

  def merge(self, other: "SplitCuts") -> "SplitCuts":
    self.n += other.n
    for key in other.lowest:
      self.lowest = _keep(self.lowest, key, smallest=True)
    for key in other.highest:
      self.highest = _keep(self.highest, key, smallest=False)
    for i in range(len(_CUT_FRACTIONS)):
      self.below[i] += other.below[i]
      for key in other.under[i]:
        self.under[i] = _keep(self.under[i], key, smallest=False)
      for key in other.over[i]:
        self.over[i] = _keep(self.over[i], key, smallest=True)
    return self

  def _key_at(self, rank: int):
    """The key of rank `rank` (0 = smallest); None past the last one."""
    if rank >= self.n:
      return None
    windows = [(0, self.lowest), (self.n - len(self.highest), self.highest)]
    for i in range(len(_CUT_FRACTIONS)):
      windows += [(self.below[i] - len(self.under[i]), self.under[i]), (self.below[i], self.over[i])]
    for start, keys in windows:
      if start <= rank < start + len(keys):
        return keys[rank - start]
    raise AssertionError(f"no key kept for rank {rank} of {self.n}")  # The rule never asks.

  def cuts(self) -> Cuts:
    n = self.n
    a, b = self.below
    if n < 3:
      a = b = n
    else:
      b = min(max(b, 2), n - 1)
      a = min(max(a, 1), b - 1)
    return Cuts(num_files=n, train_below=self._key_at(a), validation_below=self._key_at(b))


def assign_splits(sha256s: Iterable[str]) -> dict[str, str]:
  """{sha256: split name} for unique content hashes (see `SplitCuts`)."""
  unique = sorted(set(sha256s))
  acc = SplitCuts()
  for sha in unique:
    acc.add(sha)
  cuts = acc.cuts()
  return {sha: cuts.split_of(sha) for sha in unique}


# --------------------------------------------------------------------------- report


def file_event(order, outcome, split: Optional[str]) -> tuple:
  """A file read and not a duplicate: written to `split`, or skipped (split None)."""
  return ("file", order, outcome, split)


def skip_of(event: tuple) -> Optional[tuple[Any, str, str, str]]:
  """(order, reason, name, detail) if the event is a skipped file, else None."""
  if event[0] == "duplicate":
    _, order, name, first_name = event
    return order, "duplicate", name, f"same content as {first_name}"
  _, order, outcome, _ = event
  if outcome.status == "ok":
    return None
  return order, outcome.status, outcome.name, outcome.detail


def tsv_row(reason: str, name: str, detail: str) -> str:
  """One skipped.tsv line (tabs and line breaks inside a field become spaces)."""
  clean = lambda t: " ".join(str(t).split("\t")).replace("\n", " ").replace("\r", " ")
  return f"{clean(reason)}\t{clean(name)}\t{clean(detail)}"


class Report:
  """Accumulates the build report from events (see the module docstring)."""

  def __init__(self):
    self.files_read = 0
    self.recovered = 0
    self.skipped = {r: 0 for r in SKIP_REASONS}
    # Per reason, the (order, name, detail) of the first MAX_LISTED_PER_REASON skips.
    self.listed: dict[str, list[tuple]] = {r: [] for r in SKIP_REASONS}
    self.notes = 0
    self.length = 0
    self.seconds = fractions.Fraction(0)  # Exact: the sum does not depend on the order.
    self.clipped = 0
    self.splits: dict[str, int] = {}

  def skip(self, order, reason: str, name: str, detail: str) -> "Report":
    """Counts one skipped file (and lists it if among the first of its reason)."""
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r} for {name}")
    self.skipped[reason] += 1
    listed = self.listed[reason]
    entry = (order, name, detail)
    if len(listed) < MAX_LISTED_PER_REASON or entry < listed[-1]:
      bisect.insort(listed, entry)
      del listed[MAX_LISTED_PER_REASON:]
    return self

  def add(self, event: tuple) -> "Report":
    """Counts one event (`file_event` or one of `duplicate_events`)."""
    self.files_read += 1
    skipped = skip_of(event)
    if skipped is not None:
      return self.skip(*skipped)
    _, _, outcome, split = event
    self.recovered += int(outcome.recovered)
    self.notes += outcome.num_notes
    self.length += outcome.length
    self.seconds += fractions.Fraction(outcome.seconds)
    self.clipped += outcome.clipped
    self.splits[split] = self.splits.get(split, 0) + 1
    return self

  def merge(self, other: "Report") -> "Report":
    self.files_read += other.files_read
    self.recovered += other.recovered
    for reason in SKIP_REASONS:
      self.skipped[reason] += other.skipped[reason]
      self.listed[reason] = sorted(self.listed[reason] + other.listed[reason])[:MAX_LISTED_PER_REASON]
    self.notes += other.notes
    self.length += other.length
    self.seconds += other.seconds
    self.clipped += other.clipped
    for split, count in other.splits.items():
      self.splits[split] = self.splits.get(split, 0) + count
    return self

  @property
  def examples(self) -> int:
    return sum(self.splits.values())

  def as_dict(self, *, encoding: str, source_notes: Iterable[str] = ()) -> dict[str, Any]:
    """The JSON-safe report stored in `DatasetInfo.metadata["report"]`."""
    return {
        "files_read": self.files_read,
        "recovered_by_tolerant_parser": self.recovered,
        "skipped": dict(self.skipped),
        "skipped_files": {r: [{"name": n, "detail": d} for _, n, d in v]
                          for r, v in self.listed.items()},
        "examples": self.examples,
        "notes": self.notes,
        ("tokens" if encoding == "token" else "characters"): self.length,
        "seconds": round(float(self.seconds), 3),
        "clipped_notes": self.clipped,
        "splits": dict(sorted(self.splits.items())),
        "source_notes": list(source_notes),
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
