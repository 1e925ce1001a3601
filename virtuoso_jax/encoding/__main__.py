"""Read a MIDI file as notes and Optimus TXT.

  python -m virtuoso_jax.encoding FILE.mid [--txt] [--layout compact] [--roundtrip OUT.mid]

Prints a summary (notes, instruments with GM names, duration, tokens per note for both token
layouts), the TXT with `--txt`, and writes the decoded MIDI with `--roundtrip`.
"""

from __future__ import annotations

import argparse
import json
import sys

from virtuoso_jax.encoding.char_codec import CharCodec
from virtuoso_jax.encoding.midi_io import MidiError, describe, midi_to_notes, notes_to_midi
from virtuoso_jax.encoding.notes import EncodingConfig
from virtuoso_jax.encoding.token_codec import TokenCodec


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m virtuoso_jax.encoding", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("midi", help="a MIDI file")
  parser.add_argument("--txt", action="store_true", help="print the Optimus TXT of the song")
  parser.add_argument("--grid_ms", type=int, default=EncodingConfig.grid_ms)
  parser.add_argument("--layout", default="default", choices=("default", "compact"),
                      help="token layout used for --roundtrip")
  parser.add_argument("--no_sustain", action="store_true", help="ignore the sustain pedal")
  parser.add_argument("--roundtrip", metavar="OUT.mid",
                      help="encode to ids, decode, and write the decoded notes as MIDI")
  args = parser.parse_args(argv)
  config = EncodingConfig(grid_ms=args.grid_ms, token_layout=args.layout,
                          sustain_pedal=not args.no_sustain)
  try:
    notes, info = midi_to_notes(args.midi, config, return_info=True)
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
  print(f"{args.midi}: {summary['notes']} notes, {summary['seconds']:.2f} s, parser "
        f"{summary['parser']}")
  for inst in summary["instruments"]:
    print(f"  instrument {inst['instrument']:3d} {inst['name']:<28s} {inst['notes']} notes")
  print(json.dumps({k: v for k, v in summary.items() if k.startswith("tokens_")}))
  if args.txt:
    print(CharCodec(config).encode(notes, name=args.midi.rsplit("/", 1)[-1].split(".")[0]),
          end="")
  if args.roundtrip:
    codec = TokenCodec(config)
    decoded = codec.decode(codec.encode(notes))
    notes_to_midi(decoded, args.roundtrip, config=config)
    print(f"wrote {args.roundtrip} ({len(decoded)} notes)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
