"""virtuoso_midi against hostile input: quiet output, a file that breaks the parser in any way,
archive bombs and tricks, symlink loops. Hermetic: every MIDI file is written here with
`notes_to_midi` from synthetic notes (no ../shared corpora)."""

import io
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import tensorflow_datasets as tfds

from data_pipelines.virtuoso_midi import aggregation
from data_pipelines.virtuoso_midi import processing
from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm
from virtuoso_jax.encoding import EncodingConfig, Notes, notes_to_midi

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
HOSTILE_PARSER = "virtuoso_midi_hostile_parser:parse"  # tests/virtuoso_midi_hostile_parser.py
MIB = 1 << 20


def song(seed: int) -> bytes:
  """A small, valid, distinct MIDI file."""
  rows = [(t * 25, 20, 48 + (seed * 7 + t * 5) % 36, 60 + t % 40, (seed % 3) * 24)
          for t in range(12 + seed % 5)]
  return notes_to_midi(Notes.from_rows(rows))


def build(data_dir, config, manual_dir, beam_options=None):
  """Builds in this process, or with Beam given `beam_options` (e.g. `IN_MEMORY_BEAM`)."""
  builder = vm.Builder(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                                   beam_options=beam_options))
  return builder


def in_memory_beam():
  """Beam's Direct runner in this process: the Beam path at the least start-up cost (the
  DoFns run here, so a test's sys.path and monkeypatches reach them)."""
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  return pipeline_options.PipelineOptions(["--runner=DirectRunner",
                                           "--direct_running_mode=in_memory"])


def written_names(builder) -> list[str]:
  names = []
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    names.extend(source[i]["name"].decode() for i in range(len(source)))
  return sorted(names)


def skipped(report) -> dict[str, tuple[str, str]]:
  """{name: (reason, detail)} of every file the report lists as skipped."""
  return {e["name"]: (reason, e["detail"])
          for reason, entries in report["skipped_files"].items() for e in entries}


def limited_config(name: str, max_file_bytes: int = MIB) -> vm.VirtuosoMidiConfig:
  return vm.VirtuosoMidiConfig(name=name, source="manual", encoding="token",
                               encoding_config=EncodingConfig(max_file_bytes=max_file_bytes))


# --------------------------------------------------------------------------- 7: quiet output


def test_prepare_prints_our_lines_and_the_report_only(tmp_path):
  corpus = tmp_path / "midis"
  corpus.mkdir()
  for i in range(3):
    (corpus / f"s{i}.mid").write_bytes(song(i))
  (corpus / "bad.mid").write_bytes(b"MThd garbage")
  cmd = [sys.executable, "-m", "data_pipelines.virtuoso_midi.prepare", "--config=token",
         f"--manual_dir={corpus}", f"--data_dir={tmp_path / 'tfds'}", "--num_workers=1"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  env.pop("VIRTUOSO_VERBOSE", None)
  res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  out = res.stdout + res.stderr
  assert res.returncode == 0, out[-3000:]
  for noise in ("\x1b[", "\r", "Shuffling", "Downloading and preparing", "Generating",
                "Subsequent calls will reuse", "Done writing"):
    assert noise not in out, (noise, out)
  assert "[virtuoso_midi] encoding (token): 4/4 files" in out
  assert "build report" in out and "examples written:  3" in out
  assert "corrupt: bad.mid: " in out
  assert "[virtuoso_midi] done in" in out
  # Every line is ours: a [virtuoso_midi] line or an indented report line.
  assert all(l.startswith(("[virtuoso_midi]", "  ")) for l in res.stdout.splitlines() if l), res.stdout
  verbose = subprocess.run(cmd + ["--overwrite", "--verbose"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=300, env=env)
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "Downloading and preparing" in verbose.stdout + verbose.stderr


# --------------------------------------------------------------------------- 9: any failure of a file


HOSTILE = {
    "raise_runtime.mid": (b"RAISE:RuntimeError", "corrupt", "RuntimeError: hostile file"),
    "raise_key.mid": (b"RAISE:KeyError", "corrupt", "KeyError:"),
    "raise_type.mid": (b"RAISE:TypeError", "corrupt", "TypeError: hostile file"),
    "raise_memory.mid": (b"RAISE:MemoryError", "over_limit", "MemoryError: hostile file"),
    "raise_recursion.mid": (b"RAISE:RecursionError", "corrupt", "RecursionError:"),
    "exits.mid": (b"EXIT", "corrupt", "the parser process died on it (exit code 3)"),
    "segfaults.mid": (b"SEGV", "corrupt", "the parser process died on it (killed by SIGSEGV)"),
    "hangs.mid": (b"HANG", "over_limit", "took more than 3 s"),
}


@pytest.fixture
def hostile_parser(monkeypatch):
  """Builds parse with tests/virtuoso_midi_hostile_parser.py (in the spawned workers too)."""
  monkeypatch.syspath_prepend(os.fspath(pathlib.Path(__file__).parent))
  monkeypatch.setattr(vm.VirtuosoMidiConfig, "settings", lambda self: processing.Settings(
      encoding=self.encoding, encoding_config=self.encoding_config.to_dict(),
      parser=HOSTILE_PARSER))


@pytest.mark.parametrize("with_beam", [False, True], ids=["in_process", "beam"])
def test_any_failure_of_one_file_is_that_files_skip(tmp_path, monkeypatch, hostile_parser,
                                                     with_beam):
  del hostile_parser
  monkeypatch.setenv("VIRTUOSO_FILE_TIMEOUT", "3")
  corpus = tmp_path / "midis"
  corpus.mkdir()
  goods = [f"good_{i}.mid" for i in range(6)]
  for i, name in enumerate(goods):
    (corpus / name).write_bytes(song(i))
  for name, (data, _, _) in HOSTILE.items():
    (corpus / name).write_bytes(data)
  start = time.monotonic()
  builder = build(tmp_path / "tfds", "token", corpus,
                  beam_options=in_memory_beam() if with_beam else None)
  assert time.monotonic() - start < 60
  report = builder.info.metadata["report"]
  assert written_names(builder) == goods  # No good file is lost to a bad one.
  listed = skipped(report)
  assert set(listed) == set(HOSTILE), listed
  for name, (_, reason, detail) in HOSTILE.items():
    assert listed[name][0] == reason and detail in listed[name][1], (name, listed[name])
  assert report["files_read"] == len(goods) + len(HOSTILE)
  # Every skip is also in skipped.tsv next to the shards (the metadata lists up to 200 a reason).
  tsv = pathlib.Path(report["skipped_list"])
  assert tsv.parent == pathlib.Path(builder.data_dir) and tsv.name == aggregation.SKIPPED_TSV
  rows = [l.split("\t") for l in tsv.read_text().splitlines()[1:]]
  assert {n: r for r, n, _ in rows} == {n: v[1] for n, v in HOSTILE.items()}


def test_a_beam_build_of_too_few_files_says_why(tmp_path):
  """TFDS's Beam writer refuses an empty split: under 3 usable files the pipeline stops with
  a CorpusError that says so (the in-process build puts them all in train)."""
  corpus = tmp_path / "midis"
  corpus.mkdir()
  for i in range(2):
    (corpus / f"s{i}.mid").write_bytes(song(i))
  (corpus / "bad.mid").write_bytes(b"MThd garbage")
  with pytest.raises(vm.CorpusError, match="only 2 usable distinct MIDI file.*needs at least 3"):
    build(tmp_path / "beam", "token", corpus, beam_options=in_memory_beam())
  assert build(tmp_path / "local", "token", corpus).info.metadata["report"]["splits"] == {"train": 2}


def test_the_metadata_lists_the_first_skips_whatever_the_merge_order():
  n = aggregation.MAX_LISTED_PER_REASON + 50
  skips = [((1, i), "corrupt", f"bad_{i}.mid", f"reason {i}") for i in range(n)]
  whole = aggregation.Report()
  for s in skips:
    whole.skip(*s)
  # As Beam combines: partial reports of interleaved parts, merged in any order.
  parts = [aggregation.Report() for _ in range(3)]
  for i, s in enumerate(reversed(skips)):
    parts[i % 3].skip(*s)
  merged = parts[2].merge(parts[0]).merge(parts[1])
  for report in (whole, merged):
    stored = report.as_dict(encoding="token")
    assert stored["skipped"]["corrupt"] == n
    assert [e["name"] for e in stored["skipped_files"]["corrupt"]] == [
        f"bad_{i}.mid" for i in range(aggregation.MAX_LISTED_PER_REASON)]
  assert aggregation.tsv_row("corrupt", "a\tb.mid", "line\nbreak") == "corrupt\ta b.mid\tline break"


def test_a_fuzzed_corpus_builds_and_accounts_for_every_file(tmp_path):
  """The real parser on malformed MIDI (tests/midi_fuzz.py): every file is written or listed
  in skipped.tsv with a reason, and no good file is lost."""
  midi_fuzz = pytest.importorskip("midi_fuzz")
  corpus = tmp_path / "midis"
  hostile = midi_fuzz.make_hostile_corpus(corpus / "fuzz", n=64, seed=3)
  goods = [f"good/g{i}.mid" for i in range(8)]
  (corpus / "good").mkdir()
  for i, name in enumerate(goods):
    (corpus / name).write_bytes(song(100 + i))
  builder = build(tmp_path / "tfds", "token", corpus)
  report = builder.info.metadata["report"]
  written = written_names(builder)
  assert set(goods) <= set(written)
  rows = [l.split("\t") for l in pathlib.Path(report["skipped_list"]).read_text().splitlines()[1:]]
  skipped_names = [n for _, n, _ in rows]
  assert all(r in aggregation.SKIP_REASONS and d for r, _, d in rows), rows
  everything = sorted(goods + [f"fuzz/{p.name}" for p, _ in hostile])
  assert sorted(written + skipped_names) == everything
  assert report["files_read"] == len(everything)


def test_a_sandbox_outlives_the_files_that_kill_its_process(tmp_path, monkeypatch):
  """One FileSandbox, files in a row: each crash or hang is that file's outcome, the next file
  gets a fresh process and its own example."""
  monkeypatch.syspath_prepend(os.fspath(pathlib.Path(__file__).parent))
  contents = [song(1), b"SEGV", song(2), b"EXIT", b"HANG", song(3), b"RAISE:ValueError", song(4)]
  items = []
  for i, data in enumerate(contents):
    (tmp_path / f"{i}.mid").write_bytes(data)
    items.append(processing.Item(f"{i}.mid", os.fspath(tmp_path / f"{i}.mid")))
  settings = processing.Settings("token", EncodingConfig().to_dict(), parser=HOSTILE_PARSER)
  sandbox = processing.FileSandbox(settings, timeout_s=2)
  try:
    results = [sandbox.process(item) for item in items]
  finally:
    sandbox.close()
  assert [o.name for o, _ in results] == [i.name for i in items]
  assert [o.status for o, _ in results] == ["ok", "corrupt", "ok", "corrupt", "over_limit", "ok",
                                            "corrupt", "ok"]
  assert [ex["name"] for _, ex in results if ex is not None] == ["0.mid", "2.mid", "5.mid", "7.mid"]
  assert "killed by SIGSEGV" in results[1][0].detail and "exit code 3" in results[3][0].detail


def test_keyboard_interrupt_is_not_swallowed(monkeypatch, tmp_path):
  (tmp_path / "a.mid").write_bytes(song(1))
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(processing, "_parser", lambda settings: interrupted)
  settings = processing.Settings("token", EncodingConfig().to_dict())
  with pytest.raises(KeyboardInterrupt):
    processing.process_item(processing.Item("a.mid", os.fspath(tmp_path / "a.mid")), settings)


# --------------------------------------------------------------------------- 10: archives


def write_zip_bomb(path: pathlib.Path, mib: int, extra: dict[str, bytes] = None):
  """A zip whose `zeros.mid` inflates to `mib` MiB of zeros (about 1000:1)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    with z.open("zeros.mid", "w", force_zip64=True) as f:
      block = bytes(MIB)
      for _ in range(mib):
        f.write(block)
    for name, data in (extra or {}).items():
      z.writestr(name, data)


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
  bomb = tmp_path / "bomb.zip"
  write_zip_bomb(bomb, 256)
  assert bomb.stat().st_size < 2 * MIB
  item = processing.Item("bomb.zip/zeros.mid", os.fspath(bomb), "zeros.mid")
  start = time.monotonic()
  with pytest.raises(processing.SkipFile) as e:
    processing.read_item(item, 64 * MIB)
  assert time.monotonic() - start < 1.0
  assert e.value.reason == "over_limit" and "zip header" in e.value.detail


def test_reads_stop_past_the_limit_whatever_the_header_says():
  class Endless(io.RawIOBase):
    served = 0
    def read(self, n=-1):
      n = MIB if n is None or n < 0 else n
      Endless.served += n
      return bytes(n)
  with pytest.raises(processing.SkipFile, match="more than 1048576 bytes"):
    processing._bounded_read(Endless(), MIB, "member")  # pylint: disable=protected-access
  assert Endless.served <= MIB + 1


def test_zip_bomb_in_a_corpus_is_reported_and_the_rest_builds(tmp_path):
  corpus = tmp_path / "midis"
  corpus.mkdir()
  (corpus / "a.mid").write_bytes(song(1))
  write_zip_bomb(corpus / "bomb.zip", 64, {"inside/good.mid": song(2)})
  builder = build(tmp_path / "tfds", limited_config("token_test_bomb"), corpus)
  assert written_names(builder) == ["a.mid", "bomb.zip/inside/good.mid"]
  listed = skipped(builder.info.metadata["report"])
  assert listed["bomb.zip/zeros.mid"][0] == "over_limit"
  assert "67108864 bytes uncompressed (zip header)" in listed["bomb.zip/zeros.mid"][1]


def tar_add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  for k, v in fields.items():
    setattr(info, k, v)
  tar.addfile(info, io.BytesIO(data) if data else None)


def test_tar_tricks_are_not_read_and_each_is_reported(tmp_path):
  corpus = tmp_path / "midis"
  corpus.mkdir()
  inner = io.BytesIO()
  with zipfile.ZipFile(inner, "w") as z:
    z.writestr("hidden.mid", song(9))
  with tarfile.open(corpus / "pack.tar.gz", "w:gz", format=tarfile.PAX_FORMAT) as tar:
    tar_add(tar, "pack/good.mid", song(1))
    tar_add(tar, "../escape.mid", song(2))
    tar_add(tar, "/etc/absolute.mid", song(3))
    tar_add(tar, "pack/sym.mid", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    tar_add(tar, "pack/hard.mid", type=tarfile.LNKTYPE, linkname="pack/good.mid")
    tar_add(tar, "pack/fifo.mid", type=tarfile.FIFOTYPE)
    tar_add(tar, "pack/inner.zip", inner.getvalue())
    tar_add(tar, "pack/big.mid", bytes(2 * MIB))
    tar_add(tar, "pack/ctl\x1b[31m\n.mid", song(4))
    tar_add(tar, "pack/notes.txt", b"not midi: ignored")
  builder = build(tmp_path / "tfds", limited_config("token_test_tar"), corpus)
  assert written_names(builder) == ["pack.tar.gz/pack/ctl\\x1b[31m\\n.mid",
                                    "pack.tar.gz/pack/good.mid"]
  listed = skipped(builder.info.metadata["report"])
  expected = {
      "pack.tar.gz/../escape.mid": ("unsupported", "outside the archive"),
      "pack.tar.gz//etc/absolute.mid": ("unsupported", "absolute path"),
      "pack.tar.gz/pack/sym.mid": ("unsupported", "a symbolic link to '/etc/passwd'"),
      "pack.tar.gz/pack/hard.mid": ("unsupported", "a hard link to 'pack/good.mid'"),
      "pack.tar.gz/pack/fifo.mid": ("unsupported", "not a regular file"),
      "pack.tar.gz/pack/inner.zip": ("unsupported", "an archive inside an archive"),
      "pack.tar.gz/pack/big.mid": ("over_limit", "2097152 bytes (tar header)"),
  }
  assert set(listed) == set(expected), listed
  for name, (reason, detail) in expected.items():
    assert listed[name][0] == reason and detail in listed[name][1], (name, listed[name])


def test_a_tar_never_fills_the_disk(tmp_path, monkeypatch):
  with tarfile.open(tmp_path / "many.tar", "w") as tar:
    for i in range(3):
      tar_add(tar, f"m/{i}.mid", song(i))
  real = processing.shutil.disk_usage
  # Free space as each member is about to be extracted: room for the first one only.
  frees = iter([processing.MIN_FREE_BYTES + MIB] + [processing.MIN_FREE_BYTES + 10] * 2)
  monkeypatch.setattr(processing.shutil, "disk_usage", lambda p: real(p)._replace(free=next(frees)))
  listing = processing.Listing()
  items = processing.tar_items(processing.epath.Path(tmp_path / "many.tar"), "many.tar",
                               os.fspath(tmp_path / "x"), MIB, listing)
  assert [i.name for i in items] == ["many.tar/m/0.mid"]
  assert [(n, r) for n, r, _ in listing.skips] == [("many.tar/m/1.mid", "over_limit"),
                                                   ("many.tar/m/2.mid", "over_limit")]
  assert "VIRTUOSO_BUILD_TMP" in listing.skips[0][2]


def test_zip_member_names_are_safe_readable_and_unique(tmp_path):
  corpus = tmp_path / "midis"
  corpus.mkdir()
  inner = io.BytesIO()
  with zipfile.ZipFile(inner, "w") as z:
    z.writestr("hidden.mid", song(9))
  long_a, long_b = "x" * 200 + "a.mid", "x" * 200 + "b.mid"
  with zipfile.ZipFile(corpus / "songs.zip", "w") as z:
    z.writestr("ok/one.mid", song(1))
    z.writestr("bell\x07\x1b]0;title\x07.mid", song(2))
    z.writestr(long_a, song(3))
    z.writestr(long_b, song(4))
    z.writestr("../up.mid", song(5))
    z.writestr("nested.zip", inner.getvalue())
    link = zipfile.ZipInfo("link.mid")
    link.external_attr = (0o120777 << 16)  # A symlink, as `zip --symlinks` stores it.
    z.writestr(link, "/etc/passwd")
  builder = build(tmp_path / "tfds", "token", corpus)
  names = written_names(builder)
  assert len(names) == 4 and "songs.zip/ok/one.mid" in names
  assert "songs.zip/bell\\x07\\x1b]0;title\\x07.mid" in names
  for name in names:
    assert name.isprintable() and all(len(p) <= processing.MAX_NAME_PART for p in name.split("/"))
  longs = [n for n in names if n.startswith("songs.zip/xxx")]
  assert len(longs) == 2 and longs[0] != longs[1] and all(n.endswith(".mid") for n in longs)
  listed = skipped(builder.info.metadata["report"])
  assert listed["songs.zip/../up.mid"][0] == "unsupported"
  assert "an archive inside an archive" in listed["songs.zip/nested.zip"][1]
  assert "a symbolic link" in listed["songs.zip/link.mid"][1]


def test_a_fifo_named_like_midi_is_not_read(tmp_path):
  os.mkfifo(tmp_path / "pipe.mid")
  item = processing.Item("pipe.mid", os.fspath(tmp_path / "pipe.mid"))
  outcome, example = processing.process_item(
      item, processing.Settings("token", EncodingConfig().to_dict()))
  assert example is None and outcome.status == "unsupported" and "fifo" in outcome.detail


def test_unique_names():
  items = [processing.Item(n, "p") for n in ("a/x.mid", "a/x.mid", "a/x~2.mid", "a/x.mid", "b")]
  assert [i.name for i in processing.unique_names(items)] == [
      "a/x.mid", "a/x~2.mid", "a/x~2~2.mid", "a/x~3.mid", "b"]


# --------------------------------------------------------------------------- 10: folder walk


def test_symlink_loops_end_and_each_file_is_read_once(tmp_path):
  root = tmp_path / "midis"
  (root / "a").mkdir(parents=True)
  (root / "b").mkdir()
  (root / "a" / "x.mid").write_bytes(song(1))
  (root / "b" / "y.mid").write_bytes(song(2))
  (root / "a" / "loop_to_root").symlink_to(root, target_is_directory=True)
  (root / "b" / "loop_to_a").symlink_to(root / "a", target_is_directory=True)
  (root / "b" / "y_again.mid").symlink_to(root / "b" / "y.mid")
  def too_long(*_):
    raise TimeoutError("the folder walk did not end")
  old = signal.signal(signal.SIGALRM, too_long)
  signal.alarm(20)
  try:
    listing = processing.Listing()
    items, archives = processing.walk_midi_files(processing.epath.Path(root), "", listing)
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
  assert [i.name for i in items] == ["a/x.mid", "b/y.mid"] and not archives
  assert listing.skips == [("b/y_again.mid", "duplicate",
                            "the same file as b/y.mid (a link); read once")]
  assert sorted(listing.notes) == [
      "a/loop_to_root/: a link to a folder already read; not read again",
      "b/loop_to_a/: a link to a folder already read; not read again"]
