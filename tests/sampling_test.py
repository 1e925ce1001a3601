"""The sampler (virtuoso_jax.sampling) on tiny random-init GPT and RGA models.

Cached == uncached (greedy and sampled, also across window slides), every sample decodes and
round-trips through MIDI, instrument restriction, prompt kept exactly, stops by notes and time,
the char grammar. The binaries are tested in sample_cli_test.py / compose_test.py.
"""

import numpy as np
import pytest
from flax import nnx

from virtuoso_jax import config_lib
from virtuoso_jax import encoding
from virtuoso_jax import models
from virtuoso_jax import sampling

CODEC = encoding.TokenCodec()
TABLES = CODEC.grammar()
CONTEXT = 24


def tiny_model(name: str, vocab: int, seed: int = 0):
  config = config_lib.load_config(f"configs/{name}.py:tiny")
  m = config.model
  m.vocab_size, m.max_len, m.num_layers, m.emb_dim, m.mlp_dim, m.num_heads = (
      vocab, CONTEXT, 1, 32, 64, 2)
  if name == "rga":
    m.max_relative = CONTEXT
  model = models.create_model(m, nnx.Rngs(seed))
  # Learned positions start at zero; give them values so position bugs would show.
  if getattr(model, "learned_pos", False):
    model.pos_emb[...] = 0.5 * np.random.default_rng(seed).normal(size=model.pos_emb.shape)
  return model


@pytest.fixture(scope="module", params=["gpt", "rga"])
def model(request):
  return tiny_model(request.param, CODEC.vocab_size)


def prompt_notes(n=6):
  return encoding.Notes(onset=np.arange(n) * 25, duration=np.full(n, 20), pitch=60 + np.arange(n),
                        velocity=np.full(n, 80), instrument=np.where(np.arange(n) % 2, 0, 40))


def no_eos():
  mask = np.ones(CODEC.vocab_size, bool)
  mask[CODEC.eos_id] = False
  return mask


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_equals_uncached_across_slides(model, temperature):
  prompt = CODEC.encode(prompt_notes(), add_eos=False)  # 31 ids > the 24-token context.
  kw = dict(seed=3, num_samples=2, max_new_tokens=40, allowed_ids=no_eos(), keep=12)
  opts = sampling.SampleOptions(temperature=temperature, top_k=0 if temperature == 0 else 50,
                                top_p=1.0 if temperature == 0 else 0.9)
  a = sampling.generate(model, prompt, TABLES, opts, cached=True, **kw)
  b = sampling.generate(model, prompt, TABLES, opts, cached=False, **kw)
  assert a.slides >= 2  # The prompt was cut and the window slid while generating.
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  assert (a.lengths == 40).all()
  if temperature > 0:  # Two rows with one seed still differ (per-row randomness).
    assert (a.tokens[0] != a.tokens[1]).any()


def test_samples_decode_restrict_instruments_and_keep_prompt(model, tmp_path):
  notes = prompt_notes()
  prompt = CODEC.encode(notes, add_eos=False)
  allowed = CODEC.instrument_mask([0, 128]) & no_eos()
  res = sampling.generate(model, prompt, TABLES, sampling.SampleOptions(temperature=1.5),
                          seed=0, num_samples=4, max_new_tokens=3 * CONTEXT,
                          allowed_ids=allowed)
  assert res.slides >= 2
  for b in range(4):
    gen = sampling.drop_partial_note(res.tokens[b, :res.lengths[b]], TABLES)
    assert res.lengths[b] - len(gen) < CODEC.tokens_per_note  # At most one unfinished note.
    full = np.concatenate([prompt, gen])
    out, report = CODEC.decode(full, return_report=True)
    assert report["skipped_fragments"] == 0 and report["skipped_ids"] == 0
    assert len(out) == len(notes) + res.notes[b]
    # The prompt's notes are all there, unchanged, and every new note uses piano or drums.
    rows = set(out.to_rows())
    assert set(CODEC.quantize(notes).to_rows()) <= rows
    new = CODEC.decode(np.concatenate([[CODEC.bos_id], gen]))
    assert set(np.unique(new.instrument)) <= {0, 128}
    back = encoding.midi_to_notes(encoding.notes_to_midi(out, str(tmp_path / f"{b}.mid")))
    assert back.to_rows() == out.canonical().to_rows()


def test_stops_by_notes_and_units(model):
  res = sampling.generate(model, [CODEC.bos_id], TABLES, sampling.SampleOptions(), seed=1,
                          num_samples=3, max_new_tokens=200, max_notes=5, allowed_ids=no_eos())
  assert (res.notes == 5).all()
  for b in range(3):
    assert len(CODEC.decode(np.concatenate([[CODEC.bos_id], res.tokens[b, :res.lengths[b]]]))) == 5
  res = sampling.generate(model, [CODEC.bos_id], TABLES, sampling.SampleOptions(), seed=1,
                          num_samples=3, max_new_tokens=200, max_units=300, allowed_ids=no_eos())
  assert (res.units >= 300).all() | (res.lengths == 200).all()
  for b in range(3):
    gen = sampling.trim_to_units(res.tokens[b, :res.lengths[b]], TABLES, 300)
    onsets = CODEC.decode(np.concatenate([[CODEC.bos_id], gen])).onset
    assert len(onsets) and onsets.max() < 300


def test_options_and_prompt_errors(model):
  with pytest.raises(ValueError, match="top_p"):
    sampling.SampleOptions(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    sampling.SampleOptions(temperature=-1)
  bad = np.array([CODEC.bos_id, CODEC.field_ranges()["pitch"][0]])  # A pitch where a time goes.
  with pytest.raises(ValueError, match="position 0"):
    sampling.generate(model, bad, TABLES, max_new_tokens=4)


def test_filter_logits_top_k_top_p_keep_only_legal_ids():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  logits = jnp.asarray([[5.0, 4.0, 3.0, 2.0, 1.0, 9.0]])
  allowed = jnp.asarray([[True, True, True, True, True, False]])
  x = sampling.filter_logits(logits, allowed, sampling.SampleOptions(top_k=2))
  assert (np.asarray(x[0]) > -1e29).tolist() == [True, True, False, False, False, False]
  x = sampling.filter_logits(logits, allowed, sampling.SampleOptions(top_p=0.5))
  assert (np.asarray(x[0]) > -1e29).tolist() == [True, False, False, False, False, False]


def test_char_grammar_samples_decode():
  codec = encoding.CharCodec()
  tables = codec.grammar()
  model = tiny_model("gpt", codec.vocab_size, seed=1)
  text = "SONG=Relax_with_10_notes\n"
  state, flags = codec.prompt_state(text)
  assert state == tables.start_state
  res = sampling.generate(model, codec.text_to_ids(text), tables,
                          sampling.SampleOptions(temperature=1.0), seed=0, num_samples=2,
                          max_new_tokens=80, max_notes=6, prompt_state=state,
                          prompt_boundaries=flags)
  for b in range(2):
    out = text + codec.ids_to_text(res.tokens[b, :res.lengths[b]])
    notes, report = codec.decode(out, return_report=True)
    assert len(notes) == res.notes[b] == 6, report
  with pytest.raises(ValueError, match="line 2"):
    codec.prompt_state("SONG=x\n!!!\n")  # DUR 0 is illegal.
