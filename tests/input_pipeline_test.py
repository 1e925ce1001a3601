"""Input pipeline: windows cover every target once, batches are deterministic and independent
of the process layout, transposition leaves drums alone, eval is deterministic, the grain
iterator resumes exactly. Runs on a small array_record dataset built here from the hermetic MIDI
corpus (`fixture_corpus`, tests/hermetic_corpus.py: synthetic multi-instrument songs with drums
and music21's Bach chorales), read by name with tfds.data_source like the real `virtuoso_midi`.

`build_fixture_dataset` is also used by train_test.py and multiprocess_test.py.
"""

import os
import pathlib

import jax
import numpy as np
import pytest

import hermetic_corpus  # tests/ is on sys.path (pytest rootdir-relative import).
from virtuoso_jax import config_lib
from virtuoso_jax import dataset
from virtuoso_jax import encoding
from virtuoso_jax import input_pipeline
from virtuoso_jax import sharding
from virtuoso_jax.encoding import token_codec as tc

FIXTURE_NAME = "virtuoso_midi_fixture"
FIXTURE_SOURCES = hermetic_corpus.SOURCES
FIXTURE_SPLITS = ("train", "validation", "test")


def fixture_split(position: int) -> str:
  """The split of a source's `position`-th file (by name): 6 of 8 train, 1 validation, 1 test,
  so every split holds songs of every source, whatever the files' bytes."""
  return {3: "validation", 7: "test"}.get(position % 8, "train")


def build_fixture_dataset(data_dir: str, corpus_dir: pathlib.Path) -> str:
  """Builds `virtuoso_midi_fixture/{token,char}` (same features/metadata as virtuoso_midi) from
  the corpus folder `corpus_dir` (`fixture_corpus`: the FIXTURE_SOURCES folders).

  Returns the data_dir. Idempotent.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  by_split = {s: [] for s in FIXTURE_SPLITS}
  for src in FIXTURE_SOURCES:
    for i, f in enumerate(sorted((pathlib.Path(corpus_dir) / src).glob("*.mid"))):
      by_split[fixture_split(i)].append(f)
  enc_config = encoding.EncodingConfig()

  class VirtuosoMidiFixture(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The hermetic corpus's MIDI, encoded like virtuoso_midi (test fixture)."""
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="token"), tfds.core.BuilderConfig(name="char")]

    def _info(self):
      feats = {"name": tfds.features.Text(), "num_notes": np.int32}
      if self.builder_config.name == "token":
        feats["ids"] = tfds.features.Sequence(np.int32)
      else:
        feats["text"] = tfds.features.Text()
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict(feats),
          metadata=tfds.core.MetadataDict(encoding=enc_config.to_dict()))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s, by_split[s]) for s in FIXTURE_SPLITS}

    def _generate_examples(self, split, split_files):
      del split
      token, char = encoding.TokenCodec(enc_config), encoding.CharCodec(enc_config)
      for f in split_files:
        notes = encoding.midi_to_notes(f.read_bytes(), enc_config)
        ex = {"name": f.stem, "num_notes": len(notes.pitch)}
        if self.builder_config.name == "token":
          ex["ids"] = token.encode(notes)
        else:
          ex["text"] = char.encode(notes, name=f.stem)
        yield f.name, ex

  VirtuosoMidiFixture.name = FIXTURE_NAME
  for cfg in ("token", "char"):
    b = VirtuosoMidiFixture(config=cfg, data_dir=data_dir)
    if not b.is_prepared():
      b.download_and_prepare(file_format="array_record")
  return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, fixture_corpus):
  return build_fixture_dataset(str(tmp_path_factory.mktemp("tfds")), fixture_corpus)


def _config(data_dir, kind="token", **overrides):
  variant = "configs/char_gpt.py:tiny" if kind == "char" else "configs/rga.py:tiny"
  base = {"data.data_dir": data_dir, "data.tfds_name": FIXTURE_NAME, "data.source": "manual",
          "data.encoding": kind, "model.max_len": 64, "batch_size": 8}
  base.update(overrides)
  return config_lib.validate(config_lib.load_config(variant, base))


def _pipeline(config, mesh_shape=(1, -1, 1)):
  config.parallel.mesh_shape = mesh_shape
  mesh = sharding.create_mesh(config.parallel)
  return input_pipeline.InputPipeline(config, batch_sharding=sharding.batch_sharding(mesh))


def test_fixture_corpus_has_what_the_end_to_end_tests_need(fixture_corpus, prompt_midi):
  """The hermetic corpus is made on every machine; these are the properties the tests built on
  it rely on (drums for transposition, several instruments for the instrument restriction of
  sampling, every split non-empty, a rest longer than one time-delta token, determinism)."""
  cfg = encoding.EncodingConfig()
  by_split = {s: [] for s in FIXTURE_SPLITS}
  for src in FIXTURE_SOURCES:
    songs = sorted((fixture_corpus / src).glob("*.mid"))
    assert len(songs) >= 8, src
    for i, f in enumerate(songs):
      by_split[fixture_split(i)].append(encoding.midi_to_notes(f.read_bytes(), cfg))
  for split, songs in by_split.items():
    assert any(encoding.DRUMS in n.instrument for n in songs), split
    assert len({int(i) for n in songs for i in n.instruments()}) >= 3, split
  train = by_split["train"]
  assert len({int(i) for n in train for i in n.instruments()}) >= 10
  assert any(np.diff(np.unique(n.onset)).max() > cfg.max_time_shift for n in train)
  prompt = encoding.midi_to_notes(prompt_midi.read_bytes(), cfg)
  assert len(prompt) > 100 and encoding.DRUMS in prompt.instrument
  assert set(prompt.instruments().tolist()) - {0, encoding.DRUMS}  # Not only piano + drums.
  assert prompt_midi.read_bytes() == encoding.notes_to_midi(
      hermetic_corpus.synthetic_song(0), name="synthetic band 00")


def test_build_windows_cover_each_target_once():
  lengths = np.array([1, 2, 5, 65, 66, 130, 131, 300])
  for seq_len in (4, 64):
    index = input_pipeline.build_windows(lengths, seq_len)
    for s, n in enumerate(lengths):
      covered = np.zeros(n, int)
      for w in np.flatnonzero(index.song == s):
        st, mf = index.start[w], index.mask_from[w]
        assert st >= 0 and st + 1 < n
        hi = min(st + seq_len, n - 1)  # Last target position in this window.
        covered[st + 1 + mf: hi + 1] += 1
      expect = np.zeros(n, int)
      expect[1:] = 1
      np.testing.assert_array_equal(covered, expect, err_msg=f"length {n}, L {seq_len}")


def test_windows_stay_inside_songs_and_start_with_bos(data_dir):
  config = _config(data_dir, **{"data.transpose_semitones": 0})
  p = _pipeline(config)
  codec = p.codec
  maker = p.train_maker
  src = maker.source
  for b in range(3):
    batch = maker(b)
    for r in range(config.batch_size):
      j = b * config.batch_size + r
      s, st, _, _ = maker.window(j)  # Each epoch has its own phased windows (windowing_test).
      song = src[s]
      piece = song[st:st + config.model.max_len + 1]
      np.testing.assert_array_equal(batch["inputs"][r][:len(piece) - 1], piece[:-1])
      if st == 0:
        assert batch["inputs"][r][0] == codec.bos_id
      assert (batch["targets"][r][batch["mask"][r] > 0] != codec.pad_id).all()
  # No window crosses a song: a BOS only ever appears at position 0.
  for b in range(5):
    inputs = maker(b)["inputs"]
    assert not (inputs[:, 1:] == codec.bos_id).any()


def test_deterministic_and_process_layout_independent(data_dir):
  config = _config(data_dir)
  whole = _pipeline(config).train_maker
  again = _pipeline(_config(data_dir)).train_maker
  for b in range(3):
    a1, a2 = whole(b), again(b)
    for k in a1:
      np.testing.assert_array_equal(a1[k], a2[k])
  # A process holding rows 2..6 builds exactly those rows of the global batch.
  import dataclasses  # pylint: disable=g-import-not-at-top
  part = dataclasses.replace(whole, rows=(2, 6))
  np.testing.assert_array_equal(part(4)["inputs"], whole(4)["inputs"][2:6])
  # Different batches differ (shuffled), and epochs reshuffle.
  assert not np.array_equal(whole(0)["inputs"], whole(1)["inputs"])


def test_transposition_shifts_pitches_not_drums(data_dir):
  plain = _pipeline(_config(data_dir, **{"data.transpose_semitones": 0})).train_maker
  aug = _pipeline(_config(data_dir, **{"data.transpose_semitones": 6})).train_maker
  codec = aug.codec
  lo, hi = codec.field_ranges()["pitch"]
  changed = 0
  for b in range(4):
    x, y = plain(b)["inputs"], aug(b)["inputs"]
    is_pitch = (x >= lo) & (x < hi)
    np.testing.assert_array_equal(x[~is_pitch], y[~is_pitch])  # Only pitch ids move.
    for r in range(len(x)):
      d = np.unique(y[r][is_pitch[r]] - x[r][is_pitch[r]])
      assert len(d) <= 2  # One shift per window (drum pitches stay at 0).
      assert np.all(np.abs(d) <= 6)
      changed += int(np.any(d != 0))
  assert changed > 0
  # Drums are untouched: compare with the codec's own definition.
  x = plain(0)["inputs"][0]
  np.testing.assert_array_equal(codec.transpose_ids(x, 0), x)


def test_derived_examples_predict_past_their_control_groups(data_dir):
  # With data.lookahead_targets a target is the next id, except before a control group:
  # there it is the first id after the run of groups (tasks.lookahead_targets), taken from
  # the same (transposed) row.
  maker = _pipeline(_config(data_dir, **{"data.infill_rate": 0.5, "data.accompany_rate": 0.3,
                                         "data.transpose_semitones": 6,
                                         "data.lookahead_targets": True})).train_maker
  codec = maker.codec
  ahead = 0
  for b in range(3):
    batch = maker(b)
    x, y, m = batch["inputs"], batch["targets"], batch["mask"]
    nxt, tgt = codec.kinds(x[:, 1:]), codec.kinds(y[:, :-1])
    moved = y[:, :-1] != x[:, 1:]
    assert np.isin(nxt[moved], tc.CONTROL_TIME_KINDS).all()  # Only before a control group,
    assert np.isin(tgt[moved], (tc.K_WAIT, tc.K_DT, tc.K_EOS)).all()  # to what comes after,
    assert (m[:, :-1][moved] == 1).all()  # counted.
    for r, p in zip(*np.nonzero(moved)):
      later = np.append(x[r, p + 1:], y[r, -1])  # The row's ids after p.
      assert y[r, p] in later[~np.isin(codec.kinds(later), tc.CONTROL_KINDS)][:1]
    ahead += int(moved.sum())
  assert ahead > 0


def test_pack_mode_concatenates_songs_without_padding(data_dir):
  p = _pipeline(_config(data_dir, **{"data.windowing": "pack"}))
  maker, codec, seq_len = p.train_maker, p.codec, 64
  for b in range(3):
    assert p.train_maker(b)["mask"].min() == 1.0  # Packed: nothing padded.
  order, cum = maker._epoch_order(0)
  stream = np.concatenate([maker.source[int(i)] for i in order[:3]])
  # Chunks around the first song boundary reproduce the stream, EOS then BOS included.
  k0 = int(cum[1]) // seq_len
  for k in range(k0 - 1, k0 + 2):
    np.testing.assert_array_equal(maker.stream_chunk(0, k),
                                  stream[k * seq_len:k * seq_len + seq_len + 1])
  chunk = maker.stream_chunk(0, k0)
  assert ((chunk[:-1] == codec.eos_id) & (chunk[1:] == codec.bos_id)).any()
  # Another epoch uses another song order.
  assert not np.array_equal(maker._epoch_order(1)[0], order)


def test_eval_is_deterministic_and_complete(data_dir):
  config = _config(data_dir, num_eval_batches=0, **{"model.max_len": 1024})
  p = _pipeline(config)
  runs = [[{k: np.asarray(v) for k, v in b.items()} for b in p.eval_batches()] for _ in range(2)]
  assert len(runs[0]) == p.num_eval_batches() > 0
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  counted = sum(b["mask"].sum() for b in runs[0])
  lengths = [len(p.eval_maker.source[i]) for i in range(len(p.eval_maker.source))]
  assert counted == sum(n - 1 for n in lengths)  # Every eval target exactly once.
  # The rows' seconds of music add up to the songs' lengths (the trainer's bits per second).
  from virtuoso_jax import evaluation  # pylint: disable=g-import-not-at-top
  grid = p.codec.config.grid_ms
  want = sum(evaluation.song_seconds(evaluation.ids_to_notes(p.codec, p.eval_maker.source[i]),
                                     grid) for i in range(len(p.eval_maker.source)))
  got = sum(float(np.asarray(b["seconds"], np.float64).sum()) for b in runs[0])
  assert want > 0 and got == pytest.approx(want, rel=1e-5)


def test_iterator_state_resumes_exactly(data_dir):
  p = _pipeline(_config(data_dir))
  it = p.train_iterator(20)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["inputs"] for _ in range(2)]
  it2 = p.train_iterator(20)
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["inputs"], e)


def test_global_batch_sharded_over_devices(data_dir):
  p = _pipeline(_config(data_dir), mesh_shape=(2, 2, 2))
  batch = p.to_global(next(p.train_iterator(2)))
  assert batch["inputs"].shape == (8, 64)
  assert len(batch["inputs"].sharding.device_set) == 8


def test_char_dataset(data_dir):
  p = _pipeline(_config(data_dir, "char"))
  batch = p.train_maker(0)
  assert batch["inputs"].shape == (8, 64)
  assert p.info.kind == "char" and p.info.tokens_per_note is None
  text = p.codec.ids_to_text(batch["inputs"][0])
  assert text  # Decodes back to Optimus TXT.


def test_missing_dataset_is_reported(tmp_path):
  config = _config(str(tmp_path), **{"data.source": "manual", "data.encoding": "token"})
  assert not dataset.is_prepared(config)
  cmd = " ".join(dataset.prepare_command(config))
  assert "data_pipelines.virtuoso_midi.prepare" in cmd and str(tmp_path) in cmd
  assert "--config=token" in cmd  # A user's folder: the builder config is the encoding alone.
  with pytest.raises(dataset.DatasetNotPreparedError, match="virtuoso_midi.prepare"):
    raise dataset.not_prepared_error(config)


def test_builder_config_comes_from_source_and_encoding(tmp_path):
  config = _config(str(tmp_path))
  for source, kind, name in (("bach", "token", "bach_token"), ("lakh", "char", "lakh_char"),
                             ("manual", "char", "char")):
    config.data.source, config.data.encoding = source, kind
    assert dataset.builder_config(config) == name
    assert dataset.dataset_name(config) == f"{config.data.tfds_name}/{name}"


def test_own_midi_folder_needs_manual_dir_and_must_match_the_build(tmp_path):
  config = _config(str(tmp_path), **{"data.tfds_name": "virtuoso_midi", "data.source": "manual",
                                     "data.encoding": "token"})
  with pytest.raises(dataset.DatasetNotPreparedError, match="manual_dir=/path/to/midis"):
    dataset.prepare_dataset(config)  # Refused before any subprocess starts.
  mine, other = str(tmp_path / "mine"), str(tmp_path / "other")
  (tmp_path / "mine").mkdir()
  os.symlink(tmp_path / "mine", tmp_path / "link")
  assert dataset.manual_dir_mismatch(mine, mine) == ""
  assert dataset.manual_dir_mismatch(str(tmp_path / "link"), mine) == ""  # Symlinks resolved.
  assert dataset.manual_dir_mismatch(mine, None) == ""  # An older build: nothing to compare.
  assert dataset.manual_dir_mismatch("", other) == ""  # Nothing asked for.
  assert dataset.manual_dir_mismatch(mine, other) == f"was built from {other}, not from {mine}"
