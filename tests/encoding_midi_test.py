"""MIDI <-> Notes: semantics on hand-made files, bad inputs, property round trips, real corpora."""

import collections
import io
import pathlib
import random
import re

from hypothesis import HealthCheck, given, settings, strategies as st
import mido
import numpy as np
import pytest

from virtuoso_jax.encoding import (CharCodec, EncodingConfig, MidiError, Notes, TokenCodec,
                                   midi_to_notes, note_sequence_to_notes, notes_to_midi,
                                   notes_to_note_sequence)

M = mido.Message
MM = mido.MetaMessage


def make_midi(tracks, tpq=500, fmt=1) -> bytes:
  """tracks: lists of (absolute tick, message)."""
  mf = mido.MidiFile(type=fmt, ticks_per_beat=tpq)
  for events in tracks:
    tr = mido.MidiTrack()
    last = 0
    for t, msg in sorted(events, key=lambda e: e[0]):
      tr.append(msg.copy(time=t - last))
      last = t
    mf.tracks.append(tr)
  buf = io.BytesIO()
  mf.save(file=buf)
  return buf.getvalue()


def note(t0, t1, pitch, vel=80, ch=0):
  return [(t0, M("note_on", note=pitch, velocity=vel, channel=ch)),
          (t1, M("note_off", note=pitch, velocity=0, channel=ch))]


NO_SUSTAIN = EncodingConfig(sustain_pedal=False)

# ----------------------------------------------------------------------------- semantics


def test_default_tempo_and_tempo_map():
  # tpq 480, 500 ms/quarter before the first tempo, then 250 ms/quarter from tick 960.
  ev = note(480, 960, 60) + note(1440, 1920, 62)
  ev.append((960, MM("set_tempo", tempo=250_000)))
  n = midi_to_notes(make_midi([ev], tpq=480))
  # 480 ticks = 0.5 s -> 50; tick 960 = 1.0 s -> 100; tick 1440 = 1.0 + 0.25 s -> 125.
  assert n.to_rows() == [(50, 50, 60, 80, 0), (125, 25, 62, 80, 0)]


def test_velocity_zero_is_note_off_and_short_note_is_one_unit():
  ev = [(0, M("note_on", note=60, velocity=90)), (1000, M("note_on", note=60, velocity=0)),
        (2000, M("note_on", note=61, velocity=70)), (2001, M("note_off", note=61))]
  n = midi_to_notes(make_midi([ev]))
  assert n.to_rows() == [(0, 100, 60, 90, 0), (200, 1, 61, 70, 0)]


def test_programs_per_channel_over_time_and_drums():
  ev = [(0, M("program_change", program=40, channel=1)),
        (0, M("program_change", program=73, channel=2))]
  ev += note(0, 500, 60, ch=1) + note(0, 500, 72, ch=2) + note(0, 100, 36, ch=9)
  ev += [(600, M("program_change", program=42, channel=1))] + note(700, 800, 48, ch=1)
  n = midi_to_notes(make_midi([ev]))
  assert n.to_rows() == [(0, 50, 60, 80, 40), (0, 50, 72, 80, 73), (0, 10, 36, 80, 128),
                         (70, 10, 48, 80, 42)]
  assert n.is_canonical()


def test_overlapping_same_pitch_closes_all_like_note_seq():
  # on@0, on@100, off@300, off@500: one note-off closes both open notes (pretty_midi's rule).
  ev = [(0, M("note_on", note=60, velocity=80)), (100, M("note_on", note=60, velocity=90)),
        (300, M("note_off", note=60)), (500, M("note_off", note=60))]
  n = midi_to_notes(make_midi([ev]))
  assert n.to_rows() == [(0, 30, 60, 80, 0), (10, 20, 60, 90, 0)]
  assert midi_to_notes(notes_to_midi(n)) == n


def test_sustain_pedal_extends_until_release_or_restrike():
  ev = [(0, M("control_change", control=64, value=127)), (2000, M("control_change", control=64,
                                                                  value=0))]
  ev += note(0, 100, 60) + note(500, 600, 60) + note(0, 300, 64) + note(2500, 2600, 67)
  n = midi_to_notes(make_midi([ev]))
  # 60: released at 100 under the pedal, re-struck at 500 -> ends at 500; the second 60 and
  # the 64 last to the pedal release at 2000; 67 is after the pedal.
  assert n.to_rows() == [(0, 200, 64, 80, 0), (0, 50, 60, 80, 0), (50, 150, 60, 80, 0),
                         (250, 10, 67, 80, 0)]
  plain = midi_to_notes(make_midi([ev]), NO_SUSTAIN)
  assert plain.to_rows() == [(0, 30, 64, 80, 0), (0, 10, 60, 80, 0), (50, 10, 60, 80, 0),
                             (250, 10, 67, 80, 0)]


def test_out_of_range_data_byte_is_recovered_with_mido():
  data = bytearray(make_midi([[(0, M("control_change", control=7, value=100))] + note(0, 500, 60)
                              + note(500, 1000, 64)]))
  i = data.index(bytes([0xB0, 7, 100]))
  data[i + 2] = 168  # An illegal data byte: symusic rejects the file.
  n, info = midi_to_notes(bytes(data), return_info=True)
  assert info.recovered and info.parser == "mido" and info.recover_reason
  assert n.to_rows() == [(0, 50, 60, 80, 0), (50, 50, 64, 80, 0)]
  with pytest.raises(MidiError, match="unreadable"):
    midi_to_notes(bytes(data), EncodingConfig(tolerant_fallback=False))


def test_clean_file_is_not_marked_recovered():
  _, info = midi_to_notes(make_midi([note(0, 500, 60)]), return_info=True)
  assert info.parser == "symusic" and not info.recovered


# ----------------------------------------------------------------------------- bad inputs

GOOD = make_midi([note(0, 500, 60) + note(500, 1000, 62) + note(1000, 1500, 64)])


def _format2():
  data = bytearray(make_midi([note(0, 500, 60)], fmt=1))
  data[8:10] = (2).to_bytes(2, "big")
  return bytes(data)


def _absurd_delta():
  # A delta of 0x0FFFFFF ticks (the VLQ maximum is 0x0FFFFFFF) at tpq 96: days of silence.
  return make_midi([note(0, 10, 60) + note(0x0FFFFFF, 0x0FFFFFF + 10, 62)], tpq=96)


def _smf(body: bytes, tpq=480) -> bytes:
  """A one-track format-0 file from a raw MTrk body (end-of-track appended)."""
  body += b"\x00\xff\x2f\x00"
  return (b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
          + tpq.to_bytes(2, "big") + b"MTrk" + len(body).to_bytes(4, "big") + body)


def _long_vlq_delta():
  # A note-off delta of 11 VLQ bytes (2^70 ticks): symusic reads 4 and misparses; mido reads the
  # whole quantity into a Python int (was: OverflowError escaping from the fallback).
  big = [(1 << 70) >> (7 * k) & 0x7F for k in range(10, -1, -1)]
  vlq = bytes([b | 0x80 for b in big[:-1]] + [big[-1]])
  return _smf(b"\x00\x90\x3c\x40" + vlq + b"\x80\x3c\x40")


def _tick_wrap_at_tempo_1():
  # Tempo 1 us/quarter, then 9 deltas of 0x0FFFFFFF: ticks pass 2^31 and symusic's int32 ticks
  # wrap negative; at that tempo the song is short, so max_seconds did not catch it (was:
  # ValueError "invalid Notes: onset < 0").
  wait = b"\xff\xff\xff\x7f\xff\x01\x00"  # delta 0x0FFFFFFF, empty text event
  return _smf(b"\x00\xff\x51\x03\x00\x00\x01" + b"\x00\x90\x3c\x40\x10\x80\x3c\x40"
              + wait * 9 + b"\x00\x90\x3e\x40\x10\x80\x3e\x40")


BAD = {
    "long_vlq_delta": (_long_vlq_delta(), "MAX_TICK"),
    "tick_wrap_at_tempo_1": (_tick_wrap_at_tempo_1(), "MAX_TICK"),
    "empty": (b"", "empty"),
    "random_bytes": (random.Random(0).randbytes(2000), "MThd"),
    "truncated": (GOOD[:len(GOOD) // 2], ""),
    "header_only": (GOOD[:14], "truncated"),
    "no_notes": (make_midi([[(0, MM("set_tempo", tempo=400_000))]]), "no notes"),
    "format2": (_format2(), "format 2"),
    "absurd_delta": (_absurd_delta(), "max_seconds"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_midi_error_with_reason(case, tmp_path):
  data, reason = BAD[case]
  path = tmp_path / f"{case}.mid"
  path.write_bytes(data)
  with pytest.raises(MidiError) as e:
    midi_to_notes(path)
  assert str(path) in str(e.value)
  assert reason in str(e.value)
  assert e.value.reason
  assert e.value.kind == {"no_notes": "no_notes", "format2": "unsupported", "absurd_delta":
                          "over_limit", "long_vlq_delta": "over_limit",
                          "tick_wrap_at_tempo_1": "over_limit"}.get(case, "unreadable")
  assert ": )" not in str(e.value) and "()" not in str(e.value)  # No reason left empty.
  with pytest.raises(MidiError):
    midi_to_notes(data)


@pytest.mark.parametrize("limit,value,reason", [
    ("max_file_bytes", 20, "max_file_bytes"), ("max_notes", 2, "max_notes"),
    ("max_tracks", 0, "max_tracks"), ("max_seconds", 1.0, "max_seconds")])
def test_limits_raise_midi_error_naming_the_limit(limit, value, reason, tmp_path):
  path = tmp_path / "x.mid"
  path.write_bytes(GOOD)
  assert len(midi_to_notes(path)) == 3
  with pytest.raises(MidiError, match=reason) as e:
    midi_to_notes(path, EncodingConfig(**{limit: value}))
  assert e.value.kind == "over_limit"


def test_file_size_limit_message_and_no_read(tmp_path):
  path = tmp_path / "big.mid"
  with open(path, "wb") as f:  # Sparse: 70 MiB on paper.
    f.write(GOOD)
    f.truncate(70 * 1024 * 1024)
  with pytest.raises(MidiError, match=r"file is 70.0 MiB, over the 64 MiB limit"):
    midi_to_notes(path)


def test_track_chunks_count_against_max_tracks_whatever_the_header_says():
  data = bytearray(GOOD + b"MTrk\x00\x00\x00\x00" * 40)
  assert len(midi_to_notes(bytes(data))) == 3
  with pytest.raises(MidiError, match="max_tracks=20"):
    midi_to_notes(bytes(data), EncodingConfig(max_tracks=20))


def test_tolerant_parser_is_bounded():
  from virtuoso_jax.encoding import midi_io  # pylint: disable=g-import-not-at-top
  n = 200_000  # ~1.3 MB, over MAX_FALLBACK_BYTES
  notes = Notes.from_rows([(i // 4, 1, 30 + i % 4, 80, 0) for i in range(n)])
  data = bytearray(notes_to_midi(notes))
  assert len(data) > midi_io.MAX_FALLBACK_BYTES
  i = re.search(rb"[\x90-\x9f][\x1e-\x21]\x50", data).start()  # The first note-on (any channel).
  data[i + 2] = 0xA8  # An illegal velocity: symusic refuses the file.
  with pytest.raises(MidiError, match="MAX_FALLBACK_BYTES"):
    midi_to_notes(bytes(data))
  # A track length running past the end: mido could only fail at EOF, so it is not tried.
  pos = data.index(b"MTrk", 14 + 8 + 20)
  data[pos + 4:pos + 8] = (len(data)).to_bytes(4, "big")
  with pytest.raises(MidiError, match="tolerant parser not tried: track chunk"):
    midi_to_notes(bytes(data[:800_000]))


def test_missing_file_and_allow_empty(tmp_path):
  with pytest.raises(MidiError, match="nope.mid"):
    midi_to_notes(tmp_path / "nope.mid")
  assert len(midi_to_notes(BAD["no_notes"][0], EncodingConfig(allow_empty=True))) == 0


def test_fuzzed_files_raise_only_midi_error():
  rng = random.Random(1)
  ok = bad = 0
  for _ in range(300):
    data = bytearray(GOOD)
    for _ in range(rng.randint(1, 6)):
      data[rng.randrange(len(data))] = rng.randrange(256)
    if rng.random() < 0.3:
      data = data[:rng.randrange(len(data))]
    try:
      n = midi_to_notes(bytes(data))
      assert isinstance(n, Notes)
      ok += 1
    except MidiError as e:
      assert e.reason
      bad += 1
  assert ok and bad


# ----------------------------------------------------------------------------- properties


@st.composite
def notes_strategy(draw, max_notes=40, max_onset=3000, max_duration=700):
  n = draw(st.integers(0, max_notes))
  inst_pool = draw(st.lists(st.integers(0, 128), min_size=1, max_size=20))
  rows = []
  for _ in range(n):
    rows.append((draw(st.integers(0, max_onset)), draw(st.integers(1, max_duration)),
                 draw(st.integers(0, 127)), draw(st.integers(1, 127)),
                 draw(st.sampled_from(inst_pool))))
  if n and draw(st.booleans()):  # Simultaneous notes and same-pitch overlaps.
    o, d, p, v, i = rows[0]
    rows += [(o, d, p - 1 if p else 1, v, i), (o, max(1, d // 2), p, v, i), (o + 1, d, p, v, i)]
  return Notes.from_rows(rows)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes_strategy())
def test_notes_to_midi_round_trip(notes):
  data = notes_to_midi(notes)
  if not len(notes):
    with pytest.raises(MidiError, match="no notes"):
      midi_to_notes(data)
    assert len(midi_to_notes(data, EncodingConfig(allow_empty=True))) == 0
    return
  assert midi_to_notes(data) == notes.canonical()
  assert note_sequence_to_notes(notes_to_note_sequence(notes)) == notes.canonical()


def test_more_than_fifteen_instruments_round_trip():
  notes = Notes.from_rows([(i, 10, 60, 80, i) for i in range(40)] + [(5, 3, 36, 100, 128)])
  data = notes_to_midi(notes)
  assert midi_to_notes(data) == notes.canonical()
  mf = mido.MidiFile(file=io.BytesIO(data))
  drum_channels = {m.channel for t in mf.tracks for m in t if m.type == "note_on" and m.note == 36}
  assert drum_channels == {9}
  assert any(m.type == "set_tempo" for m in mf.tracks[0])


def test_overlapping_same_pitch_goes_to_an_extra_track():
  """Notes of one pitch that overlap on one instrument are written to an extra track of that
  instrument, so no note-off in the file can end another note early: within every track a
  pitch is never struck while it sounds. Any per-track pairing rule then reads the notes back."""
  notes = Notes.from_rows([(0, 30, 60, 80, 0), (10, 30, 60, 90, 0), (20, 5, 60, 70, 0),
                           (50, 10, 60, 60, 0), (0, 40, 64, 80, 0), (0, 10, 36, 100, 128),
                           (5, 10, 36, 110, 128), (0, 20, 72, 80, 40)])
  data = notes_to_midi(notes)
  mf = mido.MidiFile(file=io.BytesIO(data))
  tracks = collections.Counter()
  for tr in mf.tracks[1:]:
    programs = frozenset(m.program for m in tr if m.type == "program_change")
    drums = {m.channel for m in tr if m.type in ("note_on", "note_off")} == {9}
    tracks[(tr.name, drums, None if drums else programs)] += 1
    sounding, tick = set(), 0
    for m in tr:
      tick += m.time
      if m.type == "note_on" and m.velocity:
        assert (m.channel, m.note) not in sounding, (tr.name, tick, m)
        sounding.add((m.channel, m.note))
      elif m.type in ("note_on", "note_off"):
        sounding.discard((m.channel, m.note))
  # Piano: three 60s sound at once at tick 200 -> three tracks; drums: two overlapping 36s.
  assert tracks == {("Acoustic Grand Piano", False, frozenset({0})): 3, ("Drums", True, None): 2,
                    ("Violin", False, frozenset({40})): 1}
  assert midi_to_notes(data) == notes.canonical()
  assert midi_to_notes(data, NO_SUSTAIN) == notes.canonical()


def test_gap_over_a_midi_delta_time_raises():
  # 300M ticks of silence: more than a delta time holds (0x0FFFFFFF). symusic's writer would
  # truncate it without a word; notes_to_midi refuses.
  with pytest.raises(ValueError, match="out of range"):
    notes_to_midi(Notes.from_rows([(0, 1, 60, 80, 0), (30_000_000, 1, 60, 80, 0)]))


def test_grid_ms_other_than_ten_round_trips():
  cfg = EncodingConfig(grid_ms=8)
  notes = Notes.from_rows([(0, 1, 60, 80, 0), (3, 7, 61, 81, 5), (1000, 2, 62, 82, 128)])
  assert midi_to_notes(notes_to_midi(notes, config=cfg), cfg) == notes.canonical()


# ----------------------------------------------------------------------------- real corpora


def _corpus_files(corpora_dir):
  files = sorted(p for p in pathlib.Path(corpora_dir).rglob("*")
                 if p.suffix.lower() in (".mid", ".midi"))
  assert files, f"no MIDI files under {corpora_dir}"
  return files


def test_corpora_round_trip_exact(corpora_dir):
  """MIDI -> notes -> ids -> notes -> MIDI -> notes is exact (up to the codecs' quantization)
  for every file, both token layouts and the char codec."""
  codecs = [TokenCodec(EncodingConfig(token_layout=lay)) for lay in ("default", "compact")]
  char = CharCodec(EncodingConfig())
  failures = []
  for path in _corpus_files(corpora_dir):
    try:
      notes = midi_to_notes(path)
    except MidiError as e:
      failures.append(f"{path}: {e}")
      continue
    for codec in codecs:
      ids = codec.encode(notes)
      back, report = codec.decode(ids, return_report=True)
      if report["skipped_fragments"] or back != codec.quantize(notes):
        failures.append(f"{path}: token layout {codec.layout} round trip differs")
      elif midi_to_notes(notes_to_midi(back)) != back:
        failures.append(f"{path}: MIDI round trip differs")
    text = char.encode(notes, name=path.stem)
    clipped = notes.replace(duration=np.minimum(notes.duration, char.max_value)).canonical()
    if char.decode(text) != clipped:
      failures.append(f"{path}: char round trip differs")
  assert not failures, "\n".join(failures[:20])


def _note_seq_agreement(paths):
  import note_seq  # pylint: disable=g-import-not-at-top
  out = []
  for path in paths:
    ns = note_seq.midi_to_note_sequence(pathlib.Path(path).read_bytes())
    ns = note_seq.apply_sustain_control_changes(ns)
    ref = note_sequence_to_notes(ns)
    ours = midi_to_notes(path)
    a, b = collections.Counter(ours.to_rows()), collections.Counter(ref.to_rows())
    out.append((str(path), sum((a & b).values()), max(len(ours), len(ref))))
  return out


@pytest.mark.parametrize("part", range(4))
def test_corpora_agree_with_note_seq(corpora_dir, part):
  """Every file (a quarter of them per test, so pytest-xdist spreads the slow note-seq parses),
  parsed independently by note-seq (pretty_midi) with its sustain rule and quantized the same
  way, agrees with midi_to_notes on >= 99% of notes."""
  files = _corpus_files(corpora_dir)[part::4]
  results = _note_seq_agreement(files)
  agree = sum(r[1] for r in results)
  total = sum(r[2] for r in results)
  assert total and agree / total >= 0.99, (agree / total,
                                           sorted(results, key=lambda r: r[1] / r[2])[:5])


def test_tolerant_parser_reads_the_same_notes_as_symusic(corpora_dir):
  """The mido fallback implements the same rules (pairing, programs, pedal, tempo map)."""
  from virtuoso_jax.encoding import midi_io  # pylint: disable=g-import-not-at-top
  cfg = EncodingConfig()
  for path in _corpus_files(corpora_dir)[::12]:
    data = path.read_bytes()
    fast, _, _ = midi_io._to_notes(midi_io._parse_symusic(data, cfg), cfg, str(path))
    tolerant, _, _ = midi_io._to_notes(midi_io._parse_mido(data, cfg), cfg, str(path))
    assert fast == tolerant, path
