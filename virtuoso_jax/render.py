"""Rendering for people: a piano-roll PNG (matplotlib) and a WAV (FluidSynth, when installed).

  render.piano_roll(notes, "out.png", config=enc_config, title="sample 0")
  ok, message = render.midi_to_wav("out.mid", "out.wav", sf2=None)  # False + reason if no synth

Audio needs FluidSynth: the `pyfluidsynth` module (`pip install virtuoso_jax[audio]`, plus the
system library, `apt-get install fluidsynth`) or the `fluidsynth` command-line program. The
default soundfont is the General MIDI one bundled with pretty_midi (TimGM6mb.sf2).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from typing import Optional

import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax import paths

AUDIO_HINT = ("pip install 'virtuoso_jax[audio]' (pyfluidsynth) and apt-get install fluidsynth, "
              "or put the fluidsynth program on PATH")


def piano_roll(notes: encoding.Notes, path: str, *, config: encoding.EncodingConfig =
               encoding.EncodingConfig(), title: str = "") -> str:
  """Writes a piano roll of `notes` to `path` (PNG; local or remote): one colour per
  instrument, drums as dots.

  Time in seconds on x, MIDI pitch on y. Returns `path`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  sec = config.grid_ms / 1000.0
  fig, ax = plt.subplots(figsize=(14, 5), dpi=100)
  instruments = np.unique(notes.instrument)
  cmap = plt.get_cmap("tab10" if len(instruments) <= 10 else "tab20")
  for k, inst in enumerate(instruments.tolist()):
    sel = notes.instrument == inst
    colour = cmap(k % cmap.N)
    label = encoding.instrument_name(inst)
    onset, dur, pitch = notes.onset[sel] * sec, notes.duration[sel] * sec, notes.pitch[sel]
    if inst == encoding.DRUMS:
      ax.scatter(onset, pitch, s=6, color=colour, label=label, marker="x")
    else:
      ax.barh(pitch, np.maximum(dur, sec), left=onset, height=0.8, color=colour, label=label,
              alpha=0.85, linewidth=0)
  ax.set_xlabel("seconds")
  ax.set_ylabel("MIDI pitch")
  if len(notes):
    ax.set_ylim(max(int(notes.pitch.min()) - 2, 0), min(int(notes.pitch.max()) + 2, 128))
    ax.set_xlim(0, max(notes.end * sec, sec))
    ax.legend(loc="upper right", fontsize="small", ncol=max(1, len(instruments) // 8))
  ax.set_title(title or f"{len(notes)} notes")
  ax.grid(True, alpha=0.25)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png")
  plt.close(fig)
  paths.write_bytes(path, png.getvalue())
  return path


def default_soundfont() -> Optional[str]:
  """pretty_midi's bundled General MIDI soundfont, or None if pretty_midi is absent."""
  try:
    import pretty_midi  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
  return path if os.path.isfile(path) else None


def audio_backend() -> Optional[str]:
  """"pyfluidsynth", "fluidsynth-cli" or None (no FluidSynth)."""
  try:
    import fluidsynth  # pylint: disable=g-import-not-at-top,unused-import
    import pretty_midi  # pylint: disable=g-import-not-at-top,unused-import
    return "pyfluidsynth"
  except (ImportError, OSError):  # OSError: the module is there, libfluidsynth is not.
    pass
  return "fluidsynth-cli" if shutil.which("fluidsynth") else None


def midi_to_wav(midi_path: str, wav_path: str, *, sf2: Optional[str] = None,
                sample_rate: int = 44100) -> tuple[bool, str]:
  """Synthesises `midi_path` to `wav_path` with FluidSynth (either may be remote: FluidSynth
  reads and writes local files, copied down and up around it).

  Returns (written, message): (False, "skipping audio: ...") when FluidSynth or a soundfont is
  missing; raises FileNotFoundError when an explicit `sf2` does not exist.
  """
  if sf2 is not None and not paths.is_file(sf2):
    raise FileNotFoundError(f"--sf2 soundfont {sf2} does not exist")
  backend = audio_backend()
  if backend is None:
    return False, f"skipping audio: FluidSynth not installed ({AUDIO_HINT})"
  sf2 = sf2 or default_soundfont()
  if sf2 is None:
    return False, ("skipping audio: no soundfont (pip install pretty_midi for its bundled GM "
                   "soundfont, or pass --sf2=FILE)")
  with paths.local_file(midi_path, write=False) as midi_file, \
       paths.local_file(sf2, write=False) as sf2_file, \
       paths.local_file(wav_path, write=True) as wav_file:
    if backend == "pyfluidsynth":
      import pretty_midi  # pylint: disable=g-import-not-at-top
      from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
      audio = pretty_midi.PrettyMIDI(midi_file).fluidsynth(fs=sample_rate, sf2_path=sf2_file)
      peak = float(np.abs(audio).max()) if audio.size else 0.0
      pcm = (audio / peak * 0.9 * 32767 if peak > 0 else audio).astype(np.int16)
      wavfile.write(wav_file, sample_rate, pcm)
    else:
      cmd = ["fluidsynth", "-ni", "-F", wav_file, "-r", str(sample_rate), sf2_file, midi_file]
      result = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if result.returncode != 0 or not os.path.isfile(wav_file):
        return False, (f"skipping audio: {' '.join(cmd)} failed (exit {result.returncode}): "
                       f"{result.stderr.strip()[-300:]}")
  return True, f"wrote {wav_path} ({backend}, soundfont {sf2})"
