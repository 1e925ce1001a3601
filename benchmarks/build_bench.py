r"""Build throughput of the virtuoso_midi dataset: files/s and notes/s, 1 worker vs all cores.

  python benchmarks/build_bench.py                       # ../shared/corpora, token and char
  python benchmarks/build_bench.py --corpora=/my/midis --configs=token --workers=1,4,16
  python benchmarks/build_bench.py --copies=8    # 8 copies: enough work to amortize workers

Each run is a fresh TF-free `download_and_prepare(file_format='array_record')` of the
`--manual_dir` config into a temporary data dir (parse + encode + write + report), timed end
to end. Prints one JSON line per figure: {"name", "value", "unit", ...context}.
"""

import json
import shutil
import os
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import tensorflow_datasets as tfds  # noqa: E402

from data_pipelines.virtuoso_midi import processing  # noqa: E402
from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm  # noqa: E402

DEFAULT_CORPORA = os.environ.get("VIRTUOSO_CORPORA", str(REPO_ROOT.parent / "shared" / "corpora"))

_CORPORA = flags.DEFINE_string("corpora", DEFAULT_CORPORA,
                               "Folder of MIDI files ($VIRTUOSO_CORPORA, else ../shared/corpora).")
_CONFIGS = flags.DEFINE_string("configs", "token,char", "Comma-separated builder configs.")
_WORKERS = flags.DEFINE_string("workers", f"1,{processing.default_num_workers()}",
                               "comma-separated worker counts")
_COPIES = flags.DEFINE_integer(
    "copies", 1, "build over this many copies of the corpus (hard links, else copies)")


def replicate(corpora: str, copies: int, tmp: str) -> str:
  """A folder with `copies` copies of the corpus (copies > 1 parse and encode the same files
  again, then collapse as duplicates: a bigger load for the parallel figure). Files are hard
  links where the file system allows (else copies): the builder walks each real folder once, so
  symlinked folders would be read once and the load would not grow."""
  if copies == 1:
    return corpora
  root = pathlib.Path(tmp) / "replicated"
  src = pathlib.Path(corpora).resolve()
  for i in range(copies):
    for path in sorted(src.rglob("*")):
      if not path.is_file():
        continue
      dest = root / f"copy{i:02d}" / path.relative_to(src)
      dest.parent.mkdir(parents=True, exist_ok=True)
      try:
        os.link(path, dest)
      except OSError:  # Another file system, or links not allowed: copy the bytes.
        shutil.copyfile(path, dest)
  return str(root)


def build_once(corpora: str, config: str, workers: int) -> dict:
  with tempfile.TemporaryDirectory() as data_dir:
    builder = vm.Builder(config=config, data_dir=data_dir, num_workers=workers)
    start = time.perf_counter()
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=corpora))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "report": dict(builder.info.metadata["report"])}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not pathlib.Path(_CORPORA.value).is_dir():
    sys.exit(f"corpora folder not found: {_CORPORA.value} (set --corpora or VIRTUOSO_CORPORA)")
  copies = _COPIES.value
  cores = processing.default_num_workers()
  tmp = tempfile.mkdtemp(prefix="build_bench_")
  corpora = replicate(_CORPORA.value, copies, tmp)
  for config in _CONFIGS.value.split(","):
    for workers in [int(w) for w in _WORKERS.value.split(",")]:
      result = build_once(corpora, config, workers)
      report, seconds = result["report"], result["seconds"]
      # Every copy is parsed and encoded before duplicates collapse: count its notes too.
      notes = report["notes"] * copies
      context = {"config": config, "workers": workers, "cores": cores, "copies": copies,
                 "files": report["files_read"], "notes": notes,
                 "seconds": round(seconds, 3)}
      for name, value, unit in (
          ("build_files_per_s", report["files_read"] / seconds, "files/s"),
          ("build_notes_per_s", notes / seconds, "notes/s")):
        print(json.dumps({"name": name, "value": round(value, 1), "unit": unit, **context}),
              flush=True)
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
