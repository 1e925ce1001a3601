r"""Compares two prepared virtuoso_midi datasets record for record and report for report.

  python -m data_pipelines.virtuoso_midi.compare DIR_A DIR_B

Each DIR is a prepared version folder (`<data_dir>/virtuoso_midi/<config>/<version>`). Prints
one line per difference and exits 1 if there is any, else prints what was compared and exits 0.
Tests call `differences(dir_a, dir_b)`.

What "equal" means here:
- the same splits, each with the same records in the same order, every feature equal (name,
  sha256, ids or text, num_notes, instruments, seconds, clipped);
- the same DatasetInfo: dataset_info.json (splits with their shard lengths and bytes, features,
  config, version, file format), features.json and metadata.json (the encoding and the build
  report), except what names the files rather than the data: `description` (the README
  text), `moduleName` (how the builder was imported) and the report's `skipped_list` (a path
  inside the data dir, compared relative to it);
- the same skipped.tsv rows (as a multiset: a Beam build writes them in any order).
"""

from __future__ import annotations

import collections
import json
import os
import sys
from typing import Any

from etils import epath
import numpy as np

# dataset_info.json fields that describe how a dataset was built or documented, not its data.
IGNORED_INFO_FIELDS = ("description", "moduleName")
SKIPPED_TSV = "skipped.tsv"


def _read_json(path: epath.Path) -> Any:
  return json.loads(path.read_text()) if path.exists() else None


def _split_names(info: dict[str, Any] | None) -> list[str]:
  return [s["name"] for s in (info or {}).get("splits", [])]


def _normalized_metadata(folder: epath.Path) -> Any:
  """metadata.json with the report's `skipped_list` made relative to `folder`."""
  meta = _read_json(folder / "metadata.json")
  report = (meta or {}).get("report")
  if isinstance(report, dict) and report.get("skipped_list"):
    report["skipped_list"] = os.path.relpath(report["skipped_list"], os.fspath(folder))
  return meta


def _skipped_rows(folder: epath.Path) -> collections.Counter | None:
  path = folder / SKIPPED_TSV
  if not path.exists():
    return None
  lines = path.read_text().splitlines()
  return collections.Counter(lines[1:]) + collections.Counter({f"header: {lines[0]}": 1}
                                                              if lines else {})


def _value_equal(a: Any, b: Any) -> bool:
  if isinstance(a, dict) or isinstance(b, dict):
    return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
            and all(_value_equal(a[k], b[k]) for k in a))
  a, b = np.asarray(a), np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


def _describe(record: dict[str, Any]) -> str:
  name = record.get("name", b"?")
  return name.decode() if isinstance(name, bytes) else str(name)


def _compare_info(a: epath.Path, b: epath.Path) -> list[str]:
  out = []
  info_a, info_b = _read_json(a / "dataset_info.json"), _read_json(b / "dataset_info.json")
  if info_a is None or info_b is None:
    return [f"dataset_info.json missing in {a if info_a is None else b}"]
  for key in sorted(set(info_a) | set(info_b)):
    if key not in IGNORED_INFO_FIELDS and info_a.get(key) != info_b.get(key):
      out.append(f"dataset_info.json[{key!r}]: {info_a.get(key)!r} != {info_b.get(key)!r}")
  if _read_json(a / "features.json") != _read_json(b / "features.json"):
    out.append("features.json differs")
  meta_a, meta_b = _normalized_metadata(a), _normalized_metadata(b)
  for key in sorted(set(meta_a or {}) | set(meta_b or {})):
    va, vb = (meta_a or {}).get(key), (meta_b or {}).get(key)
    if key == "report" and isinstance(va, dict) and isinstance(vb, dict):
      out += [f"report[{k!r}]: {va.get(k)!r} != {vb.get(k)!r}"
              for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    elif va != vb:
      out.append(f"metadata[{key!r}]: {va!r} != {vb!r}")
  rows_a, rows_b = _skipped_rows(a), _skipped_rows(b)
  if rows_a != rows_b:
    only_a = sorted((rows_a or collections.Counter()) - (rows_b or collections.Counter()))
    only_b = sorted((rows_b or collections.Counter()) - (rows_a or collections.Counter()))
    out.append(f"{SKIPPED_TSV} rows differ: only in A {only_a[:5]}, only in B {only_b[:5]}")
  return out


def _compare_records(a: epath.Path, b: epath.Path, split: str) -> tuple[list[str], int]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source_a = tfds.builder_from_directory(os.fspath(a)).as_data_source(split=split)
  source_b = tfds.builder_from_directory(os.fspath(b)).as_data_source(split=split)
  if len(source_a) != len(source_b):
    return [f"{split}: {len(source_a)} records != {len(source_b)}"], 0
  out = []
  for i in range(len(source_a)):
    ra, rb = source_a[i], source_b[i]
    if not _value_equal(ra, rb):
      fields = sorted(k for k in set(ra) | set(rb)
                      if k not in ra or k not in rb or not _value_equal(ra[k], rb[k]))
      out.append(f"{split}[{i}]: {_describe(ra)} != {_describe(rb)} (fields {fields})")
      if len(out) >= 10:
        out.append(f"{split}: stopped after 10 differing records")
        break
  return out, len(source_a)


def differences(dir_a: str | os.PathLike, dir_b: str | os.PathLike) -> list[str]:
  """Every difference between two prepared version folders ([] when they are equal)."""
  a, b = epath.Path(dir_a), epath.Path(dir_b)
  out = _compare_info(a, b)
  splits_a = _split_names(_read_json(a / "dataset_info.json"))
  splits_b = _split_names(_read_json(b / "dataset_info.json"))
  for split in sorted(set(splits_a) & set(splits_b)):
    out += _compare_records(a, b, split)[0]
  return out


def count_records(folder: str | os.PathLike) -> int:
  """Records in every split of a prepared version folder."""
  info = _read_json(epath.Path(folder) / "dataset_info.json") or {}
  return sum(int(n) for s in info.get("splits", []) for n in s.get("shardLengths", []))


def main(argv: list[str]) -> int:
  if len(argv) != 3:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  found = differences(argv[1], argv[2])
  for line in found:
    print(line)
  if found:
    print(f"DIFFERENT: {len(found)} difference(s)")
    return 1
  print(f"EQUAL: {count_records(argv[1])} records, DatasetInfo, report and skipped.tsv")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
