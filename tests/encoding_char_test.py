"""CharCodec (Optimus TXT): round trips, vocabulary, robustness, and the original's legacy files."""

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
import pytest

from virtuoso_jax.encoding import DRUMS, CharCodec, EncodingConfig, Notes
from virtuoso_jax.encoding.char_codec import MUSENET_PATCHES


@st.composite
def notes_strategy(draw, max_notes=30):
  n = draw(st.integers(0, max_notes))
  rows = [(draw(st.integers(0, 4000)), draw(st.integers(1, 1500)), draw(st.integers(0, 127)),
           draw(st.integers(1, 127)), draw(st.integers(0, 128))) for _ in range(n)]
  if n and draw(st.booleans()):
    o = rows[0][0]
    rows += [(o, 3, 100, 127, DRUMS), (o, 94, 100, 127, 0)]  # C1 and DEL chars
  return Notes.from_rows(rows)


CONFIGS = [EncodingConfig(), EncodingConfig(char_velocity=False, char_instrument=False),
           EncodingConfig(char_instrument=False, char_max_value=200)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["5field", "3field", "4field"])
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=notes_strategy())
def test_round_trip(cfg, notes):
  c = CharCodec(cfg)
  text, report = c.encode(notes, name="a b=c\u00e9", return_report=True)
  assert text.startswith("SONG=a_b_c_\n")
  assert all(0x21 <= ord(ch) <= c.max_codepoint for ch in text if ch != "\n")
  assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)
  expected = notes.replace(duration=np.minimum(notes.duration, c.max_value))
  if not cfg.char_velocity:
    expected = expected.replace(velocity=np.full(len(notes), 90))
  if not cfg.char_instrument:
    expected = expected.replace(instrument=np.zeros(len(notes), np.int64))
  back, rep = c.decode(text, return_report=True)
  assert rep["skipped_lines"] == 0
  assert back == expected.canonical()
  assert report["duration_clipped"] == int((notes.duration > c.max_value).sum())
  ids = c.text_to_ids(text)
  assert ids.min() >= 1 and ids.max() < c.vocab_size
  assert c.ids_to_text(np.concatenate([ids, [c.pad_id] * 3])) == text
  # Without a header (what a sampler continues) it decodes the same.
  assert c.decode(c.encode(notes, name=None)) == expected.canonical()


def test_c1_characters_are_field_values_not_line_breaks():
  c = CharCodec(EncodingConfig())
  notes = Notes.from_rows([(0, 100, 100, 100, 0), (100, 100, 60, 80, 0)])  # chr(133) = U+0085
  text = c.encode(notes)
  assert "\x85" in text and len(text.splitlines()) > len(text.split("\n"))
  assert c.decode(text) == notes


def test_long_gap_uses_wait_lines_exactly():
  c = CharCodec(EncodingConfig(char_max_value=200))
  notes = Notes.from_rows([(0, 5, 60, 80, 0), (1000, 5, 62, 80, 0), (1003, 5, 64, 80, 0)])
  text, rep = c.encode(notes, return_report=True)
  assert rep["wait_lines"] == 4  # 1000 = 4 * 200 + 200
  assert c.decode(text) == notes


def test_vocabulary_is_fixed_by_the_encoding():
  a, b = CharCodec(EncodingConfig()), CharCodec(EncodingConfig(char_velocity=False))
  assert a.vocab_size == b.vocab_size == 1000 + 33 - 32 + 1 + 2
  assert a.pad_id == 0 and a.text_to_ids("\n").tolist() == [1]
  with pytest.raises(ValueError, match="outside the char vocabulary"):
    a.text_to_ids("ok\x07")
  with pytest.raises(ValueError, match="outside"):
    a.ids_to_text([a.vocab_size])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300) | st.lists(st.integers(0, 0x10FFFF), max_size=100).map(
    lambda cps: "".join(map(chr, cps))))
def test_random_text_never_raises(text):
  c = CharCodec(EncodingConfig())
  notes, rep = c.decode(text, return_report=True)
  assert rep["notes"] == len(notes)
  c.split_songs(text)
  c.decode_legacy(text)


def test_malformed_lines_are_skipped_and_do_not_shift_time():
  c = CharCodec(EncodingConfig())
  notes = Notes.from_rows([(0, 5, 60, 80, 0), (10, 5, 62, 80, 0), (20, 5, 64, 80, 0)])
  lines = c.encode(notes).split("\n")
  corrupt = "\n".join(lines[:2] + ["xy", chr(33 + 5) + "!" + chr(33 + 200) + "!!"] + lines[2:])
  back, rep = c.decode(corrupt, return_report=True)
  assert back == notes and rep["skipped_lines"] == 2


def test_split_songs_and_decode_first_song():
  c = CharCodec(EncodingConfig())
  a = Notes.from_rows([(0, 5, 60, 80, 0)])
  b = Notes.from_rows([(3, 5, 70, 80, 40), (4, 5, 71, 80, 40)])
  text = c.encode(a, name="first") + c.encode(b, name="second")
  songs = c.split_songs(text)
  assert [s[0] for s in songs] == ["first", "second"]
  assert c.decode(text) == a and c.decode(songs[1][1]) == b


# ----------------------------------------------------------------------------- legacy files


def legacy_text(rows, *, offset=33, den=10, layout="STA-DUR-PTC-VEL-CHA", name="s1",
                dataset_header=True):
  """What TMIDIX.Optimus_MIDI_TXT_Processor writes (spec §1.4-1.5, §1.8): the stream sorted by
  onset then pitch descending, line k = (delta to note k, attributes of note k-1), note 0 twice.
  rows: (onset_ms, dur_ms, pitch, vel, channel)."""
  rows = sorted(rows, key=lambda r: (r[0], -r[2]))
  fields = layout.split("-")
  out = []
  if dataset_header:
    out += ["DATASET=Optimus-VIRTUOSO-Music-Dataset", "CREATED_ON=2021-08-20-10-00-00-000",
            f"CHARS_ENCODING_OFFSET={offset}", f"TIME_DENOMINATOR={den}", "TRANSFORM=0",
            "PERFECT_TIMINGS=True", "MUSENET_ENCODING=True", "TRANSPOSED_BY=0",
            "TRANSPOSED_AND_FLIPPED=False", f"LEGEND={layout}"]
  out.append(f"SONG={name}_with_{len(rows) - 1}_notes")
  prev = rows[0]
  for r in rows:
    vals = {"STA": (r[0] - prev[0]) // den, "DUR": prev[1] // den, "PTC": prev[2],
            "VEL": prev[3], "CHA": prev[4]}
    out.append("".join(chr(vals[f] + offset) for f in fields))
    prev = r
  return "\n".join(out) + "\n"


ROWS = [(1000, 500, 60, 70, 0), (1000, 250, 64, 71, 3), (1000, 100, 36, 90, 9),
        (1500, 300, 67, 72, 8), (2490, 120, 62, 73, 0), (2600, 40, 55, 74, 1)]


def expected_legacy(rows, fields):
  rows = sorted(rows, key=lambda r: (r[0], -r[2]))[:-1]  # The original loses the last note.
  t0 = rows[0][0]
  out = []
  for on, dur, p, v, ch in rows:
    inst = (DRUMS if ch == 9 else MUSENET_PATCHES[ch]) if "CHA" in fields else 0
    out.append(((on - t0) // 10, dur // 10, p, v if "VEL" in fields else 90, inst))
  return Notes.from_rows(out).canonical()


@pytest.mark.parametrize("layout", ["STA-DUR-PTC-VEL-CHA", "STA-DUR-PTC", "STA-DUR-PTC-CHA"])
@pytest.mark.parametrize("offset", [33, 30000])
@pytest.mark.parametrize("with_header", [True, False])
def test_decode_legacy_undoes_the_one_note_shift(layout, offset, with_header):
  c = CharCodec(EncodingConfig())
  text = legacy_text(ROWS, offset=offset, den=10, layout=layout, dataset_header=with_header)
  kw = {} if with_header else {"time_denominator": 10}
  (name, notes), = c.decode_legacy(text, **kw)
  assert name == "s1"
  assert notes == expected_legacy(ROWS, layout.split("-"))


def test_decode_legacy_dataset_with_many_songs_and_ms_times():
  c = CharCodec(EncodingConfig())
  a = legacy_text(ROWS, den=1, name="one")
  b = legacy_text([(r[0] + 40, r[1], r[2] + 1, r[3], r[4]) for r in ROWS], den=1, name="two",
                  dataset_header=False)
  text = a + b + "TOTAL_SONGS_IN_DATASET=2"
  songs, report = c.decode_legacy(text, return_report=True)
  assert [s[0] for s in songs] == ["one", "two"]
  assert report["char_offset"] == 33 and report["time_denominator"] == 1
  assert songs[0][1] == expected_legacy(ROWS, ["VEL", "CHA"])
  assert len(songs[1][1]) == len(ROWS) - 1


# ----------------------------------------------------------------------------- hostile text

from virtuoso_jax.encoding import char_codec  # noqa: E402


def test_decode_onsets_past_int32_are_skipped_and_counted():
  # Was: ValueError "Notes.onset values do not fit int32" from a decoder documented never to
  # raise. The widest wait (char_max_value 55262) needs 38.9k wait lines to pass 2^31 units.
  c = CharCodec(EncodingConfig(char_max_value=0xD7FF - 33))
  wait = chr(c.max_value + 33) + "\n"
  note = chr(33) + chr(33 + 5) + chr(33 + 60) + chr(33 + 80) + chr(33) + "\n"
  text = "SONG=x\n" + note + wait * (2**31 // c.max_value + 1) + note * 3
  notes, rep = c.decode(text, return_report=True)
  assert len(notes) == 1 and rep["out_of_range_notes"] == 3 and rep["skipped_lines"] == 0


def test_text_over_the_size_limit_raises_text_too_large(monkeypatch):
  c = CharCodec(EncodingConfig())
  text = "SONG=x\n" + "!#]z!\n" * 300
  monkeypatch.setattr(char_codec, "MAX_TEXT_CHARS", 1000)
  for fn in (c.decode, c.decode_legacy, c.split_songs):
    with pytest.raises(char_codec.TextTooLarge, match="over the limit MAX_TEXT_CHARS=1000"):
      fn(text)
  assert issubclass(char_codec.TextTooLarge, ValueError)
  assert len(c.decode(text[:1000])) > 100  # At the limit: decodes.
  monkeypatch.setattr(char_codec, "MAX_LEGACY_SONGS", 10)
  with pytest.raises(char_codec.TextTooLarge, match="MAX_LEGACY_SONGS=10"):
    c.decode_legacy("SONG=a\n!!!!!\n" * 11)


def test_decode_legacy_hostile_values_are_skipped_and_counted():
  c = CharCodec(EncodingConfig())
  good = legacy_text(ROWS, den=10)
  # TIME_DENOMINATOR absurd (was OverflowError / negative onsets): ignored, counted, default 1.
  for den in ("9" * 40, "-5", "0", "x"):
    text = good.replace("TIME_DENOMINATOR=10", f"TIME_DENOMINATOR={den}")
    ((_, notes),), rep = c.decode_legacy(text, return_report=True)
    assert rep["ignored_headers"] == 1 and rep["time_denominator"] == 1 and len(notes) == 5
  with pytest.raises(ValueError, match="time_denominator"):
    c.decode_legacy(good, time_denominator=10**30)
  # A STA below the char offset (was: shifted every later note, onsets < 0 -> ValueError).
  lines = good.split("\n")
  song = lines.index("SONG=s1_with_5_notes")
  lines.insert(song + 2, " " + lines[song + 2][1:])
  (_, notes), = c.decode_legacy("\n".join(lines))
  assert notes == expected_legacy(ROWS, ["VEL", "CHA"])  # The bad row neither counts nor shifts.
  # Times past 2^31 grid units (huge STA code points x 10000 ms): skipped and counted.
  big = chr(0x10FFFF)
  text = ("TIME_DENOMINATOR=10000\nSONG=a\n" + "!#]z!\n" * 2 + (big + "#]z!\n") * 3
          + "!#]z!\n" * 2)
  songs, rep = c.decode_legacy(text, return_report=True)
  assert rep["skipped"] >= 3 and songs[0][1].onset.min() >= 0


def test_decode_legacy_time_and_memory_are_linear():
  # 8M characters of random 5-character lines (was: ~0.5-4 us and ~60-80 bytes per character
  # in Python lists); loose bound for a loaded 2-core machine.
  import time  # pylint: disable=g-import-not-at-top
  import tracemalloc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  cps = rng.integers(33, 200, 8_000_000, dtype=np.uint32)
  cps[5::6] = 10
  text = cps.astype("<u4").tobytes().decode("utf-32-le")
  c = CharCodec(EncodingConfig())
  tracemalloc.start()
  t = time.perf_counter()
  songs, rep = c.decode_legacy(text, return_report=True)
  seconds = time.perf_counter() - t
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert rep["songs"] == 1 and len(songs[0][1]) > 50_000
  assert seconds < 30 and peak < 60 * len(text), (seconds, peak / len(text))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.one_of(
    st.text(min_size=1, max_size=6),
    st.lists(st.integers(0, 0x10FFFF), min_size=1, max_size=5).map(
        lambda cps: "".join(map(chr, cps))),
    st.sampled_from([chr(33 + 1000), "TIME_DENOMINATOR=99999999999", "SONG=x",
                     "CHARS_ENCODING_OFFSET=-7", "LEGEND=STA-DUR-PTC", "\r"])), max_size=60))
def test_hostile_lines_never_raise(lines):
  c = CharCodec(EncodingConfig())
  text = "\n".join(lines)
  notes, rep = c.decode(text, return_report=True)
  assert rep["notes"] == len(notes)
  try:
    c.decode_legacy(text)
  except ValueError as e:  # Only an unsupported LEGEND= is refused.
    assert "unsupported legend" in str(e)
