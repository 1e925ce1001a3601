r"""Block-wise co-composition with a trained model (the original's Composer, done right).

A session is a folder holding `state.json`: the accepted composition (notes), the undo history,
the pending candidates and the settings. Every command loads it, acts, and saves it, so a session
can stop and resume in another process at any time. Blocks are whole notes: the model continues
the composition note by note (one compiled loop, grammar-constrained, KV-cached), so a block
never cuts a note in half, and undo removes exactly the notes a block added.

  python -m virtuoso_jax.compose start --session=comp --workdir=runs/quickstart
  python -m virtuoso_jax.compose start --session=comp --workdir=W --midi=song.mid --prompt_notes=48
  python -m virtuoso_jax.compose start --session=comp --workdir=W --song=3      # dataset song
  python -m virtuoso_jax.compose continue --session=comp --notes=32 --candidates=3
  python -m virtuoso_jax.compose accept --session=comp --candidate=1
  python -m virtuoso_jax.compose undo --session=comp
  python -m virtuoso_jax.compose show --session=comp
  python -m virtuoso_jax.compose export --session=comp --out=final     # final.mid / final.png

`continue` writes <session>/candidate_XX.{mid,png} (the composition plus that candidate block);
`accept` makes one the composition (<session>/composition.{mid,png}); `continue` again replaces
the candidates (a new seed each time).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax import sample as sample_lib

STATE_FILE = "state.json"
VERSION = 1
SampleError = sample_lib.SampleError


def _rows(notes: encoding.Notes) -> list[list[int]]:
  return [list(map(int, r)) for r in notes.to_rows()]


def _notes(rows) -> encoding.Notes:
  return encoding.Notes.from_rows(rows) if rows else encoding.Notes.empty()


@dataclasses.dataclass
class Settings:
  """Sampling settings of a session (changed by `continue` flags, kept for the next block)."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  block_notes: int = 32
  block_seconds: float = 0.0  # > 0: blocks are measured in seconds instead of notes.
  candidates: int = 1
  instruments: Optional[list[int]] = None


class Session:
  """A co-composition session stored in `<path>/state.json`."""

  def __init__(self, path: str, state: dict[str, Any]):
    self.path = os.path.abspath(path)
    self.state = state
    self._run = None

  # ---------------------------------------------------------------- persistence
  @property
  def state_file(self) -> str:
    return os.path.join(self.path, STATE_FILE)

  @classmethod
  def create(cls, path: str, workdir: str, *, checkpoint: str = "latest",
             notes: Optional[encoding.Notes] = None, source: str = "nothing",
             settings: Optional[Settings] = None, seed: int = 0,
             overwrite: bool = False) -> "Session":
    """A new session starting from `notes` (None: from nothing)."""
    path = os.path.abspath(path)
    if os.path.exists(os.path.join(path, STATE_FILE)) and not overwrite:
      raise SampleError(f"session {path} already exists (pass --overwrite to start over, or "
                        "use continue/accept/undo to go on with it)")
    os.makedirs(path, exist_ok=True)
    state = {"version": VERSION, "workdir": os.path.abspath(workdir), "checkpoint": checkpoint,
             "source": source, "seed": int(seed),
             "settings": dataclasses.asdict(settings or Settings()),
             "notes": _rows(notes) if notes is not None else [], "history": [],
             "candidates": []}
    session = cls(path, state)
    session.save()
    return session

  @classmethod
  def load(cls, path: str) -> "Session":
    """Loads `<path>/state.json`; SampleError naming the file if missing or damaged."""
    file = os.path.join(os.path.abspath(path), STATE_FILE)
    if not os.path.isfile(file):
      raise SampleError(f"no session at {path} ({file} not found; run `compose start "
                        f"--session={path} --workdir=...` first)")
    try:
      with open(file, encoding="utf-8") as f:
        state = json.load(f)
      if state.get("version") != VERSION:
        raise ValueError(f"version {state.get('version')!r}, expected {VERSION}")
      for key in ("workdir", "settings", "notes", "history", "candidates", "seed"):
        if key not in state:
          raise KeyError(key)
    except (OSError, ValueError, KeyError) as e:
      raise SampleError(f"session file {file} is damaged ({type(e).__name__}: {e})") from e
    return cls(path, state)

  def save(self) -> None:
    """Atomic write (a crash never leaves a half-written state file)."""
    tmp = self.state_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.state, f)
    os.replace(tmp, self.state_file)

  # ---------------------------------------------------------------- accessors
  @property
  def notes(self) -> encoding.Notes:
    return _notes(self.state["notes"])

  @property
  def settings(self) -> Settings:
    return Settings(**self.state["settings"])

  def candidates(self) -> list[encoding.Notes]:
    return [_notes(c) for c in self.state["candidates"]]

  def run(self) -> sample_lib.Run:
    if self._run is None:
      self._run = sample_lib.load_run(self.state["workdir"], self.state["checkpoint"])
    return self._run

  # ---------------------------------------------------------------- actions
  def continue_(self, run: Optional[sample_lib.Run] = None, **changes) -> list[encoding.Notes]:
    """Generates candidate blocks after the composition; returns the candidates' full notes.

    `changes` update the settings first (temperature, top_k, top_p, block_notes,
    block_seconds, candidates, instruments) and are kept for later blocks.
    """
    run = run or self.run()
    settings = dataclasses.replace(self.settings, **{k: v for k, v in changes.items()
                                                     if v is not None})
    if settings.block_notes < 1 and settings.block_seconds <= 0:
      raise SampleError("a block needs --notes >= 1 or --seconds > 0")
    if settings.candidates < 1:
      raise SampleError(f"--candidates must be >= 1, got {settings.candidates}")
    per_note = (run.codec.tokens_per_note if run.kind == "token" else run.codec.num_fields + 1)
    if settings.block_seconds > 0:
      max_tokens = int(run.config.sample.max_new_tokens)
      max_notes, max_seconds = None, settings.block_seconds
    else:
      # Room for the notes plus the wait ids between them; the note limit stops it.
      max_tokens = settings.block_notes * per_note * 2 + 16
      max_notes, max_seconds = settings.block_notes, None
    composition = self.notes
    request = sample_lib.SampleRequest(
        num_samples=settings.candidates, seed=self.state["seed"],
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        max_tokens=max_tokens, max_notes=max_notes, max_seconds=max_seconds,
        prompt_notes=composition if len(composition) else None,
        instruments=settings.instruments)
    samples = sample_lib.generate(run, request)
    self.state["settings"] = dataclasses.asdict(settings)
    self.state["seed"] = int(self.state["seed"]) + 1
    self.state["candidates"] = [_rows(s.notes) for s in samples]
    self.save()
    return [s.notes for s in samples]

  def accept(self, index: int = 0) -> encoding.Notes:
    """Makes candidate `index` the composition (the old one goes on the undo stack)."""
    cands = self.state["candidates"]
    if not cands:
      raise SampleError(f"session {self.path} has no candidates to accept (run continue first)")
    if not 0 <= index < len(cands):
      raise SampleError(f"--candidate must be in 0..{len(cands) - 1}, got {index}")
    self.state["history"].append(self.state["notes"])
    self.state["notes"] = cands[index]
    self.state["candidates"] = []
    self.save()
    return self.notes

  def undo(self) -> encoding.Notes:
    """Restores the composition before the last accepted block (drops pending candidates)."""
    if not self.state["history"]:
      raise SampleError(f"nothing to undo in session {self.path}")
    self.state["notes"] = self.state["history"].pop()
    self.state["candidates"] = []
    self.save()
    return self.notes

  def export(self, stem: Optional[str] = None, *, sf2: Optional[str] = None,
             audio: bool = False) -> list[str]:
    """Writes the composition as stem.mid / stem.png (default <session>/composition)."""
    stem = stem or os.path.join(self.path, "composition")
    if os.path.dirname(os.path.abspath(stem)):
      os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    notes = self.notes
    if not len(notes):
      raise SampleError(f"session {self.path} has no notes yet (run continue and accept first)")
    return sample_lib.write_piece(notes, self.run().enc_config, stem, sf2=sf2, audio=audio,
                                  title=f"composition ({len(notes)} notes)")

  def describe(self) -> str:
    s = self.state
    enc = self._run.enc_config if self._run else encoding.EncodingConfig()
    lines = [f"session {self.path}: model {s['workdir']} ({s['checkpoint']}), started from "
             f"{s['source']}",
             f"composition: {sample_lib.summarize(self.notes, enc)}",
             f"undo steps: {len(s['history'])}; candidates pending: {len(s['candidates'])}; "
             f"next seed: {s['seed']}",
             f"settings: {s['settings']}"]
    for i, c in enumerate(self.candidates()):
      lines.append(f"  candidate {i}: +{len(c) - len(self.notes)} notes -> "
                   f"{sample_lib.summarize(c, enc)}")
    return "\n".join(lines)


def dataset_song(run: sample_lib.Run, song: str, split: str = "train") -> tuple[str, encoding.Notes]:
  """(name, notes) of a dataset song given by index or by name (the dataset in config.json)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  name = input_pipeline.dataset_name(run.config)
  try:
    source = tfds.data_source(name, split=split, data_dir=input_pipeline.data_dir(run.config))
  except ValueError as e:
    raise SampleError(f"cannot open split {split!r} of {name} in "
                      f"{input_pipeline.data_dir(run.config)}: {e}") from e
  if song.lstrip("-").isdigit():
    i = int(song)
    if not 0 <= i < len(source):
      raise SampleError(f"--song={i}: {name} split {split!r} has {len(source)} songs")
    record = source[i]
  else:
    found = [r for r in (source[j] for j in range(len(source)))
             if (r["name"].decode() if isinstance(r["name"], bytes) else r["name"]) == song]
    if not found:
      raise SampleError(f"--song={song!r}: no song of that name in {name} split {split!r}")
    record = found[0]
  title = record["name"].decode() if isinstance(record["name"], bytes) else str(record["name"])
  if run.kind == "token":
    notes = run.codec.decode(np.asarray(record["ids"]))
  else:
    text = record["text"]
    notes = run.codec.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
  return title, notes


def _first_notes(notes: encoding.Notes, n: int) -> encoding.Notes:
  if n <= 0 or n >= len(notes):
    return notes
  return encoding.Notes(**{k: v[:n] for k, v in notes.canonical().columns().items()})


# ---------------------------------------------------------------------------- the binary

COMMANDS = ("start", "continue", "accept", "undo", "show", "export")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags
  f.DEFINE_string("session", None, "Session folder (holds state.json and the rendered files).")
  f.DEFINE_string("workdir", None, "start: the trained run to compose with.")
  f.DEFINE_string("checkpoint", "latest", "start: latest | best | a step number.")
  f.DEFINE_string("midi", None, "start: begin from this MIDI file.")
  f.DEFINE_string("song", None, "start: begin from a dataset song (index or name).")
  f.DEFINE_string("split", "train", "start: the dataset split of --song.")
  f.DEFINE_integer("prompt_notes", 0, "start: keep the first N notes of --song, or the last N "
                   "of --midi (0 = all).")
  f.DEFINE_bool("overwrite", False, "start: replace an existing session.")
  f.DEFINE_integer("seed", 0, "start: the first block's seed (each continue adds one).")
  f.DEFINE_integer("notes", None, "continue: notes per block.")
  f.DEFINE_float("seconds", None, "continue: seconds per block (instead of notes).")
  f.DEFINE_integer("candidates", None, "continue: candidate blocks to generate.")
  f.DEFINE_float("temperature", None, "continue: sampling temperature (0 = greedy).")
  f.DEFINE_integer("top_k", None, "continue: top-k (0 = off).")
  f.DEFINE_float("top_p", None, "continue: top-p (1.0 = off).")
  f.DEFINE_list("instruments", None, "continue: restrict to these instruments (128 = drums).")
  f.DEFINE_integer("candidate", 0, "accept: which candidate.")
  f.DEFINE_string("out", None, "export: output stem (default <session>/composition).")
  f.DEFINE_string("sf2", None, "export: soundfont for the WAV.")
  f.DEFINE_bool("audio", True, "export: also write a WAV when FluidSynth is installed.")
  return flags.FLAGS


def _command(cmd: str, f) -> None:
  if cmd == "start":
    if not f.workdir:
      raise SampleError("start needs --workdir (the trained run)")
    if f.midi and f.song is not None:
      raise SampleError("start takes --midi or --song, not both")
    run = sample_lib.load_run(f.workdir, f.checkpoint)
    notes, source = None, "nothing"
    if f.midi:
      notes = sample_lib.read_prompt_midi(f.midi, run.enc_config, last_notes=f.prompt_notes)
      notes, source = run.codec.quantize(notes) if run.kind == "token" else notes, f.midi
    elif f.song is not None:
      title, notes = dataset_song(run, f.song, f.split)
      notes, source = _first_notes(notes, f.prompt_notes), f"dataset song {title!r}"
    session = Session.create(f.session, f.workdir, checkpoint=f.checkpoint, notes=notes,
                             source=source, seed=f.seed, overwrite=f.overwrite)
    session._run = run  # pylint: disable=protected-access
    if len(session.notes):
      paths = session.export()
      print(f"Started {session.path} from {source}: {len(session.notes)} notes -> "
            f"{', '.join(paths)}")
    else:
      print(f"Started {session.path} from nothing")
    return
  session = Session.load(f.session)
  if cmd == "continue":
    instruments = [int(x) for x in f.instruments] if f.instruments else None
    changes = dict(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                   block_notes=f.notes, candidates=f.candidates, instruments=instruments)
    if f.seconds is not None:
      changes["block_seconds"] = f.seconds
    elif f.notes is not None:
      changes["block_notes"], changes["block_seconds"] = f.notes, 0.0
    before = len(session.notes)
    cands = session.continue_(**changes)
    enc = session.run().enc_config
    for i, c in enumerate(cands):
      stem = os.path.join(session.path, f"candidate_{i:02d}")
      paths = sample_lib.write_piece(c, enc, stem, audio=False,
                                     title=f"candidate {i}: +{len(c) - before} notes")
      print(f"candidate {i}: +{len(c) - before} notes -> {sample_lib.summarize(c, enc)} -> "
            f"{', '.join(paths)}")
    print(f"accept one with: python -m virtuoso_jax.compose accept --session={f.session} "
          f"--candidate=N")
  elif cmd == "accept":
    notes = session.accept(f.candidate)
    paths = session.export()
    print(f"Accepted candidate {f.candidate}: composition now {len(notes)} notes -> "
          f"{', '.join(paths)}")
  elif cmd == "undo":
    notes = session.undo()
    msg = f"Undone: composition back to {len(notes)} notes"
    if len(notes):
      msg += " -> " + ", ".join(session.export())
    print(msg)
  elif cmd == "show":
    print(session.describe())
  elif cmd == "export":
    paths = session.export(f.out, sf2=f.sf2, audio=f.audio)
    print(f"Exported {len(session.notes)} notes -> {', '.join(paths)}")


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m virtuoso_jax.compose {{{'|'.join(COMMANDS)}}} "
                         "--session=DIR [flags]")
  if not FLAGS.session:
    raise app.UsageError("--session is required")
  try:
    _command(argv[1], FLAGS)
  except (SampleError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


FLAGS = None


def run():
  """Console-script entry point (`virtuoso-compose`); `python -m` runs the same."""
  global FLAGS
  from absl import app  # pylint: disable=g-import-not-at-top
  FLAGS = _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
