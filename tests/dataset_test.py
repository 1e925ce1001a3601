"""The virtuoso_midi dataset, built TF-free (`download_and_prepare(file_format='array_record')`)
and read back with `tfds.data_source`. TensorFlow-based checks (DatasetBuilderTestCase) live
next to the builder in `data_pipelines/virtuoso_midi/virtuoso_midi_dataset_builder_test.py`."""

import array
import itertools
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
from unittest import mock

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds

import hermetic_corpus  # tests/ is on sys.path (imports no jax)

from data_pipelines.virtuoso_midi import aggregation
from data_pipelines.virtuoso_midi import compare
from data_pipelines.virtuoso_midi import processing
from data_pipelines.virtuoso_midi import virtuoso_midi_dataset_builder as vm
from virtuoso_jax.encoding import CharCodec, EncodingConfig, Notes, TokenCodec, midi_to_notes, notes_to_midi

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DUMMY = REPO_ROOT / "data_pipelines" / "virtuoso_midi" / "dummy_data"
SPLIT_NAMES = ("train", "validation", "test")


def build(data_dir, config, manual_dir=None, num_workers=1, download_dir=None, beam_options=None):
  builder = vm.Builder(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers)
  builder.download_and_prepare(
      file_format="array_record",
      download_dir=os.fspath(download_dir) if download_dir else None,
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir) if manual_dir else None, beam_options=beam_options))
  return builder


def read_all(builder):
  """{split: [example, ...]} through tfds.data_source (array_record random access)."""
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split=split)
    out[split] = [source[i] for i in range(len(source))]
  return out


def decode_report_is_clean(report) -> bool:
  """No fragment of a written record was skipped by the decoder."""
  return not any(v for k, v in report.items() if "skip" in k)


def as_str(value):
  return value.decode() if isinstance(value, bytes) else value


def assert_same_notes(a: Notes, b: Notes, what: str):
  assert len(a) == len(b), f"{what}: {len(a)} notes != {len(b)}"
  for field in ("onset", "duration", "pitch", "velocity", "instrument"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{what}: {field}")


@pytest.fixture(scope="module")
def dummy_token_build(tmp_path_factory):
  builder = build(tmp_path_factory.mktemp("tfds"), "token", manual_dir=DUMMY)
  return builder, read_all(builder)


def test_dummy_build_reads_back_with_data_source(dummy_token_build):
  builder, records = dummy_token_build
  # Reopen the prepared dataset by name, as training does.
  source = tfds.data_source("virtuoso_midi/token", data_dir=os.fspath(builder.data_dir).rsplit("/virtuoso_midi/", 1)[0],
                            split="train")
  assert len(source) == len(records["train"])
  examples = [ex for split in records.values() for ex in split]
  names = sorted(as_str(ex["name"]) for ex in examples)
  assert len(names) == 12, names
  assert "archives/more_songs.zip/more/song_11.mid" in names
  # The duplicate pair collapses to the first copy in name order.
  assert "songs/copy_of_song_01.mid" in names and "songs/song_01.mid" not in names
  codec = TokenCodec(EncodingConfig())
  for ex in examples:
    ids = ex["ids"]
    assert ids.dtype == np.int32 and ids[0] == codec.bos_id and ids[-1] == codec.eos_id
    name = as_str(ex["name"])
    path = (DUMMY / name) if ".zip/" not in name else None
    if path is not None:
      assert as_str(ex["sha256"]) == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
      source_notes = midi_to_notes(path)
      assert_same_notes(codec.decode(ids), codec.quantize(source_notes), name)
      assert ex["num_notes"] == len(source_notes)
      np.testing.assert_array_equal(ex["instruments"], [0, 48, 128])
      assert ex["seconds"] == pytest.approx(source_notes.end / 100.0)


def test_metadata_holds_encoding_and_report(dummy_token_build):
  builder, records = dummy_token_build
  reloaded = tfds.builder("virtuoso_midi/token", data_dir=os.fspath(builder.data_dir).rsplit("/virtuoso_midi/", 1)[0])
  meta = reloaded.info.metadata
  assert EncodingConfig.from_dict(meta["encoding"]) == EncodingConfig()
  report = meta["report"]
  assert report["files_read"] == 16  # 13 songs (one a duplicate) + corrupt + empty + no-notes.
  assert report["skipped"] == {"corrupt": 1, "empty": 2, "over_limit": 0, "duplicate": 1,
                               "unsupported": 0}
  listed = {r: [e["name"] for e in v] for r, v in report["skipped_files"].items()}
  assert listed["corrupt"] == ["bad/corrupt.mid"]
  assert sorted(listed["empty"]) == ["bad/empty.mid", "bad/no_notes.mid"]
  assert listed["duplicate"] == ["songs/song_01.mid"]
  assert report["splits"] == {k: len(v) for k, v in records.items()}
  assert report["examples"] == 12
  assert report["notes"] == sum(int(ex["num_notes"]) for v in records.values() for ex in v)
  assert report["tokens"] == sum(len(ex["ids"]) for v in records.values() for ex in v)
  assert report["manual_dir"] == os.fspath(DUMMY)  # Training checks it against data.manual_dir.


def split_hashes(records):
  return {split: sorted(as_str(ex["sha256"]) for ex in exs) for split, exs in records.items()}


def test_beam_build_equals_the_in_process_build(tmp_path, dummy_token_build):
  """The Beam pipeline (the Direct runner on 2 worker processes, as `tfds build
  --beam_pipeline_options=runner=DirectRunner,direct_running_mode=multi_processing,
  direct_num_workers=2` runs it) writes the same records, DatasetInfo, report and skipped.tsv
  as the in-process build; splits are disjoint."""
  pipeline_options = pytest.importorskip("apache_beam.options.pipeline_options")
  serial_builder, serial = dummy_token_build
  options = pipeline_options.PipelineOptions([
      "--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
  beam_builder = build(tmp_path, "token", manual_dir=DUMMY, beam_options=options)
  assert compare.differences(serial_builder.data_dir, beam_builder.data_dir) == []
  hashes = split_hashes(serial)
  assert set(hashes) == set(SPLIT_NAMES)
  all_hashes = [h for v in hashes.values() for h in v]
  assert len(all_hashes) == len(set(all_hashes))  # Disjoint, and no duplicate examples.


def test_compare_finds_a_changed_record(tmp_path, dummy_token_build):
  """The comparison the Beam test relies on sees a different build."""
  serial_builder, _ = dummy_token_build
  other = build(tmp_path, "token", manual_dir=DUMMY / "songs")
  found = compare.differences(serial_builder.data_dir, other.data_dir)
  assert any(line.startswith("report['files_read']: 16 != 11") for line in found), found
  assert any(line.startswith("train: 10 records != ") for line in found), found


def rank_splits(sha256s):
  """The split rule by rank over the sorted hashes (what SplitCuts computes with bounded
  memory): cuts at 90 % / 95 % of the hash space, moved the least so that no split is empty."""
  order = sorted(set(sha256s), key=aggregation.split_key)
  n = len(order)
  a = sum(aggregation.hash_fraction(s) < 0.90 for s in order)
  b = sum(aggregation.hash_fraction(s) < 0.95 for s in order)
  if n < 3:
    a = b = n
  else:
    b = min(max(b, 2), n - 1)
    a = min(max(a, 1), b - 1)
  return {s: "train" if i < a else ("validation" if i < b else "test") for i, s in enumerate(order)}


def sha_at(fraction: float, salt: int) -> str:
  """A fake content hash whose hash fraction is `fraction`."""
  return f"{int(fraction * 2**64):016x}" + __import__("hashlib").sha256(b"%d" % salt).hexdigest()[16:]


def _arrays_reachable(obj, seen=None) -> list:
  """Every numpy array reachable from `obj` through containers and object attributes."""
  seen = set() if seen is None else seen
  if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
    return []
  seen.add(id(obj))
  if isinstance(obj, np.ndarray):
    return [obj]
  if isinstance(obj, dict):
    children = list(obj.keys()) + list(obj.values())
  elif isinstance(obj, (list, tuple, set, frozenset)):
    children = list(obj)
  else:
    children = list(getattr(obj, "__dict__", {}).values())
  return [a for child in children for a in _arrays_reachable(child, seen)]


def _dummy_items():
  items, _ = processing.walk_midi_files(epath.Path(DUMMY))
  return processing.unique_names(items)


def test_in_process_build_keeps_examples_on_disk_not_in_memory(tmp_path):
  """`build_in_process` appends each first copy's example to its spill file as it is encoded
  and keeps only (offset, length) pairs: no example (no numpy array) is reachable from the
  build; reading a split back gives what `process_item` encodes; `remove` deletes the file."""
  settings = processing.Settings(encoding="token", encoding_config=EncodingConfig().to_dict())
  items = _dummy_items()
  built = processing.build_in_process(items, settings, desc="test", work_dir=os.fspath(tmp_path))
  assert _arrays_reachable(built) == []
  assert all(isinstance(v, array.array) for v in built.locations.values())
  # The file holds exactly the kept examples (the duplicate song_01.mid is not spilled).
  spilled = []
  with open(built.spill.path, "rb") as f:
    while f.peek(1):
      spilled.append(pickle.load(f))
  # songs/: 11 files, one a copy of another (the 2 zipped songs are not listed here).
  assert len(spilled) == built.num_examples == 10
  assert "songs/song_01.mid" not in {ex["name"] for ex in spilled}
  by_name = {item.name: item for item in items}
  read_back = {}
  for split in built.splits():
    for sha, example in built.examples(split):
      assert sha == example["sha256"]
      read_back[example["name"]] = split
      _, fresh = processing.process_item(by_name[example["name"]], settings)
      np.testing.assert_array_equal(example["ids"], fresh["ids"])
  assert sorted(read_back) == sorted(ex["name"] for ex in spilled)
  assert built.report.splits == {s: len(built.locations[s]) // 2 for s in built.splits()}
  built.remove()
  assert not os.path.exists(built.spill.dir) and os.listdir(tmp_path) == []


def test_spill_is_removed_after_a_build_and_after_a_failed_one(tmp_path, monkeypatch):
  """The builder's temporary folder (spill file included) is gone after a build, after one
  that fails while TFDS writes the examples, and after a failed `build_in_process`."""
  build_tmp = tmp_path / "build_tmp"
  build_tmp.mkdir()
  monkeypatch.setenv("VIRTUOSO_BUILD_TMP", os.fspath(build_tmp))
  build(tmp_path / "ok", "token", manual_dir=DUMMY / "songs")
  assert list(build_tmp.iterdir()) == []

  seen = []
  original = processing.InProcessBuild.examples

  def failing_examples(self, split):
    seen.append(self.spill.path)
    assert os.path.exists(self.spill.path)  # Spilled while the writer reads it.
    yield from itertools.islice(original(self, split), 1)
    raise OSError("disk full (injected)")

  monkeypatch.setattr(processing.InProcessBuild, "examples", failing_examples)
  with pytest.raises(OSError, match="injected"):
    build(tmp_path / "fails", "token", manual_dir=DUMMY / "songs")
  assert seen and list(build_tmp.iterdir()) == []

  # A parser process that cannot start: build_in_process raises and removes its spill.
  broken = processing.Settings(encoding="token", encoding_config=EncodingConfig().to_dict(),
                               parser="no_such_module_xyz:parse")
  with pytest.raises(RuntimeError, match="could not start"):
    processing.build_in_process(_dummy_items(), broken, desc="test", work_dir=os.fspath(build_tmp))
  assert list(build_tmp.iterdir()) == []


def test_split_cuts_equal_the_rank_rule_merged_in_any_order():
  rng = np.random.default_rng(0)
  cases = []
  for n in list(range(1, 12)) + [40, 61, 200]:
    for _ in range(6):
      cases.append([sha_at(f, i) for i, f in enumerate(rng.random(n))])
  # Corpora whose cuts must move: every file over 0.95, under 0.90, none in [0.90, 0.95).
  cases.append([sha_at(0.96 + 0.03 * i / 50, i) for i in range(50)])
  cases.append([sha_at(0.5 * i / 70, i) for i in range(70)])
  cases.append([sha_at(0.8 * i / 80, i) for i in range(80)] + [sha_at(0.97, 999)])
  for hashes in cases:
    expected = rank_splits(hashes)
    assert aggregation.assign_splits(hashes) == expected
    parts = [aggregation.SplitCuts() for _ in range(3)]
    for i, h in enumerate(hashes):
      parts[(i * 7) % 3].add(h)
    cuts = parts[1].merge(parts[2]).merge(parts[0]).cuts()
    assert {h: cuts.split_of(h) for h in hashes} == expected


def test_assign_splits_is_by_content_only():
  hashes = [f"{i:064x}" for i in range(0, 2**64, 2**64 // 1000)][:1000]
  hashes = [__import__("hashlib").sha256(h.encode()).hexdigest() for h in hashes]
  splits = aggregation.assign_splits(hashes)
  counts = {s: list(splits.values()).count(s) for s in SPLIT_NAMES}
  assert 850 < counts["train"] < 950 and 25 < counts["validation"] < 80 and 25 < counts["test"] < 80
  # Adding files never moves an existing file (on a corpus large enough for the 90/5/5 cuts).
  more = aggregation.assign_splits(hashes + [__import__("hashlib").sha256(b"x%d" % i).hexdigest() for i in range(50)])
  assert all(more[h] == s for h, s in splits.items())
  # Tiny corpora still get every split, when they have 3 files or more.
  assert sorted(aggregation.assign_splits(hashes[:3]).values()) == ["test", "train", "validation"]
  assert set(aggregation.assign_splits(hashes[:2]).values()) == {"train"}


def test_bad_files_are_skipped_and_counted_by_reason(tmp_path):
  corpus = tmp_path / "corpus"
  (corpus / "a").mkdir(parents=True)
  for i in (1, 2, 3, 4):
    shutil.copy(DUMMY / "songs" / f"song_{i:02d}.mid", corpus / "a" / f"s{i}.mid")
  shutil.copy(DUMMY / "songs" / "song_01.mid", corpus / "a" / "s1_again.midi")  # duplicate
  big = Notes.concatenate([Notes.from_rows([(t * 10, 10, 60 + t % 12, 80, 0)]) for t in range(300)])
  notes_to_midi(big, corpus / "big.mid")  # over max_file_bytes=1500
  (corpus / "bad.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff")
  (corpus / "zero.mid").write_bytes(b"")
  with tarfile.open(corpus / "pack.tar.gz", "w:gz") as tar:  # extracted by the dl_manager
    tar.add(DUMMY / "songs" / "song_05.mid", arcname="in_tar/s5.mid")
  with zipfile.ZipFile(corpus / "broken.zip", "w") as z:
    z.writestr("x.mid", b"x")
  (corpus / "truncated.zip").write_bytes((corpus / "broken.zip").read_bytes()[:10])
  config = vm.VirtuosoMidiConfig(name="token_test_limits", source="manual", encoding="token",
                                 encoding_config=EncodingConfig(max_file_bytes=1500))
  builder = build(tmp_path / "tfds", config, manual_dir=corpus, download_dir=tmp_path / "dl")
  report = builder.info.metadata["report"]
  assert report["skipped"] == {"corrupt": 3, "empty": 1, "over_limit": 1, "duplicate": 1,
                               "unsupported": 0}, report
  names = {r: sorted(e["name"] for e in v) for r, v in report["skipped_files"].items()}
  assert names["corrupt"] == ["bad.mid", "broken.zip/x.mid", "truncated.zip"]
  assert names["over_limit"] == ["big.mid"] and names["empty"] == ["zero.mid"]
  assert "max_file_bytes=1500" in report["skipped_files"]["over_limit"][0]["detail"]
  written = sorted(as_str(ex["name"]) for v in read_all(builder).values() for ex in v)
  assert written == ["a/s1.mid", "a/s2.mid", "a/s3.mid", "a/s4.mid", "pack.tar.gz/in_tar/s5.mid"]
  # 9 files + the member of broken.zip; the unreadable truncated.zip is counted as skipped only.
  assert report["examples"] == 5 and report["files_read"] == 10


def test_files_over_max_notes_are_skipped_as_over_limit(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  shutil.copy(DUMMY / "songs" / "song_02.mid", corpus / "small.mid")  # 52 notes
  rows = [(t * 10, 10, 60 + t % 12, 80, inst) for t in range(150) for inst in (0, 40)]
  notes_to_midi(Notes.from_rows(rows), corpus / "many.mid")  # 300 notes on 2 tracks
  config = vm.VirtuosoMidiConfig(name="token_test_max_notes", source="manual", encoding="token",
                                 encoding_config=EncodingConfig(max_notes=200))
  report = build(tmp_path / "tfds", config, manual_dir=corpus).info.metadata["report"]
  assert report["skipped"]["over_limit"] == 1, report["skipped_files"]
  assert report["examples"] == 1 and report["notes"] == 52


def test_char_config_writes_decodable_text(tmp_path):
  builder = build(tmp_path, "char", manual_dir=DUMMY / "songs")
  codec = CharCodec(EncodingConfig())
  records = read_all(builder)
  assert builder.info.metadata["report"]["skipped"]["duplicate"] == 1
  for ex in (ex for v in records.values() for ex in v):
    name = as_str(ex["name"])
    assert_same_notes(codec.decode(as_str(ex["text"])), midi_to_notes(DUMMY / "songs" / name), name)


def test_unbuildable_folders_are_clear_errors(tmp_path):
  (tmp_path / "midis").mkdir()
  (tmp_path / "midis" / "x.mid").write_bytes(b"not midi at all")
  with pytest.raises(vm.CorpusError, match="none of the 1 MIDI files found is usable"):
    build(tmp_path / "tfds", "token", manual_dir=tmp_path / "midis")
  (tmp_path / "texts").mkdir()
  (tmp_path / "texts" / "notes.txt").write_text("no midi here")
  with pytest.raises(vm.CorpusError, match="no .mid/.midi file"):
    build(tmp_path / "tfds", "token", manual_dir=tmp_path / "texts")
  (tmp_path / "empty").mkdir()
  with pytest.raises(vm.CorpusError, match=f"MIDI folder is empty: {tmp_path / 'empty'}"):
    build(tmp_path / "tfds", "token", manual_dir=tmp_path / "empty")
  with pytest.raises(vm.CorpusError, match=f"MIDI folder not found: {tmp_path / 'missing'}"):
    build(tmp_path / "tfds", "token", manual_dir=tmp_path / "missing")
  with pytest.raises(vm.CorpusError, match="pass it with --manual_dir"):
    build(tmp_path / "tfds", "token")


def test_tfds_cli_reports_corpus_errors_without_a_traceback(tmp_path):
  (tmp_path / "empty").mkdir()
  tfds_cli = pathlib.Path(sys.executable).with_name("tfds")
  res = subprocess.run(
      [os.fspath(tfds_cli), "build", os.fspath(REPO_ROOT / "data_pipelines" / "virtuoso_midi"),
       "--config=token", f"--manual_dir={tmp_path / 'empty'}", f"--data_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert res.returncode == 1, res.stderr[-2000:]
  assert f"[virtuoso_midi] ERROR: MIDI folder is empty: {tmp_path / 'empty'}" in res.stderr
  assert "Traceback" not in res.stderr + res.stdout


def test_a_dataset_of_another_folder_is_not_silently_reused(tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  builder = build(data_dir, "token", manual_dir=DUMMY / "songs")
  train = builder.info.metadata["report"]["splits"]["train"]
  assert train < vm.SMALL_TRAIN_SPLIT  # So the build warns that the corpus is small.
  assert f"WARNING: only {train} of 10 songs landed in train" in capsys.readouterr().out
  with pytest.raises(vm.CorpusError, match=f"was built from {DUMMY / 'songs'}, not from {DUMMY}"):
    build(data_dir, "token", manual_dir=DUMMY)
  build(data_dir, "token", manual_dir=os.fspath(DUMMY / "songs") + "/")  # The same folder: reused.
  from data_pipelines.virtuoso_midi import prepare  # pylint: disable=g-import-not-at-top
  with pytest.raises(vm.CorpusError, match="rebuild it in place with --overwrite"):
    prepare.prepare("token", data_dir=os.fspath(data_dir), manual_dir=os.fspath(DUMMY))
  rebuilt = prepare.prepare("token", data_dir=os.fspath(data_dir), manual_dir=os.fspath(DUMMY),
                            overwrite=True, num_workers=1)
  assert rebuilt.info.metadata["report"]["manual_dir"] == os.fspath(DUMMY)
  assert rebuilt.info.metadata["report"]["examples"] > builder.info.metadata["report"]["examples"]


def make_zip(folder: pathlib.Path, target: pathlib.Path, limit: int) -> pathlib.Path:
  with zipfile.ZipFile(target, "w") as z:
    for path in sorted(folder.glob("*.mid*"))[:limit]:
      z.write(path, arcname=f"{folder.name}/{path.name}")
  return target


def test_download_sources_through_the_download_manager(tmp_path, corpora_dir):
  """tegridy/maestro/lakh read what the download manager hands them (local copies here)."""
  zips = {name: make_zip(corpora_dir / name, tmp_path / f"{name}.zip", 3) for name in vm.TEGRIDY_URLS}
  with mock.patch.object(tfds.download.DownloadManager, "download", autospec=True,
                         side_effect=lambda self, urls: {k: zips[k] for k in urls}):
    builder = build(tmp_path / "tfds", "tegridy_token", download_dir=tmp_path / "dl")
  names = sorted(as_str(ex["name"]) for v in read_all(builder).values() for ex in v)
  assert names == sorted(f"{n}/{n}/{p.name}" for n in vm.TEGRIDY_URLS
                         for p in sorted((corpora_dir / n).glob("*.mid*"))[:3])
  lakh_tar = tmp_path / "lmd_full.tar.gz"
  with tarfile.open(lakh_tar, "w:gz") as tar:
    for path in sorted((corpora_dir / "Endless-Violin-Carousel").glob("*.mid"))[:4]:
      tar.add(path, arcname=f"lmd_full/0/{path.name}")
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", autospec=True,
                         side_effect=lambda self, urls: self.extract({k: lakh_tar for k in urls})):
    builder = build(tmp_path / "tfds", "lakh_char", download_dir=tmp_path / "dl")
  assert builder.info.metadata["report"]["examples"] == 4
  assert all(as_str(ex["name"]).startswith("lmd_full/lmd_full/0/")
             for v in read_all(builder).values() for ex in v)


def test_tegridy_children_songs_decode_to_the_source_notes(tmp_path, corpora_dir):
  folder = corpora_dir / "Tegridy-Children-Songs"
  builder = build(tmp_path, "token", manual_dir=folder, num_workers=2)
  codec = TokenCodec(EncodingConfig())
  records = [ex for v in read_all(builder).values() for ex in v]
  report = builder.info.metadata["report"]
  assert report["files_read"] == len(list(folder.glob("*.mid*")))
  assert len(records) + sum(report["skipped"].values()) == report["files_read"]
  # The real folder has 161 songs; the stand-in (no ../shared here) a quarter of the hermetic
  # corpus, every file of which is good.
  assert len(records) > 150 or (hermetic_corpus.is_stand_in(corpora_dir)
                                and len(records) == report["files_read"] > 0)
  for ex in records:
    name = as_str(ex["name"])
    decoded, decode_report = codec.decode(ex["ids"], return_report=True)
    assert_same_notes(decoded, codec.quantize(midi_to_notes(folder / name)), name)
    assert decode_report_is_clean(decode_report), (name, decode_report)


def test_bach_chorales_convert_to_midi(tmp_path):
  works = processing.bach_chorale_works()
  assert len(works) >= 300 and works == sorted(set(works))
  results = processing.convert_bach_chunk((works[:2], os.fspath(tmp_path)))
  assert [err for _, err in results] == ["", ""]
  for work in works[:2]:
    notes = midi_to_notes(tmp_path / (work.replace("/", "_") + ".mid"))
    assert len(notes) > 20 and len(set(notes.instrument.tolist())) >= 1


def test_build_workers_import_neither_jax_nor_tensorflow():
  code = ("import sys; from data_pipelines.virtuoso_midi import processing as p; "
          "from virtuoso_jax.encoding import EncodingConfig; "
          "p.get_codec('token', EncodingConfig().to_dict()); p.get_codec('char', EncodingConfig().to_dict()); "
          "bad = [m for m in ('jax', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


@pytest.mark.slow
def test_prepare_entry_point(tmp_path):
  cmd = [sys.executable, "-m", "data_pipelines.virtuoso_midi.prepare", "--config=token",
         f"--manual_dir={DUMMY / 'songs'}", f"--data_dir={tmp_path}", "--num_workers=1"]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "preparing virtuoso_midi/token" in out.stdout and "build report" in out.stdout
  assert "skipped:           corrupt=0, empty=0, over_limit=0, duplicate=1, unsupported=0" in out.stdout
  again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert again.returncode == 0 and "already prepared" in again.stdout
  missing = subprocess.run(cmd[:4] + [f"--manual_dir={tmp_path / 'nope'}", f"--data_dir={tmp_path / 'd2'}"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert missing.returncode == 1 and "nope" in missing.stderr
