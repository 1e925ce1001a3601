"""MIDI <-> notes <-> ids/text (pure Python + numpy; imports no jax).

Public names (docs/architecture.md section 1): `Notes`, `EncodingConfig`, `midi_to_notes`,
`notes_to_midi`, `notes_to_note_sequence`, `note_sequence_to_notes`, `TokenCodec`, `CharCodec`,
`transpose`, `MidiError`, `make_codec`.
"""

from __future__ import annotations

from virtuoso_jax.encoding.char_codec import CharCodec
from virtuoso_jax.encoding.grammar import Grammar
from virtuoso_jax.encoding.midi_io import MidiError
from virtuoso_jax.encoding.midi_io import MidiInfo
from virtuoso_jax.encoding.midi_io import describe
from virtuoso_jax.encoding.midi_io import midi_to_notes
from virtuoso_jax.encoding.midi_io import note_sequence_to_notes
from virtuoso_jax.encoding.midi_io import notes_to_midi
from virtuoso_jax.encoding.midi_io import notes_to_note_sequence
from virtuoso_jax.encoding.notes import DRUMS
from virtuoso_jax.encoding.notes import BINNED_ATTRIBUTES, ControlConfig
from virtuoso_jax.encoding.notes import EncodingConfig
from virtuoso_jax.encoding.notes import GM_PROGRAM_NAMES
from virtuoso_jax.encoding.notes import Notes
from virtuoso_jax.encoding.notes import instrument_name
from virtuoso_jax.encoding.notes import transpose
from virtuoso_jax.encoding.token_codec import TokenCodec

KINDS = ("token", "char")  # config.data.encoding: the codec a dataset and a model use.


def make_codec(kind: str, config: EncodingConfig, controls: ControlConfig | None = None):
  """The codec of `kind` ("token" | "char") over `config`; `controls`: token codec version 2
  to 5."""
  if kind not in KINDS:
    raise ValueError(f"unknown encoding kind {kind!r}; expected one of {KINDS}")
  if kind == "char":
    if controls is not None:
      raise ValueError("control notes and attributes need the token codec; a char model "
                       "only continues")
    return CharCodec(config)
  return TokenCodec(config, controls)


__all__ = [
    "BINNED_ATTRIBUTES", "KINDS", "make_codec", "CharCodec", "ControlConfig", "DRUMS", "EncodingConfig", "GM_PROGRAM_NAMES", "Grammar", "MidiError",
    "MidiInfo", "Notes", "TokenCodec", "describe", "instrument_name", "midi_to_notes",
    "note_sequence_to_notes", "notes_to_midi", "notes_to_note_sequence", "transpose",
]
