"""virtuoso_jax.evaluation: whole-song window plans and scoring with models of known NLL."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from virtuoso_jax import evaluation
from virtuoso_jax.encoding import EncodingConfig, Notes, TokenCodec


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17, 50, 101])
@pytest.mark.parametrize("context,stride", [(8, 8), (8, 4), (8, 1), (8, 3)])
def test_window_plan_scores_every_target_once_with_context(n, context, stride):
  plan = evaluation.window_plan(n, context, stride)
  scored = [t for _, first, last in plan for t in range(first, last + 1)]
  assert scored == list(range(1, n))  # Every target once, in order.
  for start, first, last in plan:
    assert 0 <= start and last - start <= context  # Inputs start..last-1 fit the context.
    if start > 0:
      assert first - start >= context - stride  # At least L - stride ids of context.


def test_window_plan_rejects_bad_strides():
  with pytest.raises(ValueError, match="stride"):
    evaluation.window_plan(10, 8, 9)
  with pytest.raises(ValueError, match="stride"):
    evaluation.window_plan(10, 8, 0)


class _Bigram(nnx.Module):
  """logits[t] = table[input[t]]: the NLL of each target depends on (previous id, target) only,
  so windowed scoring must equal scoring the whole song at once."""

  def __init__(self, vocab):
    self.table = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(vocab, vocab)),
                                       jnp.float32))

  def __call__(self, tokens, deterministic=True):
    return self.table[...][tokens]


@dataclasses.dataclass
class _Run:
  model: object
  codec: object
  context: int


def _song(codec, n_notes, seed):
  rng = np.random.default_rng(seed)
  rows = sorted((int(o), int(rng.integers(1, 60)), int(rng.integers(30, 90)),
                 int(rng.integers(1, 128)), int(rng.choice([0, 40, 128])))
                for o in np.cumsum(rng.integers(0, 40, n_notes)))
  notes = Notes.from_rows(rows).canonical()
  return notes, codec.encode(notes).astype(np.int32)


def test_windowed_scoring_equals_whole_sequence_scoring():
  codec = TokenCodec(EncodingConfig())
  model = _Bigram(codec.vocab_size)
  scorer = evaluation.Scorer(_Run(model, codec, 16), stride=5, batch_size=3)
  songs = [_song(codec, n, s) for s, n in enumerate([1, 4, 30])]
  scores = scorer.score([(f"s{i}", ids, len(nt), 1.0) for i, (nt, ids) in enumerate(songs)])
  table = np.asarray(model.table[...], np.float64)
  logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
  for (_, ids), score in zip(songs, scores):
    expected = -logp[ids[:-1], ids[1:]]
    np.testing.assert_allclose(score.nll, expected, rtol=1e-5)
    np.testing.assert_array_equal(score.targets, ids[1:])


class _Uniform(nnx.Module):

  def __init__(self, vocab):
    self.vocab = vocab
    self.dummy = nnx.Param(jnp.zeros(()))

  def __call__(self, tokens, deterministic=True):
    return jnp.zeros(tokens.shape + (self.vocab,)) + self.dummy[...]


def test_bits_per_second_of_a_uniform_model_is_its_entropy_rate():
  codec = TokenCodec(EncodingConfig())
  scorer = evaluation.Scorer(_Run(_Uniform(codec.vocab_size), codec, 32), stride=16)
  notes, ids = _song(codec, 40, 3)
  seconds = evaluation.song_seconds(notes, codec.config.grid_ms)
  summary = evaluation.summarize(scorer.score([("a", ids, len(notes), seconds)]), codec)
  bits_per_token = math.log2(codec.vocab_size)
  assert summary["nll_per_token"] == pytest.approx(math.log(codec.vocab_size), rel=1e-6)
  assert summary["bits_per_second"] == pytest.approx(
      bits_per_token * (len(ids) - 1) / seconds, rel=1e-6)
  assert summary["bits_per_note"] == pytest.approx(bits_per_token * (len(ids) - 1) / len(notes),
                                                   rel=1e-6)
  fields = summary["bits_per_note_by_field"]
  # 5 ids per note plus WAITs and EOS: the fields add up to the total.
  assert sum(fields.values()) == pytest.approx(summary["bits_per_note"], rel=1e-6)
  assert fields["pitch"] == pytest.approx(bits_per_token, rel=1e-6)  # One pitch id per note.
  by_inst = summary["by_instrument"]
  assert sum(v["notes"] for v in by_inst.values()) == len(notes)
  assert {v["instrument"] for v in by_inst.values()} == set(np.unique(notes.instrument).tolist())


def _notes_with_long_gaps(seed, n=60):
  """Random notes with gaps longer than one time-delta id / char value (WAITs, wait lines)."""
  rng = np.random.default_rng(seed)
  gaps = rng.choice([0, 0, 1, 3, 17, 90, 250, 1000], size=n)
  onset = np.cumsum(gaps)
  return Notes(onset, rng.integers(1, 300, n), rng.integers(20, 100, n),
               rng.integers(1, 128, n), rng.choice([0, 40, 128], n)).canonical()


@pytest.mark.parametrize("kind", ["token", "compact", "char"])
def test_time_advance_sums_to_onsets_and_target_seconds_to_song_length(kind):
  from virtuoso_jax.encoding import CharCodec  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  cfg = EncodingConfig(token_layout="compact" if kind == "compact" else "default")
  for seed in range(5):
    notes = _notes_with_long_gaps(seed)
    if kind == "char":
      codec = CharCodec(cfg)
      ids = input_pipeline.char_ids(codec, codec.encode(notes, name="x"))
      # Note lines are the lines of num_fields characters; their first id carries the onset.
      marks, pos = [], 0
      for line in codec.ids_to_text(ids).split("\n"):
        if len(line) == codec.num_fields:
          marks.append(pos)
        pos += len(line) + 1
    else:
      codec = TokenCodec(cfg)
      ids = codec.encode(notes)
      marks = np.flatnonzero(codec.kinds(ids) == 4)  # K_DT: each note's time-delta id.
    clock = np.cumsum(codec.time_advance(ids))
    decoded = evaluation.ids_to_notes(codec, ids)
    np.testing.assert_array_equal(clock[marks], decoded.onset)
    seconds = evaluation.target_seconds(codec, ids)
    assert len(seconds) == len(ids) - 1 and (seconds >= 0).all()
    assert seconds.sum() == pytest.approx(evaluation.song_seconds(decoded, cfg.grid_ms))
    # Durations here are below both codecs' caps, so the song keeps its exact length.
    assert seconds.sum() == pytest.approx(
        (notes.onset.astype(np.int64) + notes.duration).max() * cfg.grid_ms / 1000)


def test_note_instruments_follow_the_note_groups():
  codec = TokenCodec(EncodingConfig())
  notes, ids = _song(codec, 12, 5)
  insts = evaluation.note_instruments(codec, ids)
  assert insts[0] == -1 and insts[-1] == -1  # BOS and EOS.
  pitch_pos = np.flatnonzero(codec.kinds(ids) == 6)
  np.testing.assert_array_equal(insts[pitch_pos], notes.instrument)
