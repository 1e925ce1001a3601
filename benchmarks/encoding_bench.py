"""Encoding throughput on one core: notes/s of MIDI parsing and of MIDI -> token ids / TXT.

  python benchmarks/encoding_bench.py [--corpus ../shared/corpora] [--repeats 3]

Prints one JSON line per figure: {"name", "value", "unit", ...}. Each figure is the best of
`--repeats` passes over every MIDI file of the corpus (files read into memory first, so disk I/O is
not timed; parsing starts from the bytes). Bar (design.md §6): >= 350k notes/s for
midi_to_notes + TokenCodec.encode (100x the original TMIDIX processor's ~3.5k notes/s).
"""

import json
import os
import pathlib
import time

# One core: keep numpy's BLAS (unused here, but imported) from spawning threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from virtuoso_jax.encoding import CharCodec, EncodingConfig, MidiError, TokenCodec, midi_to_notes  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

_CORPUS = flags.DEFINE_string("corpus", str(REPO.parent / "shared" / "corpora"),
                              "Folder of MIDI files (searched recursively).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Passes per figure (the best is reported).")


def _best(fn, repeats):
  best = float("inf")
  out = None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  corpus, repeats = _CORPUS.value, _REPEATS.value
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
  files = sorted(p for p in pathlib.Path(corpus).rglob("*")
                 if p.suffix.lower() in (".mid", ".midi"))
  blobs = [p.read_bytes() for p in files]
  config = EncodingConfig()

  def parse_all():
    out = []
    for b in blobs:
      try:
        out.append(midi_to_notes(b, config))
      except MidiError:
        pass
    return out

  secs, notes = _best(parse_all, repeats)
  total = sum(len(n) for n in notes)
  common = {"files": len(blobs), "notes": total, "corpus": corpus, "cores": 1}
  print(json.dumps({"name": "midi_to_notes", "value": round(total / secs), "unit": "notes/s",
                    **common}))
  for layout in ("default", "compact"):
    cfg = EncodingConfig(token_layout=layout)
    codec = TokenCodec(cfg)

    def parse_encode(cfg=cfg, codec=codec):
      tokens = 0
      for b in blobs:
        try:
          tokens += len(codec.encode(midi_to_notes(b, cfg)))
        except MidiError:
          pass
      return tokens

    secs, tokens = _best(parse_encode, repeats)
    print(json.dumps({"name": f"midi_to_notes+TokenCodec.encode[{layout}]",
                      "value": round(total / secs), "unit": "notes/s",
                      "tokens_per_note": round(tokens / total, 4),
                      "vocab_size": codec.vocab_size, **common}))
  char = CharCodec(config)
  secs, chars = _best(lambda: sum(len(char.encode(n)) for n in notes), repeats)
  print(json.dumps({"name": "CharCodec.encode", "value": round(total / secs), "unit": "notes/s",
                    "chars_per_note": round(chars / total, 4), "vocab_size": char.vocab_size,
                    **common}))
  tok = TokenCodec(config)
  ids = [tok.encode(n) for n in notes]
  secs, _ = _best(lambda: [tok.decode(i) for i in ids], repeats)
  print(json.dumps({"name": "TokenCodec.decode[default]", "value": round(total / secs),
                    "unit": "notes/s", **common}))


if __name__ == "__main__":
  app.run(main)
