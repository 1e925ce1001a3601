"""Hostile MIDI for robustness tests: malformed files made from good MIDI bytes.

Importable helper (no pytest needed), used by `tests/midi_fuzz_test.py` and by anyone who wants a
hostile corpus on disk (e.g. to feed `tfds build`):

    sys.path.insert(0, "<repo>/tests")     # pytest does this for files under tests/
    import midi_fuzz
    seeds = midi_fuzz.seed_midis(8, seed=0)              # good seed files (hermetic)
    files = midi_fuzz.make_hostile_corpus(out_dir, seeds, n=300, seed=0)
    # -> [(path, kind), ...], written as out_dir/<index>_<kind>.mid

Everything is deterministic given `seed` (random.Random / numpy default_rng, never global state).

Kinds (`KINDS`, each a function `(seed_bytes, rng) -> bytes` in `GENERATORS`):
  byte_flip            1..8 random bytes replaced or bit-flipped
  truncate             cut at a random offset (inside the header, a chunk header or an event)
  chunk_length_large   an MTrk length larger than the data left (up to 0xFFFFFFFF)
  chunk_length_small   an MTrk length smaller than the track (the rest reads as the next chunk)
  header_length        MThd length != 6 (smaller or larger, up to 0xFFFFFFFF)
  header_fields        declared track count wrong (0, fewer, more, 65535), format 2..65535
  long_vlq             delta times of 5..12 VLQ bytes (zero-padded, or values up to 2^84)
  huge_deltas          many 4-byte deltas of 0x0FFFFFFF: absolute ticks past 2^31 and 2^32
  tempo_extreme        set-tempo of 0, 1 or 2^24-1 us/quarter (sometimes with huge deltas)
  bad_division         division 0, 1, 0x7FFF, SMPTE/negative (0x8000..0xFFFF)
  bad_data_byte        a channel data byte >= 0x80 (symusic rejects it; mido(clip=True) may not)
  meta_length          a meta or sysex event declaring a huge length
  junk_chunks          unknown chunks between tracks, trailing garbage
  splice               track chunks of two files glued under one header
  random_body          random bytes after a valid MThd
  empty_tracks         hundreds to 10k empty MTrk chunks (declared count right or wrong)

Big kinds (separate functions, not in `make_hostile_corpus` unless `include_big=True`):
  `many_notes(n)` (2M notes: about 13 MB), `oversized(size)` (a valid file padded past 64 MiB
  with an unknown chunk), `big_malformed(size)` (a ~12 MB file symusic rejects and whose
  track the tolerant parser reads to the end before failing).
"""

from __future__ import annotations

import os
import pathlib
import random
import re
import struct
from typing import Callable, Iterator, Sequence

import numpy as np

# ----------------------------------------------------------------------------- SMF helpers


def vlq(value: int, min_bytes: int = 1) -> bytes:
  """MIDI variable-length quantity; `min_bytes` > the canonical length zero-pads (0x80 bytes)."""
  out = [value & 0x7F]
  value >>= 7
  while value:
    out.append(0x80 | (value & 0x7F))
    value >>= 7
  while len(out) < min_bytes:
    out.append(0x80)
  return bytes(reversed(out))


def chunk(tag: bytes, body: bytes, length: int | None = None) -> bytes:
  return tag + struct.pack(">I", len(body) if length is None else length) + body


def header(fmt: int, ntrks: int, division: int, length: int = 6) -> bytes:
  return chunk(b"MThd", struct.pack(">HHH", fmt & 0xFFFF, ntrks & 0xFFFF, division & 0xFFFF),
               length)


def split_chunks(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
  """(MThd chunk bytes, [(tag, body), ...]) of a well-formed file."""
  hlen = struct.unpack(">I", data[4:8])[0]
  head = data[:8 + hlen]
  pos, chunks = 8 + hlen, []
  while pos + 8 <= len(data):
    tag = data[pos:pos + 4]
    size = struct.unpack(">I", data[pos + 4:pos + 8])[0]
    chunks.append((tag, data[pos + 8:pos + 8 + size]))
    pos += 8 + size
  return head, chunks


def track_events(body: bytes) -> list[tuple[int, bytes]]:
  """[(delta, event bytes with explicit status), ...] of a well-formed MTrk body."""
  pos, status, out = 0, None, []
  while pos < len(body):
    delta = 0
    while True:
      b = body[pos]
      pos += 1
      delta = (delta << 7) | (b & 0x7F)
      if b < 0x80:
        break
    first = body[pos]
    if first >= 0x80:
      pos += 1
      st = first
      if st < 0xF0:
        status = st
    else:
      st = status
    if st == 0xFF:
      kind = body[pos]
      pos += 1
      start = pos
      length = 0
      while True:
        b = body[pos]
        pos += 1
        length = (length << 7) | (b & 0x7F)
        if b < 0x80:
          break
      ev = bytes([0xFF, kind]) + body[start:pos + length]
      pos += length
    elif st in (0xF0, 0xF7):
      start = pos
      length = 0
      while True:
        b = body[pos]
        pos += 1
        length = (length << 7) | (b & 0x7F)
        if b < 0x80:
          break
      ev = bytes([st]) + body[start:pos + length]
      pos += length
    else:
      n = 1 if (st & 0xF0) in (0xC0, 0xD0) else 2
      ev = bytes([st]) + body[pos:pos + n]
      pos += n
    out.append((delta, ev))
  return out


def track_body(events: Sequence[tuple[int, bytes]], running_status: bool = False,
               delta_bytes: Callable[[int, int], bytes] | None = None) -> bytes:
  """Serialises [(delta, event)]; `delta_bytes(index, delta)` overrides a delta's encoding."""
  out, last = bytearray(), None
  for i, (delta, ev) in enumerate(events):
    out += delta_bytes(i, delta) if delta_bytes else vlq(delta)
    st = ev[0]
    if running_status and st < 0xF0 and st == last:
      out += ev[1:]
    else:
      out += ev
    if st < 0xF0:
      last = st
    elif st != 0xFF:
      last = None
  return bytes(out)


def _parse(data: bytes):
  head, chunks = split_chunks(data)
  fmt, _, division = struct.unpack(">HHH", head[8:14])
  tracks = [track_events(body) for tag, body in chunks if tag == b"MTrk"]
  return fmt, division, tracks


def _build(fmt: int, division: int, tracks, **kw) -> bytes:
  return header(fmt, len(tracks), division) + b"".join(
      chunk(b"MTrk", track_body(t, **kw)) for t in tracks)


# ----------------------------------------------------------------------------- seeds


def synthetic_notes(rng: np.random.Generator, n: int):
  """Random valid `Notes` (several instruments, drums, chords, same-pitch overlaps)."""
  from virtuoso_jax.encoding import Notes  # pylint: disable=g-import-not-at-top
  insts = rng.choice(np.arange(129), size=int(rng.integers(1, 6)), replace=False)
  onset = np.sort(rng.integers(0, max(10, n * 20), n))
  onset[rng.random(n) < 0.2] = onset[0]
  return Notes(onset, rng.integers(1, 300, n), rng.integers(20, 110, n), rng.integers(1, 128, n),
               rng.choice(insts, n))


def seed_midis(n: int = 8, seed: int = 0, max_notes: int = 200) -> list[bytes]:
  """Good MIDI files, made hermetically with `notes_to_midi` from random `Notes`; every other one
  is rewritten with a tempo map, sustain-pedal events and running status."""
  from virtuoso_jax.encoding import notes_to_midi  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    data = notes_to_midi(synthetic_notes(rng, int(rng.integers(3, max_notes))))
    if i % 2:
      fmt, division, tracks = _parse(data)
      tracks[0] = ([(0, b"\xff\x51\x03" + int(rng.integers(200_000, 900_000)).to_bytes(3, "big"))]
                   + tracks[0][:-1] + [(int(rng.integers(100, 5000)), b"\xff\x51\x03\x07\xa1\x20"),
                                       tracks[0][-1]])
      if len(tracks) > 1:  # Sustain pedal on the first instrument track, on that track's channel.
        t = tracks[1]
        cc = 0xB0 | next(ev[0] & 0x0F for _, ev in t if ev[0] < 0xF0)
        tracks[1] = (t[:1] + [(0, bytes([cc, 0x40, 0x7F]))] + t[1:-1]
                     + [(10, bytes([cc, 0x40, 0x00])), t[-1]])
      data = _build(fmt, division, tracks, running_status=True)
    out.append(data)
  return out


# ----------------------------------------------------------------------------- kinds


def byte_flip(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  for _ in range(rng.randint(1, 8)):
    i = rng.randrange(len(d))
    d[i] = rng.randrange(256) if rng.random() < 0.5 else d[i] ^ (1 << rng.randrange(8))
  return bytes(d)


def truncate(data: bytes, rng: random.Random) -> bytes:
  cut = rng.choice([rng.randrange(0, 23), rng.randrange(len(data))])
  return data[:cut]


def _mtrk_offsets(data: bytes) -> list[int]:
  hlen = struct.unpack(">I", data[4:8])[0]
  pos, out = 8 + hlen, []
  while pos + 8 <= len(data):
    if data[pos:pos + 4] == b"MTrk":
      out.append(pos)
    pos += 8 + struct.unpack(">I", data[pos + 4:pos + 8])[0]
  return out


def chunk_length_large(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  pos = rng.choice(_mtrk_offsets(data))
  size = struct.unpack(">I", d[pos + 4:pos + 8])[0]
  new = rng.choice([size + 1, size + rng.randint(2, 5000), len(data) - pos - 7,
                    0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(size + 1, 1 << 32)])
  d[pos + 4:pos + 8] = struct.pack(">I", min(new, 0xFFFFFFFF))
  return bytes(d)


def chunk_length_small(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  pos = rng.choice(_mtrk_offsets(data))
  size = struct.unpack(">I", d[pos + 4:pos + 8])[0]
  d[pos + 4:pos + 8] = struct.pack(">I", rng.choice([0, 1, size - 1, rng.randrange(max(size, 1))]))
  return bytes(d)


def header_length(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  d[4:8] = struct.pack(">I", rng.choice([0, 1, 5, 7, 8, 14, 1000, 0x7FFFFFFF, 0xFFFFFFFF]))
  return bytes(d)


def header_fields(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  ntrks = struct.unpack(">H", d[10:12])[0]
  if rng.random() < 0.6:
    d[10:12] = struct.pack(">H", rng.choice([0, max(ntrks - 1, 0), ntrks + 1, ntrks + 50, 65535]))
  else:
    d[8:10] = struct.pack(">H", rng.choice([0, 2, 3, 255, 65535]))
  return bytes(d)


def long_vlq(data: bytes, rng: random.Random) -> bytes:
  fmt, division, tracks = _parse(data)
  k = rng.randrange(len(tracks))
  hits = set(rng.sample(range(len(tracks[k])), min(len(tracks[k]), rng.randint(1, 3))))

  def enc(i, delta):
    if i not in hits:
      return vlq(delta)
    nbytes = rng.randint(5, 12)
    if rng.random() < 0.5:
      return vlq(delta, min_bytes=nbytes)  # zero-padded: same value, too many bytes
    return vlq(rng.randrange(1 << (7 * (nbytes - 1)), 1 << (7 * nbytes)))

  tracks_bytes = [track_body(t, delta_bytes=enc if j == k else None)
                  for j, t in enumerate(tracks)]
  return header(fmt, len(tracks), division) + b"".join(chunk(b"MTrk", b) for b in tracks_bytes)


def _insert(events, rng: random.Random, new: list[tuple[int, bytes]]):
  """Inserts events at random positions before the end-of-track."""
  events = list(events)
  for ev in new:
    events.insert(rng.randrange(max(len(events), 1)), ev)
  return events


def huge_deltas(data: bytes, rng: random.Random) -> bytes:
  fmt, division, tracks = _parse(data)
  k = rng.randrange(len(tracks))
  count = rng.choice([8, 9, 16, 17, 40])  # 8 x 2^28 = 2^31: past int32; 16: past 2^32.
  filler = [(0x0FFFFFFF, rng.choice([b"\xff\x01\x00", b"\xff\x06\x01x"]))] * count
  if rng.random() < 0.5:  # Spread a note's on and off across the wrap.
    ev = tracks[k]
    tracks[k] = ev[:len(ev) // 2] + filler + ev[len(ev) // 2:]
  else:
    tracks[k] = _insert(tracks[k], rng, filler)
  return _build(fmt, division, tracks)


def tempo_extreme(data: bytes, rng: random.Random) -> bytes:
  fmt, division, tracks = _parse(data)
  tempo = rng.choice([0, 1, 2, (1 << 24) - 1])
  ev = (0, b"\xff\x51\x03" + tempo.to_bytes(3, "big"))
  k = rng.randrange(len(tracks))
  tracks[k] = _insert(tracks[k], rng, [ev] * rng.randint(1, 3))
  if rng.random() < 0.6:
    j = rng.randrange(len(tracks))
    delta = rng.choice([0x0FFFFFFF, 1 << 21, 1 << 27])
    tracks[j] = _insert(tracks[j], rng, [(delta, b"\xff\x01\x00")] * rng.choice([1, 8, 17]))
  return _build(fmt, division, tracks)


def bad_division(data: bytes, rng: random.Random) -> bytes:
  d = bytearray(data)
  d[12:14] = struct.pack(">H", rng.choice([0, 1, 0x7FFF, 0x8000, 0xE728, 0xE250, 0xFFFF,
                                           rng.randrange(0x8000, 0x10000)]))
  return bytes(d)


def bad_data_byte(data: bytes, rng: random.Random) -> bytes:
  fmt, division, tracks = _parse(data)
  where = [(k, i) for k, t in enumerate(tracks) for i, (_, ev) in enumerate(t) if ev[0] < 0xF0]
  for k, i in rng.sample(where, min(len(where), rng.randint(1, 3))):
    delta, ev = tracks[k][i]
    j = rng.randrange(1, len(ev))
    tracks[k][i] = (delta, ev[:j] + bytes([rng.randrange(0x80, 0x100)]) + ev[j + 1:])
  return _build(fmt, division, tracks)


def meta_length(data: bytes, rng: random.Random) -> bytes:
  fmt, division, tracks = _parse(data)
  k = rng.randrange(len(tracks))
  length = rng.choice([1000, 1 << 20, (1 << 28) - 1, 1 << 40])
  ev = (rng.choice([b"\xff\x01", b"\xff\x7f", b"\xf0"]) + vlq(length) + b"abc")
  pos = rng.randrange(len(tracks[k]))
  tracks[k] = tracks[k][:pos] + [(0, ev)] + tracks[k][pos:]
  # Serialised raw: the event's body is shorter than its declared length.
  return _build(fmt, division, tracks)


def junk_chunks(data: bytes, rng: random.Random) -> bytes:
  head, chunks = split_chunks(data)
  parts = [chunk(t, b) for t, b in chunks]
  for _ in range(rng.randint(1, 4)):
    junk = chunk(rng.choice([b"XFIL", b"RIFF", b"MTrK", b"\x00\x00\x00\x00"]),
                 rng.randbytes(rng.randrange(0, 64)))
    parts.insert(rng.randrange(len(parts) + 1), junk)
  out = head + b"".join(parts)
  if rng.random() < 0.5:
    out += rng.randbytes(rng.randrange(1, 300))
  return out


def splice(data: bytes, rng: random.Random, other: bytes | None = None) -> bytes:
  head, a = split_chunks(data)
  _, b = split_chunks(other if other is not None else data)
  parts = a[:rng.randint(0, len(a))] + b[rng.randint(0, len(b)):]
  return head + b"".join(chunk(t, x) for t, x in parts)


def random_body(data: bytes, rng: random.Random) -> bytes:
  head = data[:14]
  body = rng.randbytes(rng.randrange(1, 4000))
  if rng.random() < 0.7:
    body = chunk(b"MTrk", body, rng.choice([None, len(body) + 10, len(body) // 2]))
  return head + body


def empty_tracks(data: bytes, rng: random.Random, count: int | None = None) -> bytes:
  fmt, division, tracks = _parse(data)
  count = count or rng.choice([300, 1023, 1025, 10_000])
  eot = rng.choice([b"", b"\x00\xff\x2f\x00"])
  parts = [chunk(b"MTrk", track_body(t)) for t in tracks] + [chunk(b"MTrk", eot)] * count
  rng.shuffle(parts)
  declared = rng.choice([len(parts), len(tracks), 1, 65535])
  return header(1, declared, division) + b"".join(parts)


GENERATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "byte_flip": byte_flip, "truncate": truncate, "chunk_length_large": chunk_length_large,
    "chunk_length_small": chunk_length_small, "header_length": header_length,
    "header_fields": header_fields, "long_vlq": long_vlq, "huge_deltas": huge_deltas,
    "tempo_extreme": tempo_extreme, "bad_division": bad_division, "bad_data_byte": bad_data_byte,
    "meta_length": meta_length, "junk_chunks": junk_chunks, "splice": splice,
    "random_body": random_body, "empty_tracks": empty_tracks,
}
KINDS = tuple(GENERATORS)


def make_hostile(kind: str, seed_bytes: bytes, rng: random.Random,
                 other: bytes | None = None) -> bytes:
  """One malformed file of `kind` from the good file `seed_bytes`."""
  if kind == "splice":
    return splice(seed_bytes, rng, other)
  return GENERATORS[kind](seed_bytes, rng)


def iter_hostile(seeds_bytes: Sequence[bytes], n: int = 300, seed: int = 0,
                 kinds: Sequence[str] = KINDS) -> Iterator[tuple[str, bytes]]:
  """`n` (kind, bytes) pairs, kinds in round robin (every kind appears when n >= len(kinds)),
  seeds chosen at random; deterministic given `seed`."""
  rng = random.Random(seed)
  for i in range(n):
    kind = kinds[i % len(kinds)]
    yield kind, make_hostile(kind, rng.choice(seeds_bytes), rng, other=rng.choice(seeds_bytes))


# ----------------------------------------------------------------------------- big kinds


def many_notes(n: int = 2_000_000, seed: int = 0) -> bytes:
  """A valid file of `n` notes (one piano track, 2M notes: about 13 MB)."""
  from virtuoso_jax.encoding import Notes, notes_to_midi  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  onset = np.arange(n, dtype=np.int64) // 4
  return notes_to_midi(Notes(onset, np.full(n, 1), 30 + (np.arange(n) % 4) * 7,
                             rng.integers(1, 128, n), np.zeros(n, np.int64)))


def oversized(size: int = 65 * 1024 * 1024 + 1, seed_bytes: bytes | None = None) -> bytes:
  """A valid file padded to `size` bytes with an unknown chunk (readers skip it)."""
  seed_bytes = seed_bytes or seed_midis(1)[0]
  pad = max(size - len(seed_bytes) - 8, 0)
  return seed_bytes + chunk(b"XFIL", bytes(pad))


def big_malformed(size: int = 12 * 1024 * 1024, seed: int = 0, variant: int = 0) -> bytes:
  """A ~`size`-byte one-track file that symusic rejects and the tolerant parser reads far into
  before failing: variant 0 = an illegal data byte early on and the track cut short at the end
  (EOF mid-track); variant 1 = the track's length field a few bytes too small (the parser runs
  past the chunk end into the end of the file)."""
  n = max(size * 2 // 13, 10)  # `many_notes` takes 6.5 bytes a note (running status).
  data = bytearray(many_notes(n, seed))
  fmt, division, _ = struct.unpack(">HHH", data[8:14])
  pos = _mtrk_offsets(bytes(data))[-1]
  # An illegal data byte in the first note-on (velocity 0xA8): symusic refuses the file. Its
  # status is the track's first byte in 0x90..0x9F, whichever channel the writer chose.
  i = re.compile(rb"[\x90-\x9f]").search(data, pos + 8).start()
  data[i + 2] = 0xA8
  if variant == 0:
    return bytes(data[:-3])
  length = struct.unpack(">I", data[pos + 4:pos + 8])[0]
  data[pos + 4:pos + 8] = struct.pack(">I", length - 2)
  return bytes(data)


# ----------------------------------------------------------------------------- corpus


def make_hostile_corpus(out_dir: str | os.PathLike, seeds_bytes: Sequence[bytes] | None = None,
                        n: int = 300, seed: int = 0, kinds: Sequence[str] = KINDS,
                        include_big: bool = False) -> list[tuple[pathlib.Path, str]]:
  """Writes `n` hostile files (plus, with `include_big`, one of each big kind: 2M notes, a
  65 MiB file and two ~12 MB malformed ones) to `out_dir` as `<index>_<kind>.mid`.

  Args:
    out_dir: folder (created).
    seeds_bytes: good MIDI files to corrupt; None = `seed_midis(8, seed)`.
    n: number of small hostile files.
    seed: makes the corpus reproducible.
    kinds: which of `KINDS` to use (round robin).
    include_big: also write the big kinds (about 110 MB on disk).

  Returns:
    [(path, kind), ...] in index order.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  seeds_bytes = list(seeds_bytes) if seeds_bytes is not None else seed_midis(8, seed)
  items = list(iter_hostile(seeds_bytes, n, seed, kinds))
  if include_big:
    items += [("many_notes", many_notes(2_000_000, seed)),
              ("oversized", oversized(seed_bytes=seeds_bytes[0])),
              ("big_malformed", big_malformed(seed=seed, variant=0)),
              ("big_malformed", big_malformed(seed=seed, variant=1))]
  written = []
  for i, (kind, data) in enumerate(items):
    path = out / f"{i:05d}_{kind}.mid"
    path.write_bytes(data)
    written.append((path, kind))
  return written
