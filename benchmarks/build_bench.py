r"""Build throughput and memory of the virtuoso_midi dataset: files/s, notes/s, peak RSS of the
driver and of the workers.

  python benchmarks/build_bench.py --files=10000,100000     # synthetic corpora of that size
  python benchmarks/build_bench.py --files=                 # ../shared/corpora, token and char
  python benchmarks/build_bench.py --files= --corpora=/my/midis --runners=direct --workers=1,4

Synthetic corpora (`make_synthetic_corpus`) are generated deterministically from `--seed` into
a temporary folder, 1000 files a folder: small multi-instrument songs (2 to 4 GM instruments,
drums in half of them, 60 to 400 notes), with shares of corrupt (`CORRUPT`), empty (0 bytes),
note-less and duplicate files. Each build is a fresh subprocess, `python -m
data_pipelines.virtuoso_midi.prepare`, into a temporary data dir, timed end to end (listing,
parse, encode, write, report), with each of `--runners`:
- `in_process`: no Beam options, what the builder does by itself at any size: one file at a
  time in the build process (its parser in one child process), examples spilled to disk;
- `direct`: Beam's Direct runner with `--workers` processes (its runner lives in the driver
  process, which holds the encoded data);
- `portable`: a local stand-in for a cluster: Beam's Python job service
  (`local_job_service_main`) and an external worker pool (`worker_pool_main`), each its own
  process, with the driver submitting to them (`runner=PortableRunner`) as it would to Flink or
  Spark; the job service runs the pipeline with one worker (it takes no worker count).
Memory is sampled every 0.2 s from /proc: the driver's VmHWM (its own high-water mark), the job
service's (`portable` only), the largest VmHWM of any worker process (Beam SDK workers, parser
sandboxes, the worker pool) and the largest sum of their VmRSS seen at once.

Prints one JSON line per figure: {"name", "value", "unit", ...context}.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import psutil

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from virtuoso_jax.encoding import DRUMS, Notes, notes_to_midi  # noqa: E402

DEFAULT_CORPORA = os.environ.get("VIRTUOSO_CORPORA", str(REPO_ROOT.parent / "shared" / "corpora"))

_FILES = flags.DEFINE_string(
    "files", "10000", "Comma-separated sizes of synthetic corpora to build; '' = build "
    "--corpora instead.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic corpora.")
_CORPORA = flags.DEFINE_string("corpora", DEFAULT_CORPORA,
                               "Folder of MIDI files when --files is '' ($VIRTUOSO_CORPORA, "
                               "else ../shared/corpora).")
_CONFIGS = flags.DEFINE_string("configs", "token", "Comma-separated builder configs.")
_WORKERS = flags.DEFINE_string("workers", str(os.cpu_count() or 1),
                               "Comma-separated worker counts of the `direct` runner.")
_RUNNERS = flags.DEFINE_string("runners", "in_process",
                               "Comma-separated: in_process, direct, portable (above).")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 3 * 3600, "Per build.")

# Shares of the synthetic corpus that are not good, unique songs.
CORRUPT, EMPTY, NO_NOTES, DUPLICATE = 0.03, 0.01, 0.01, 0.05
_GM = (0, 4, 19, 24, 25, 33, 40, 48, 56, 65, 71, 73)


def _kind(seed: int, index: int) -> str:
  u = np.random.default_rng([seed, index, 1]).random()
  for kind, share in (("corrupt", CORRUPT), ("empty", EMPTY), ("no_notes", NO_NOTES),
                      ("duplicate", DUPLICATE)):
    if u < share:
      return kind
    u -= share
  return "good"


def synthetic_song(seed: int, index: int) -> bytes:
  """Song `index`: a melody and chords over 2-4 instruments, drums in half (deterministic)."""
  rng = np.random.default_rng([seed, index, 0])
  instruments = [int(i) for i in rng.choice(_GM, size=int(rng.integers(2, 5)), replace=False)]
  if rng.random() < 0.5:
    instruments.append(DRUMS)
  num_notes = int(rng.integers(60, 401))
  step = int(rng.choice((10, 15, 20, 25, 30)))
  rows = []
  for k in range(num_notes):
    inst = instruments[k % len(instruments)]
    pitch = int(rng.integers(35, 60)) if inst == DRUMS else int(rng.integers(36, 90))
    rows.append((k // len(instruments) * step * 4 + int(rng.integers(0, 3)) * step,
                 int(rng.integers(5, 120)), pitch, int(rng.integers(30, 128)), inst))
  rows.sort(key=lambda r: (r[0], r[4], -r[2]))
  return notes_to_midi(Notes.from_rows(rows))


def make_synthetic_corpus(root: pathlib.Path, num_files: int, seed: int) -> dict[str, int]:
  """Writes `num_files` files under `root` (1000 a folder); returns how many of each kind."""
  counts: dict[str, int] = {}
  for index in range(num_files):
    kind = _kind(seed, index)
    if kind == "good":
      data = synthetic_song(seed, index)
    elif kind == "duplicate":
      # The bytes of an earlier good song (a song is generated again rather than kept).
      rng = np.random.default_rng([seed, index, 2])
      earlier = [j for j in rng.integers(0, max(index, 1), size=8) if _kind(seed, int(j)) == "good"]
      kind, data = ("duplicate", synthetic_song(seed, int(earlier[0]))) if earlier else (
          "good", synthetic_song(seed, index))
    elif kind == "corrupt":
      good = synthetic_song(seed, index)
      rng = np.random.default_rng([seed, index, 3])
      data = good[:22] + rng.integers(0, 256, size=200, dtype=np.uint8).tobytes()
    elif kind == "empty":
      data = b""
    else:
      data = notes_to_midi(Notes.empty())
    counts[kind] = counts.get(kind, 0) + 1
    folder = root / f"{index // 1000:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"song_{index:07d}.mid").write_bytes(data)
  return counts


def _vm(pid: int, field: str) -> int:
  """A /proc/<pid>/status field in bytes (0 if the process is gone)."""
  try:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


_ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _descendants(pid: int) -> list[psutil.Process]:
  try:
    return psutil.Process(pid).children(recursive=True)
  except psutil.Error:
    return []


def run_watched(cmd: list[str], timeout_s: float, runner_pid: int | None = None,
                pool_pid: int | None = None) -> dict:
  """Runs `cmd` (the driver), sampling its memory, the job service's (`runner_pid`) and the
  workers' (the driver's descendants, the pool and its descendants)."""
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out:
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=_ENV)
    driver_peak = runner_peak = worker_peak = workers_total = 0
    seen = set()
    while proc.poll() is None:
      if time.perf_counter() - start > timeout_s:
        proc.kill()
        break
      driver_peak = max(driver_peak, _vm(proc.pid, "VmHWM"))
      if runner_pid:
        runner_peak = max(runner_peak, _vm(runner_pid, "VmHWM"))
      workers = [p.pid for p in _descendants(proc.pid)]
      if pool_pid:
        workers += [pool_pid] + [p.pid for p in _descendants(pool_pid)]
      total = 0
      for pid in workers:
        seen.add(pid)
        worker_peak = max(worker_peak, _vm(pid, "VmHWM"))
        total += _vm(pid, "VmRSS")
      workers_total = max(workers_total, total)
      time.sleep(0.2)
    proc.wait()
    out.seek(0)
    text = out.read()
  return {"rc": proc.returncode, "seconds": time.perf_counter() - start, "output": text,
          "driver_peak": driver_peak, "runner_peak": runner_peak, "worker_peak": worker_peak,
          "workers_total_peak": workers_total, "processes": len(seen)}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str) -> None:
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"{what} exited ({proc.returncode})")
    with socket.socket() as s:
      if s.connect_ex(("localhost", port)) == 0:
        return
    time.sleep(0.5)
  raise RuntimeError(f"{what} did not listen on {port}")


class LocalCluster:
  """Beam's Python job service and an external worker pool, each a process of its own."""

  def __enter__(self):
    self.pool_port, self.job_port = _free_port(), _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": _ENV,
             "cwd": REPO_ROOT}
    self.pool = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                                  f"--service_port={self.pool_port}"], **quiet)
    self.jobs = subprocess.Popen([sys.executable, "-m",
                                  "apache_beam.runners.portability.local_job_service_main",
                                  f"--port={self.job_port}"], **quiet)
    _wait_for_port(self.pool_port, self.pool, "the Beam worker pool")
    _wait_for_port(self.job_port, self.jobs, "the Beam job service")
    return self

  def options(self) -> str:
    return (f"runner=PortableRunner,job_endpoint=localhost:{self.job_port},"
            f"environment_type=EXTERNAL,environment_config=localhost:{self.pool_port}")

  def __exit__(self, *exc):
    for proc in (self.jobs, self.pool):
      for child in _descendants(proc.pid):
        child.kill()
      proc.kill()
      proc.wait()


def build(corpus: str, config: str, workers: int, runner: str, tmp: str) -> dict:
  data_dir = tempfile.mkdtemp(prefix="data_", dir=tmp)
  cmd = [sys.executable, "-m", "data_pipelines.virtuoso_midi.prepare", f"--config={config}",
         f"--manual_dir={corpus}", f"--data_dir={data_dir}", f"--num_workers={workers}"]
  if runner == "portable":
    with LocalCluster() as cluster:
      cmd.append(f"--beam_pipeline_options={cluster.options()}")
      result = run_watched(cmd, _TIMEOUT.value, cluster.jobs.pid, cluster.pool.pid)
  elif runner == "direct":
    cmd.append("--beam_pipeline_options=runner=DirectRunner,direct_running_mode=multi_processing,"
               f"direct_num_workers={workers}")
    result = run_watched(cmd, _TIMEOUT.value)
  elif runner == "in_process":
    result = run_watched(cmd, _TIMEOUT.value)
  else:
    raise app.UsageError(f"unknown runner {runner!r}: in_process, direct or portable")
  if result["rc"] != 0:
    raise RuntimeError(f"build failed ({result['rc']}): {result['output'][-3000:]}")
  meta = json.loads((pathlib.Path(data_dir) / "virtuoso_midi" / config / "1.0.0" /
                     "metadata.json").read_text())
  result["report"] = meta["report"]
  result["mode"] = (("beam_portable" if runner == "portable" else "beam_direct")
                    if "with Apache Beam" in result["output"] else "in_process")
  shutil.rmtree(data_dir, ignore_errors=True)
  return result


def emit(name: str, value: float, unit: str, **context) -> None:
  print(json.dumps({"name": name, "value": value, "unit": unit, **context}), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  tmp = tempfile.mkdtemp(prefix="build_bench_", dir=os.environ.get("VIRTUOSO_BUILD_TMP") or None)
  try:
    corpora = []
    for size in [int(s) for s in _FILES.value.split(",") if s]:
      root = pathlib.Path(tmp) / f"synthetic_{size}"
      start = time.perf_counter()
      counts = make_synthetic_corpus(root, size, _SEED.value)
      print(f"# synthetic corpus of {size} files {counts} in {time.perf_counter() - start:.0f} s",
            file=sys.stderr, flush=True)
      corpora.append((str(root), {"corpus": "synthetic", "seed": _SEED.value, "kinds": counts}))
    if not corpora:
      if not pathlib.Path(_CORPORA.value).is_dir():
        sys.exit(f"corpora folder not found: {_CORPORA.value} (set --corpora or VIRTUOSO_CORPORA)")
      corpora.append((_CORPORA.value, {"corpus": _CORPORA.value}))
    runs = [(config, workers, runner) for config in _CONFIGS.value.split(",")
            for runner in _RUNNERS.value.split(",")
            for workers in ([int(w) for w in _WORKERS.value.split(",")] if runner == "direct" else [1])]
    for corpus, about in corpora:
      for config, workers, runner in runs:
        r = build(corpus, config, workers, runner, tmp)
        report, seconds = r["report"], r["seconds"]
        context = {"config": config, "workers": workers, "cores": os.cpu_count(),
                   "mode": r["mode"], "files": report["files_read"],
                   "examples": report["examples"], "notes": report["notes"],
                   "skipped": report["skipped"], "seconds": round(seconds, 1),
                   "processes_seen": r["processes"], **about}
        emit("build_files_per_s", round(report["files_read"] / seconds, 1), "files/s", **context)
        emit("build_notes_per_s", round(report["notes"] / seconds), "notes/s", **context)
        for name, key in (("build_driver_peak_rss", "driver_peak"),
                          ("build_runner_peak_rss", "runner_peak"),
                          ("build_worker_peak_rss", "worker_peak"),
                          ("build_workers_total_peak_rss", "workers_total_peak")):
          if key != "runner_peak" or runner == "portable":
            emit(name, round(r[key] / 2**20, 1), "MiB", **context)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
