"""Block-wise co-composition sessions (the library behind `python -m virtuoso_jax.compose`).

A session is a folder holding `state.json`: the accepted composition (notes), the undo history,
the pending candidates and the settings. Every operation loads it, acts, and saves it, so a
session can stop and resume in another process at any time. Blocks are whole notes: the model
continues the composition note by note (one compiled loop, grammar-constrained, KV-cached), so a
block never cuts a note in half, and undo removes exactly the notes a block added.

  session = Session.create(path, workdir, notes=prompt)   # or Session.load(path)
  candidates = session.continue_(block_notes=32, candidates=3)
  session.accept(1); session.undo(); session.export()

Only `continue_` (and `run`) loads the model; accept/undo/describe/set/export read the run's
codec (config.json, encoding.json) and never import JAX. state.json is checked against an
explicit schema on every load and before every save (`validate_state`): a damaged or
hand-edited file is one error naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax import inference
from virtuoso_jax import paths
from virtuoso_jax import run_dir

STATE_FILE = "state.json"
VERSION = 1
SampleError = inference.SampleError
# Bounds of a state file (validate_state); the flags are held to the same ones.
MAX_CANDIDATES = 64
MAX_BLOCK_NOTES = 10_000
MAX_BLOCK_SECONDS = 3600.0
MAX_NOTES = 2_000_000  # Notes in the composition or one candidate (EncodingConfig.max_notes).
MAX_TIME_UNITS = 100_000_000  # Onsets and durations, in grid units (27.7 h at 1 ms).
MAX_HISTORY = 100_000  # Undo steps.
_NOTE_RANGES = (("onset", 0, MAX_TIME_UNITS), ("duration", 0, MAX_TIME_UNITS),
                ("pitch", 0, 127), ("velocity", 1, 127), ("instrument", 0, 128))
_SETTING_KEYS = ("temperature", "top_k", "top_p", "block_notes", "block_seconds", "candidates",
                 "instruments")


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # Not NaN.


def _check_rows(rows, where: str) -> None:
  if not isinstance(rows, list):
    raise ValueError(f"{where} must be a list of notes, got {type(rows).__name__}")
  if len(rows) > MAX_NOTES:
    raise ValueError(f"{where} holds {len(rows)} notes, more than {MAX_NOTES}")
  for i, r in enumerate(rows):
    if not (isinstance(r, list) and len(r) == len(_NOTE_RANGES)):
      raise ValueError(f"{where}[{i}] must be [onset, duration, pitch, velocity, instrument], "
                       f"got {str(r)[:80]}")
    for (name, lo, hi), v in zip(_NOTE_RANGES, r):
      if not (_is_int(v) and lo <= v <= hi):
        raise ValueError(f"{where}[{i}] {name} must be an int in {lo}..{hi}, got {str(v)[:40]}")


def check_settings(d, where: str = "settings", prefix: str = "") -> None:
  """ValueError naming the field (`prefix` + name, e.g. `--temperature`) of a bad setting."""
  if not isinstance(d, dict):
    raise ValueError(f"{where} must be an object, got {type(d).__name__}")
  unknown = sorted(set(d) - set(_SETTING_KEYS))
  if unknown:
    raise ValueError(f"{where} has unknown fields {unknown}")
  n = lambda k: f"{where}.{k}" if not prefix else f"{prefix}{k}"
  checks = {
      "temperature": (lambda v: _is_num(v) and 0 <= v < float("inf"), ">= 0"),
      "top_k": (lambda v: _is_int(v) and 0 <= v <= inference.MAX_TOKENS,
                f"an int in 0..{inference.MAX_TOKENS}"),
      "top_p": (lambda v: _is_num(v) and 0 < v <= 1, "in (0, 1]"),
      "block_notes": (lambda v: _is_int(v) and 0 <= v <= MAX_BLOCK_NOTES,
                      f"an int in 0..{MAX_BLOCK_NOTES}"),
      "block_seconds": (lambda v: _is_num(v) and 0 <= v <= MAX_BLOCK_SECONDS,
                        f"in 0..{MAX_BLOCK_SECONDS:g}"),
      "candidates": (lambda v: _is_int(v) and 1 <= v <= MAX_CANDIDATES,
                     f"an int in 1..{MAX_CANDIDATES}"),
      "instruments": (lambda v: v is None or (isinstance(v, list) and 0 < len(v) <= 129 and
                                              all(_is_int(i) and 0 <= i <= 128 for i in v)),
                      "null or a non-empty list of ints 0..128"),
  }
  for k, v in d.items():
    ok, what = checks[k]
    if not ok(v):
      raise ValueError(f"{n(k)} must be {what}, got {str(v)[:60]}")
  if d.get("block_notes", 1) < 1 and d.get("block_seconds", 0) <= 0:
    raise ValueError(f"a block needs {n('block_notes')} >= 1 or {n('block_seconds')} > 0")


def validate_state(state, file: str) -> dict:
  """The whole state file against its schema and bounds; SampleError naming the file and the
  field. Types: version 1; workdir, checkpoint, source strings; seed an int in
  0..sample.SEED_MAX; settings (check_settings); notes, each history entry and each candidate a
  list of [onset, duration, pitch, velocity, instrument] ints (onset/duration 0..MAX_TIME_UNITS
  grid units, pitch 0..127, velocity 1..127, instrument 0..128, at most MAX_NOTES notes); at
  most MAX_CANDIDATES candidates and MAX_HISTORY undo steps."""
  try:
    if not isinstance(state, dict):
      raise ValueError(f"the file must hold an object, got {type(state).__name__}")
    if state.get("version") != VERSION:
      raise ValueError(f"version: {state.get('version')!r}, expected {VERSION}")
    required = ("version", "workdir", "checkpoint", "source", "seed", "settings", "notes",
                "history", "candidates")
    missing = [k for k in required if k not in state]
    if missing:
      raise ValueError(f"missing fields {missing}")
    unknown = sorted(set(state) - set(required))
    if unknown:
      raise ValueError(f"unknown fields {unknown}")
    for k in ("workdir", "checkpoint", "source"):
      if not isinstance(state[k], str) or (k != "source" and not state[k]):
        raise ValueError(f"{k} must be a non-empty string, got {str(state[k])[:60]}")
    if not (_is_int(state["seed"]) and 0 <= state["seed"] <= inference.SEED_MAX):
      raise ValueError(f"seed must be an int in 0..{inference.SEED_MAX}, got "
                       f"{str(state['seed'])[:40]}")
    check_settings(state["settings"])
    _check_rows(state["notes"], "notes")
    for key, limit in (("history", MAX_HISTORY), ("candidates", MAX_CANDIDATES)):
      if not isinstance(state[key], list):
        raise ValueError(f"{key} must be a list, got {type(state[key]).__name__}")
      if len(state[key]) > limit:
        raise ValueError(f"{key} holds {len(state[key])} entries, more than {limit}")
      for i, rows in enumerate(state[key]):
        _check_rows(rows, f"{key}[{i}]")
  except ValueError as e:
    raise SampleError(f"session file {file} is damaged: {e}") from None
  return state


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
  """A co-composition session stored in `<path>/state.json` (local or remote, see
  virtuoso_jax.paths)."""

  def __init__(self, path: str, state: dict[str, Any]):
    self.path = paths.absolute(path)
    self.state = state
    self._run = None
    self._enc = None
    self.last_samples = []  # continue_'s Samples (with why each stopped).

  # ---------------------------------------------------------------- persistence
  @property
  def state_file(self) -> str:
    return paths.join(self.path, STATE_FILE)

  @classmethod
  def create(cls, path: str, workdir: str, *, checkpoint: str = "latest",
             notes: Optional[encoding.Notes] = None, source: str = "nothing",
             settings: Optional[Settings] = None, seed: int = 0,
             overwrite: bool = False) -> "Session":
    """A new session starting from `notes` (None: from nothing)."""
    path = paths.absolute(path)
    if paths.exists(paths.join(path, STATE_FILE)) and not overwrite:
      raise SampleError(f"session {path} already exists (pass --overwrite to start over, or "
                        "use continue/accept/undo to go on with it)")
    paths.makedirs(path)
    state = {"version": VERSION, "workdir": paths.absolute(workdir), "checkpoint": checkpoint,
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
    file = paths.join(paths.absolute(path), STATE_FILE)
    if not paths.is_file(file):
      raise SampleError(f"no session at {path} ({file} not found; run `compose start "
                        f"--session={path} --workdir=...` first)")
    try:
      state = paths.read_json(file)
    except (OSError, ValueError, RecursionError) as e:
      raise SampleError(f"session file {file} is damaged ({type(e).__name__}: {e})") from e
    return cls(path, validate_state(state, file))

  def save(self) -> None:
    """Atomic write (a crash never leaves a half-written state file) of a state that passes
    validate_state (an invalid one is never written)."""
    validate_state(json.loads(json.dumps(self.state)), self.state_file)
    paths.write_json(self.state_file, self.state)

  # ---------------------------------------------------------------- accessors
  @property
  def notes(self) -> encoding.Notes:
    return _notes(self.state["notes"])

  @property
  def settings(self) -> Settings:
    return Settings(**self.state["settings"])

  def candidates(self) -> list[encoding.Notes]:
    return [_notes(c) for c in self.state["candidates"]]

  def run(self) -> inference.Run:
    if self._run is None:
      self._run = inference.load_run(self.state["workdir"], self.state["checkpoint"])
    return self._run

  @property
  def enc_config(self) -> encoding.EncodingConfig:
    """The run's encoding, from its config.json/encoding.json (no model, no JAX)."""
    if self._run is not None:
      return self._run.enc_config
    if self._enc is None:
      self._enc = run_dir.load_codec(self.state["workdir"])[1].config
    return self._enc

  def set_settings(self, **changes) -> Settings:
    """Makes `changes` (None: unchanged) the session's settings for later blocks; saves."""
    settings = self._merged(changes)
    self.state["settings"] = dataclasses.asdict(settings)
    self.save()
    return settings

  def _merged(self, changes) -> Settings:
    """The settings with `changes` applied (None: unchanged; instruments="any": no
    restriction); SampleError naming the flag of a bad value."""
    upd = {k: v for k, v in changes.items() if v is not None}
    if upd.get("instruments") == "any":
      upd["instruments"] = None
    settings = dataclasses.replace(self.settings, **upd)
    try:
      check_settings(dataclasses.asdict(settings), prefix="--")
    except ValueError as e:
      raise SampleError(str(e).replace("--block_notes", "--notes").replace(
          "--block_seconds", "--seconds")) from None
    return settings

  # ---------------------------------------------------------------- actions
  def block_settings(self, **changes) -> Settings:
    """The settings one `continue` uses: the session's, with `changes` (None: unchanged)."""
    return self._merged(changes)

  def continue_(self, run: Optional[inference.Run] = None, *, keep: bool = False,
                **changes) -> list[encoding.Notes]:
    """Generates candidate blocks after the composition; returns the candidates' full notes.

    `changes` (temperature, top_k, top_p, block_notes, block_seconds, candidates,
    instruments) apply to this block only, unless `keep` makes them the session's settings.
    """
    settings = self.block_settings(**changes)  # Checked before the model loads.
    run = run or self.run()
    if settings.block_seconds > 0:
      max_notes, max_seconds = None, settings.block_seconds
    else:
      max_notes, max_seconds = settings.block_notes, None
    composition = self.notes
    # max_tokens=None: the budget is sized to fit the block (sample.token_budget).
    request = inference.SampleRequest(
        num_samples=settings.candidates, seed=self.state["seed"],
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        max_tokens=None, max_notes=max_notes, max_seconds=max_seconds,
        prompt_notes=composition if len(composition) else None,
        instruments=settings.instruments)
    if keep:
      self.state["settings"] = dataclasses.asdict(settings)
    return self._propose(run, request)

  def _propose(self, run: inference.Run, request: inference.SampleRequest
               ) -> list[encoding.Notes]:
    """Generates `request`'s candidates (whole compositions), stores them; next seed; saves."""
    samples = inference.generate(run, request)
    self.last_samples = samples
    self.state["seed"] = (int(self.state["seed"]) + 1) % (inference.SEED_MAX + 1)
    self.state["candidates"] = [_rows(s.notes) for s in samples]
    self.save()
    return [s.notes for s in samples]

  def _reworking(self, what: str, **changes) -> inference.SampleRequest:
    """A request that redoes part of the composition (infill, accompany) with the session's
    settings and `changes` (sampling knobs, candidates)."""
    if not len(self.notes):
      raise SampleError(f"{what} works on the composition, which is empty (start from a MIDI "
                        "file or continue and accept first)")
    settings = self.block_settings(**changes)
    return inference.SampleRequest(
        num_samples=settings.candidates, seed=self.state["seed"],
        temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
        prompt_notes=self.notes, instruments=settings.instruments)

  def infill(self, start_s: float, end_s: float, run: Optional[inference.Run] = None,
             **changes) -> list[encoding.Notes]:
    """Candidates that redo the span [start_s, end_s) of the composition given the music
    before and after it (every note outside the span kept exactly)."""
    request = self._reworking("infill", **changes)
    request = dataclasses.replace(request, infill=(float(start_s), float(end_s)))
    return self._propose(run or self.run(), request)

  def accompany(self, keep_instruments=None, keep_melody: bool = False,
                run: Optional[inference.Run] = None, **changes) -> list[encoding.Notes]:
    """Candidates that keep the composition's `keep_instruments` parts (or its melody) exactly
    and write the other parts around them."""
    request = self._reworking("accompany", **changes)
    request = dataclasses.replace(request, keep_instruments=keep_instruments,
                                  keep_melody=keep_melody)
    return self._propose(run or self.run(), request)

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
    stem = stem or paths.join(self.path, "composition")
    paths.makedirs(paths.parent(stem))
    notes = self.notes
    if not len(notes):
      raise SampleError(f"session {self.path} has no notes yet (run continue and accept first)")
    return inference.write_piece(notes, self.enc_config, stem, sf2=sf2, audio=audio,
                                  title=f"composition ({len(notes)} notes)")

  def describe(self) -> str:
    s = self.state
    enc = self.enc_config
    lines = [f"session {self.path}: model {s['workdir']} ({s['checkpoint']}), started from "
             f"{s['source']}",
             f"composition: {inference.summarize(self.notes, enc)}",
             f"undo steps: {len(s['history'])}; candidates pending: {len(s['candidates'])}; "
             f"next seed: {s['seed']}",
             f"settings in force for the next continue (change them with `compose set`): "
             + ", ".join(f"{k}={v}" for k, v in s["settings"].items())]
    for i, c in enumerate(self.candidates()):
      lines.append(f"  candidate {i}: +{len(c) - len(self.notes)} notes -> "
                   f"{inference.summarize(c, enc)}")
    return "\n".join(lines)


def dataset_song(run: inference.Run, song: str,
                 split: str = "train") -> tuple[str, encoding.Notes]:
  """(name, notes) of a dataset song given by index or by name (the dataset in config.json)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import dataset  # pylint: disable=g-import-not-at-top
  name = dataset.dataset_name(run.config)
  try:
    source = tfds.data_source(name, split=split, data_dir=dataset.data_dir(run.config))
  except ValueError as e:
    raise SampleError(f"cannot open split {split!r} of {name} in "
                      f"{dataset.data_dir(run.config)}: {e}") from e
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


def first_notes(notes: encoding.Notes, n: int) -> encoding.Notes:
  if n <= 0 or n >= len(notes):
    return notes
  return encoding.Notes(**{k: v[:n] for k, v in notes.canonical().columns().items()})
