"""Read a MIDI file as notes and Optimus TXT.

  python -m virtuoso_jax.encoding FILE.mid [--txt] [--layout=compact] [--roundtrip=OUT.mid]

Prints a summary (notes, instruments with GM names, duration, tokens per note for both token
layouts), the TXT with `--txt`, and writes the decoded MIDI with `--roundtrip`.
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from virtuoso_jax.encoding.char_codec import CharCodec
from virtuoso_jax.encoding.midi_io import MidiError, describe, midi_to_notes, notes_to_midi
from virtuoso_jax.encoding.notes import EncodingConfig
from virtuoso_jax.encoding.token_codec import TokenCodec

_TXT = flags.DEFINE_bool("txt", False, "Print the Optimus TXT of the song.")
_GRID_MS = flags.DEFINE_integer("grid_ms", EncodingConfig.grid_ms, "Time grid (ms).")
_LAYOUT = flags.DEFINE_enum("layout", "default", ["default", "compact"],
                            "Token layout used for --roundtrip.")
_NO_SUSTAIN = flags.DEFINE_bool("no_sustain", False, "Ignore the sustain pedal.")
_ROUNDTRIP = flags.DEFINE_string("roundtrip", None, "Encode to ids, decode, and write the decoded "
                                 "notes to this MIDI file.")


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    raise app.UsageError("give one MIDI file: python -m virtuoso_jax.encoding FILE.mid [--txt] "
                         "[--layout=compact] [--roundtrip=OUT.mid]")
  midi = argv[1]
  config = EncodingConfig(grid_ms=_GRID_MS.value, token_layout=_LAYOUT.value,
                          sustain_pedal=not _NO_SUSTAIN.value)
  try:
    notes, info = midi_to_notes(midi, config, return_info=True)
  except MidiError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  summary = describe(notes, config)
  summary["parser"] = info.parser + (" (recovered: " + info.recover_reason + ")"
                                     if info.recovered else "")
  summary["pedal_extended_notes"] = info.pedal_extended
  for layout in ("default", "compact"):
    codec = TokenCodec(EncodingConfig(**{**config.to_dict(), "token_layout": layout}))
    ids, rep = codec.encode(notes, return_report=True)
    summary[f"tokens_{layout}"] = {"tokens": len(ids), "tokens_per_note": round(
        len(ids) / max(len(notes), 1), 3), "vocab_size": codec.vocab_size,
                                   "duration_clipped": rep["duration_clipped"]}
  print(f"{midi}: {summary['notes']} notes, {summary['seconds']:.2f} s, parser "
        f"{summary['parser']}")
  for inst in summary["instruments"]:
    print(f"  instrument {inst['instrument']:3d} {inst['name']:<28s} {inst['notes']} notes")
  print(json.dumps({k: v for k, v in summary.items() if k.startswith("tokens_")}))
  if _TXT.value:
    print(CharCodec(config).encode(notes, name=midi.rsplit("/", 1)[-1].split(".")[0]),
          end="")
  if _ROUNDTRIP.value:
    codec = TokenCodec(config)
    decoded = codec.decode(codec.encode(notes))
    notes_to_midi(decoded, _ROUNDTRIP.value, config=config)
    print(f"wrote {_ROUNDTRIP.value} ({len(decoded)} notes)")
  return 0


def run():
  """Console-script entry point (`virtuoso-encode`); `python -m` runs the same."""
  app.run(main)


if __name__ == "__main__":
  run()
