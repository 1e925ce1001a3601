"""A MIDI parser for the virtuoso_midi hardening tests (tests/dataset_hardening_test.py): the
build runs it in its parser processes (`processing.FileSandbox`, named by
`processing.Settings.parser`). A file whose bytes start with one of these commands misbehaves
as told; any other file goes to the real parser.

  RAISE:<ExceptionType>   raise that builtin exception type (not MidiError)
  EXIT                    the parser process exits (os._exit(3))
  SEGV                    the parser process dies of SIGSEGV
  HANG                    never returns
"""

import builtins
import os
import signal
import time

from virtuoso_jax import encoding


def parse(data, config, return_info=False):
  if data.startswith(b"RAISE:"):
    name = data[len(b"RAISE:"):].split(b"\n")[0].decode()
    raise getattr(builtins, name)(f"hostile file asked for {name}")
  if data.startswith(b"EXIT"):
    os._exit(3)  # pylint: disable=protected-access
  if data.startswith(b"SEGV"):
    os.kill(os.getpid(), signal.SIGSEGV)
  if data.startswith(b"HANG"):
    time.sleep(3600)
  return encoding.midi_to_notes(data, config, return_info=return_info)
