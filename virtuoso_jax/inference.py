"""Inference on a trained run: load it, build prompts, generate, decode and write music.

  run = inference.load_run(workdir)                       # config, codec, model (params only)
  pieces = inference.generate(run, SampleRequest(num_samples=2, max_notes=100))
  inference.write_outputs(run, pieces, out_dir)           # MIDI, piano roll (+ TXT, WAV)

Generation is one compiled loop over a KV cache (virtuoso_jax.sampling); every sample follows
the codec's grammar, so it decodes. Used by the sampling, composing and evaluation binaries and
by the training binary's end-of-run sample; a run's files are read through virtuoso_jax.run_dir.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax import paths
from virtuoso_jax import run_dir

SEED_MAX = 2**32 - 1  # Seeds are uint32 (what every PRNG here and in numpy takes).
MAX_TOKENS = 1_000_000  # Per sample: the sampler's history buffer is [samples, prompt + this].
DEFAULT_MAX_TOKENS = 1024  # No length asked for at all (the library's default).


# A bad sampling request: missing workdir/checkpoint, unreadable prompt, config mismatch (the
# run directory's own error: virtuoso_jax.run_dir raises it for the files it reads).
SampleError = run_dir.RunError


def check_knobs(*, temperature=None, top_k=None, top_p=None, seed=None, prefix="--") -> None:
  """SampleError naming every sampling knob (given, i.e. not None) that means nothing: the
  binaries call it before loading a model, SampleRequest after taking the config's defaults."""
  bad = []
  if temperature is not None and not (isinstance(temperature, (int, float)) and
                                      0 <= temperature < float("inf")):
    bad.append(f"{prefix}temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k is not None and not (isinstance(top_k, (int, np.integer)) and
                                not isinstance(top_k, bool) and 0 <= top_k <= MAX_TOKENS):
    bad.append(f"{prefix}top_k must be an int in 0..{MAX_TOKENS} (0 = off), got {top_k}")
  if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
    bad.append(f"{prefix}top_p must be in (0, 1] (1 = off), got {top_p}")
  if seed is not None and not (isinstance(seed, (int, np.integer)) and 0 <= seed <= SEED_MAX):
    bad.append(f"{prefix}seed must be an int in 0..{SEED_MAX}, got {seed}")
  if bad:
    raise SampleError("; ".join(bad))


def parse_instruments(values, flag: str = "--instruments") -> Optional[list[int]]:
  """A list of GM programs (0..127, 128 = drums) from flag strings or ints; None stays None.
  SampleError naming the flag and the bad value."""
  if values is None:
    return None
  if not values:
    raise SampleError(f"{flag} is empty; give GM programs (0..127, 128 = drums), e.g. "
                      f"{flag}=0,40,128, or leave the flag out for any")
  out = []
  for v in values:
    try:
      i = int(str(v).strip())
    except ValueError:
      i = None
    if i is None or isinstance(v, bool) or not 0 <= i <= 128:
      raise SampleError(f"{flag} must be GM programs 0..127 or 128 (drums), got {v!r} in "
                        f"{','.join(map(str, values))}")
    out.append(i)
  return out


# ---------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Run:
  """A trained model ready to sample: config, codec, model (with restored params), tables."""

  workdir: str
  config: Any  # ml_collections.ConfigDict (config.json)
  codec: Any  # TokenCodec | CharCodec
  model: Any  # virtuoso_jax.models decoder
  step: int
  tables: Any  # encoding.Grammar (the codec's)

  @property
  def kind(self) -> str:
    """"token" | "char" (config.data.encoding)."""
    return self.config.data.encoding

  @property
  def enc_config(self) -> encoding.EncodingConfig:
    return self.codec.config

  @property
  def context(self) -> int:
    return int(self.config.model.max_len)


def load_run(workdir: str, checkpoint: str = "latest") -> Run:
  """Loads a training run for sampling (parameters only, never the optimizer state).

  Args:
    workdir: the run's --workdir (holds config.json and checkpoints/).
    checkpoint: "latest", "best" (lowest eval loss) or a step number.

  Raises:
    SampleError naming the path and the reason (no workdir, no config.json, no checkpoint,
    checkpoint shapes that do not match config.json, a vocabulary mismatch).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import checkpointing, models  # pylint: disable=g-import-not-at-top

  workdir = paths.absolute(workdir)
  cfg_path = paths.join(workdir, run_dir.CONFIG_FILE)
  config, codec = run_dir.load_codec(workdir)
  step_arg = {"best": True} if checkpoint == "best" else {}
  if checkpoint not in ("latest", "best"):
    try:
      step_arg = {"step": int(checkpoint)}
    except ValueError as e:
      raise SampleError(f"--checkpoint must be latest, best or a step number, got "
                        f"{checkpoint!r}") from e

  model = models.create_model(config.model, nnx.Rngs(config.seed))
  _, params, _ = nnx.split(model, nnx.Param, ...)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          params)
  try:
    step, bad = checkpointing.params_mismatch(workdir, abstract, **step_arg)
  except FileNotFoundError as e:
    raise SampleError(f"no checkpoint to sample from: {e}") from e
  except checkpointing.CheckpointError as e:
    raise SampleError(str(e)) from e
  if bad:
    raise SampleError(
        f"the checkpoint in {checkpointing.checkpoint_dir(workdir)} (step {step}) does not match "
        f"{cfg_path} (model {config.model.name}, {config.model.num_layers} layers, width "
        f"{config.model.emb_dim}, vocab {config.model.vocab_size}): {'; '.join(bad)}")
  try:
    step, restored = checkpointing.restore_params(workdir, abstract, step=step)
  except FileNotFoundError as e:
    raise SampleError(f"no checkpoint to sample from: {e}") from e
  # Orbax reports shape/structure mismatches with several exception types.
  except (ValueError, KeyError, TypeError) as e:
    raise SampleError(
        f"the checkpoint in {checkpointing.checkpoint_dir(workdir)} does not match "
        f"{cfg_path} (model {config.model.name}, {config.model.num_layers} layers, width "
        f"{config.model.emb_dim}, vocab {config.model.vocab_size}): {type(e).__name__}: "
        f"{str(e)[:500]}") from e
  nnx.update(model, restored)
  return Run(workdir, config, codec, model, int(step), codec.grammar())


# ---------------------------------------------------------------------------- prompts


def read_prompt_midi(path: str, enc_config: encoding.EncodingConfig, *, last_notes: int = 0,
                     last_seconds: float = 0.0, shift: bool = True) -> encoding.Notes:
  """The last `last_notes` notes (or those starting in the last `last_seconds` seconds; 0: all)
  of a MIDI file, shifted to start at 0 (`shift=False`: at the file's own times, what infilling
  and accompaniment use). Raises SampleError naming the file and the reason."""
  if last_notes < 0 or last_seconds < 0:
    raise SampleError("--prompt_notes and --prompt_seconds must be >= 0")
  if not paths.is_file(path):
    raise SampleError(f"prompt MIDI {path} does not exist")
  try:
    notes = encoding.midi_to_notes(path, enc_config)
  except encoding.MidiError as e:
    raise SampleError(f"prompt MIDI {path} is unreadable: {e}") from e
  except Exception as e:  # pylint: disable=broad-except  (any unreadable prompt is the user's file)
    raise SampleError(f"prompt MIDI {path} is unreadable: {type(e).__name__}: {e}") from e
  if not len(notes):
    raise SampleError(f"prompt MIDI {path} holds no notes to continue")
  idx = np.arange(len(notes))
  if last_notes:
    idx = idx[-last_notes:]
  elif last_seconds:
    units = last_seconds * 1000.0 / enc_config.grid_ms
    idx = idx[notes.onset >= notes.onset.max() - units]
  cols = {k: v[idx] for k, v in notes.columns().items()}
  if shift:
    cols["onset"] = cols["onset"] - cols["onset"].min()
  return encoding.Notes(**cols).canonical()


def length_hint(notes: int) -> str:
  """The original char models' header convention, `SONG=<name>_with_<N>_notes` (a length hint
  the model learnt from the training headers)."""
  return f"SONG=Composition_with_{int(notes)}_notes\n"


@dataclasses.dataclass
class SampleRequest:
  """What to generate (see the binary's flags)."""

  num_samples: int = 1
  seed: int = 0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  max_tokens: Optional[int] = None  # None: sized to fit max_notes / max_seconds (else 1024).
  max_notes: Optional[int] = None
  max_seconds: Optional[float] = None
  prompt_notes: Optional[encoding.Notes] = None  # Continue these notes.
  prompt_text: Optional[str] = None  # Char models: a TXT prompt (e.g. "SONG=...").
  instruments: Optional[Sequence[int]] = None
  memory_check: str = "refuse"  # The sampler's memory pre-flight: "refuse" | "warn" | "off".
  memory_limit_mib: int = 0  # Plan for at most this much memory (0: all that is free).
  # Beyond continuation (a version-2+ token model, trained with data.*_rate > 0):
  # Seconds [start, end) of prompt_notes to redo: its notes starting then are regenerated, and
  # the new music runs until the kept music after it resumes (its first onset from `end`).
  infill: Optional[tuple[float, float]] = None
  # False: the span's notes end where their voice's kept music resumes; True: they may
  # sound on into it (ties over the seam, and the pile-ups a model writes there).
  infill_ties: bool = False
  keep_instruments: Optional[Sequence[int]] = None  # Keep these parts of prompt_notes exactly
  keep_melody: bool = False  # ... or its melody (top line); generate the rest around them.
  attributes: Optional[dict] = None  # Bins: density, polyphony, pitch_range (+ instruments).

  def __post_init__(self):
    """Counts and limits that cannot mean anything are a SampleError naming the flag (the
    sampling knobs are checked by sampling.SampleOptions)."""
    bad = [f"--{flag} must be {what}, got {value}" for flag, value, ok, what in (
        ("num_samples", self.num_samples, self.num_samples >= 1, ">= 1"),
        ("num_samples", self.num_samples, self.num_samples <= 4096, "at most 4096"),
        ("max_tokens", self.max_tokens, self.max_tokens is None or self.max_tokens >= 1, ">= 1"),
        ("max_tokens", self.max_tokens, self.max_tokens is None or self.max_tokens <= MAX_TOKENS,
         f"at most {MAX_TOKENS} (the sampler's limit)"),
        ("max_notes", self.max_notes, self.max_notes is None or self.max_notes >= 1, ">= 1"),
        ("max_notes", self.max_notes, self.max_notes is None or self.max_notes <= MAX_TOKENS,
         f"at most {MAX_TOKENS}"),
        ("max_seconds", self.max_seconds,
         self.max_seconds is None or 0 < self.max_seconds < float("inf"), "> 0"),
    ) if not ok]
    if bad:
      raise SampleError("; ".join(bad))
    check_knobs(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                seed=self.seed)
    if self.instruments is not None:
      self.instruments = parse_instruments(self.instruments)
    if self.keep_instruments is not None:
      self.keep_instruments = parse_instruments(self.keep_instruments, "--keep_instruments")
    modes = [m for m, on in (("--infill", self.infill is not None),
                             ("--keep_instruments", self.keep_instruments is not None),
                             ("--keep_melody", self.keep_melody)) if on]
    if len(modes) > 1:
      raise SampleError(f"give one of {', '.join(modes)}, not several")
    if modes and (self.prompt_notes is None or not len(self.prompt_notes)):
      raise SampleError(f"{modes[0]} works on a piece: give it with --prompt_midi")
    if self.infill is not None:
      a, b = (float(x) for x in self.infill)
      if not 0 <= a < b < float("inf"):
        raise SampleError(f"--infill=START_S:END_S needs 0 <= START_S < END_S, got {a:g}:{b:g}")
      self.infill = (a, b)
    elif self.infill_ties:
      raise SampleError("--infill_ties applies to --infill only")


@dataclasses.dataclass
class Sample:
  """One generated piece: all its notes (prompt included), its ids/text and statistics."""

  notes: encoding.Notes
  ids: np.ndarray  # prompt + generated ids
  prompt_len: int
  new_tokens: int
  new_notes: int
  text: Optional[str] = None  # char models
  tokens_per_s: float = 0.0
  stopped: str = ""  # Why generation stopped: "EOS", "notes", "seconds" or "tokens" (+ detail).


def build_prompt(run: Run, request: SampleRequest) -> tuple[np.ndarray, int, np.ndarray]:
  """(prompt ids, grammar state after them, boundary flags) for a request."""
  if run.kind == "token":
    if request.prompt_text is not None:
      raise SampleError(f"--prompt_text is for char models; {run.workdir} holds a token model "
                        f"(data.encoding={run.kind!r}); use --prompt_midi")
    notes = request.prompt_notes
    if notes is None or not len(notes):
      ids = np.array([run.codec.bos_id], np.int32)
    else:
      ids = run.codec.encode(notes, add_eos=False).astype(np.int32)
    body = ids[1:]
    state, flags = run.tables.walk(body)
    return ids, state, np.concatenate([[True], flags])
  if request.instruments:
    raise SampleError("--instruments needs a token model (char ids are shared by every field)")
  text = request.prompt_text
  if request.prompt_notes is not None and len(request.prompt_notes):
    text = run.codec.encode(request.prompt_notes, name="Self-Continuation")
  if text is None:
    text = length_hint(request.max_notes) if request.max_notes else "SONG=Composition\n"
  if text.split("\n")[-1].startswith("SONG="):
    text += "\n"  # A title line the user wrote is complete; the model starts with notes.
  try:
    state, flags = run.codec.prompt_state(text)
  except (ValueError, KeyError) as e:
    raise SampleError(f"char prompt {text[:60]!r} cannot be encoded: {e}") from e
  return run.codec.text_to_ids(text).astype(np.int32), state, flags


@dataclasses.dataclass
class ControlPlan:
  """A request beyond continuation, ready for the sampler: the prompt ids, the control notes to
  force (sampling.Controls fields), the generated span's length, and the given notes kept."""
  ids: np.ndarray
  controls: dict
  max_units: Optional[int]  # Units from the prompt's end to stop at (None: the request's).
  kept: encoding.Notes  # The notes given and kept exactly (outside what is generated).
  window: tuple[int, int]  # Grid units [lo, hi): generated events kept only in here.

  def finish(self, events: encoding.Notes) -> encoding.Notes:
    """The piece: the kept notes exactly, plus the generated events inside the window."""
    inside = (events.onset >= self.window[0]) & (events.onset < self.window[1])
    return encoding.Notes.concatenate([self.kept, events[inside]]).canonical()


def plan_controls(run: Run, request: SampleRequest) -> Optional[ControlPlan]:
  """The ControlPlan of an infill / accompaniment / attribute request (None: plain
  continuation). SampleError when the model cannot do it (a char or version-1 model)."""
  asked = [name for name, on in (
      ("--infill", request.infill is not None),
      ("--keep_instruments", request.keep_instruments is not None),
      ("--keep_melody", request.keep_melody),
      ("attributes (--density, --polyphony, --pitch_range)", bool(request.attributes))) if on]
  if not asked:
    return None
  codec = run.codec
  if run.kind == "char":
    raise SampleError(f"{asked[0]}: {run.workdir} holds a char model, which only continues; "
                      "infilling, accompaniment and attributes need a token model trained "
                      "with them (configs/rga.py:control)")
  if getattr(codec, "version", 1) < 2:
    raise SampleError(f"{asked[0]}: {run.workdir} was trained for continuation only (token "
                      "codec version 1); train with data.infill_rate / accompany_rate / "
                      "attribute_rate > 0, e.g. configs/rga.py:control")
  from virtuoso_jax import tasks  # pylint: disable=g-import-not-at-top
  attrs = dict(request.attributes or {})
  try:
    codec.attribute_ids(attrs)
  except ValueError as e:
    raise SampleError(f"attributes: {e}") from e
  notes = request.prompt_notes
  notes = codec.quantize(notes) if notes is not None and len(notes) else None
  empty = encoding.Notes.empty()
  grid = run.enc_config.grid_ms
  if request.infill is not None:
    start, end = (int(round(x * 1000.0 / grid)) for x in request.infill)
    history, rest = tasks.split_at(notes, end)
    before = history.onset < start
    # The span's own notes (history[~before]) are what is redone.
    prefix = history[before]
    task = codec.task_attribute("infill")
    ids, is_ctl = codec.encode_controlled(prefix, rest, {**attrs, **task}, add_eos=False,
                                          trailing_controls=False, infill=True)
    used = int(is_ctl.sum()) // codec.tokens_per_note
    t_last = int(prefix.onset.max()) if len(prefix) else 0
    later = rest.canonical()[used:]
    kept = encoding.Notes.concatenate([prefix, rest])
    # The span's notes end where their voice's kept music resumes (`resume`).
    resume = None if request.infill_ties else rest
    # The new music runs until the kept music resumes, its first onset at or after `end`: no
    # kept note starts before it, and a model trained on spans cut at any time learned a span
    # whose last onset is the one before the first control; stopped at `end` instead, it lost
    # the chords it placed in between (a gap at the seam where the source held a chord over).
    until = int(rest.onset.min()) if len(rest) else end
    return ControlPlan(ids.astype(np.int32),
                       codec.control_arrays(later, t_last, infill=True, resume=resume),
                       max(1, until - t_last), kept, (start, until))
  if request.keep_instruments is not None or request.keep_melody:
    if request.keep_melody:
      given = notes[tasks.melody(notes)]
    else:
      given = tasks.split_instruments(notes, request.keep_instruments)[1]
    if not len(given):
      raise SampleError("nothing to accompany: the prompt has no notes of the kept part "
                        f"({'the melody' if request.keep_melody else request.keep_instruments})")
    task = codec.task_attribute("accompany_melody" if request.keep_melody else "accompany_parts")
    ids, _ = codec.encode_controlled(empty, None, {**attrs, **task}, add_eos=False)
    end = int((given.onset + given.duration).max())
    return ControlPlan(ids.astype(np.int32), codec.control_arrays(given, 0), end, given,
                       (0, end))
  # Attributes only: continue the prompt (or start) under them.
  ids, _ = codec.encode_controlled(notes if notes is not None else empty, None, attrs,
                                   add_eos=False)
  return ControlPlan(ids.astype(np.int32), codec.control_arrays(empty, 0), None, empty,
                     (0, np.iinfo(np.int32).max))


def _length_units(codec) -> tuple[int, int, int]:
  """(ids per note, ids per wait, grid units one wait covers) of a codec."""
  if isinstance(codec, encoding.TokenCodec):
    return int(codec.tokens_per_note), 1, int(codec.wait_units)
  return int(codec.num_fields) + 1, 2, int(codec.max_value)  # Lines end with "\n".


def token_budget(codec, request: SampleRequest) -> tuple[int, str]:
  """(tokens per sample, why): the generation buffer a request needs.

  A length asked for is honoured: `max_notes` N and `max_seconds` S size the budget so that
  they, not the buffer, stop generation. Generation stops at N notes or S seconds, whichever
  first, so with both it never needs more than N notes plus the waits of S seconds; notes alone
  get one wait per note; seconds alone one note per grid step (the codec's time resolution)
  plus the waits of S seconds. An explicit `max_tokens` below that is refused with the reason;
  without N or S it is the length (default DEFAULT_MAX_TOKENS).
  """
  if not request.max_notes and not request.max_seconds:
    n = request.max_tokens or DEFAULT_MAX_TOKENS
    return n, f"{n} tokens"
  per_note, per_wait, wait_units = _length_units(codec)
  grid_ms = codec.config.grid_ms
  units = None
  if request.max_seconds:
    units = max(1, int(np.ceil(min(request.max_seconds * 1000.0 / grid_ms, 1e15))))
  notes = request.max_notes or units
  waits = (units // wait_units + 1) if units else notes
  need = notes * per_note + waits * per_wait
  asked = " and ".join(x for x in (
      f"--max_notes={request.max_notes}" if request.max_notes else "",
      f"--max_seconds={request.max_seconds:g}" if request.max_seconds else "") if x)
  how = (f"{notes} notes x {per_note} + {waits} waits x {per_wait}" if request.max_notes else
         f"{units} grid steps of {grid_ms:g} ms at up to one note each: "
         f"{notes} x {per_note} + {waits} waits x {per_wait}")
  if need > MAX_TOKENS:
    raise SampleError(f"{asked} can need up to {need:,} tokens per sample ({how}), more than "
                      f"the sampler's limit of {MAX_TOKENS:,}; ask for less")
  if request.max_tokens is not None and request.max_tokens < need:
    raise SampleError(f"--max_tokens={request.max_tokens} is too small for {asked}: that can "
                      f"take up to {need} tokens ({how}); raise --max_tokens or leave it out "
                      "(the budget is then sized to fit)")
  n = request.max_tokens or need
  return n, f"{n} tokens, sized for {asked}"


def generate(run: Run, request: SampleRequest, *, cached: bool = True) -> list[Sample]:
  """Generates `request.num_samples` pieces in one compiled loop; returns them decoded, each
  with the reason it stopped (`Sample.stopped`)."""
  from virtuoso_jax import sampling  # pylint: disable=g-import-not-at-top
  max_tokens, _ = token_budget(run.codec, request)
  max_units = None
  if request.max_seconds:
    max_units = max(1, int(round(request.max_seconds * 1000.0 / run.enc_config.grid_ms)))
  plan = plan_controls(run, request)
  if plan is None:
    ids, state, flags = build_prompt(run, request)
    controls = None
  else:
    ids, controls = plan.ids, sampling.Controls(**plan.controls)
    state, flags = run.tables.walk(ids[1:])
    flags = np.concatenate([[True], flags])
    if plan.max_units is not None:
      max_units = plan.max_units if max_units is None else min(max_units, plan.max_units)
      # Room for the forced controls and the WAITs that carry time through the span.
      max_tokens += len(plan.controls["onset"]) * run.codec.tokens_per_note + (
          plan.max_units // run.codec.wait_units + 1)
  allowed = None
  if request.instruments:
    try:
      allowed = run.codec.instrument_mask(list(request.instruments))
    except ValueError as e:
      raise SampleError(f"--instruments: {e}") from e
  if getattr(run.codec, "version", 1) >= 2:
    mask = run.codec.generation_mask()
    allowed = mask if allowed is None else allowed & mask
  try:
    options = sampling.SampleOptions(request.temperature, int(request.top_k),
                                     float(request.top_p))
  except ValueError as e:
    raise SampleError(str(e)) from e
  t = time.perf_counter()
  res = sampling.generate(run.model, ids, run.tables, options, seed=request.seed,
                          num_samples=request.num_samples, max_new_tokens=max_tokens,
                          max_notes=request.max_notes, max_units=max_units, allowed_ids=allowed,
                          prompt_state=state, prompt_boundaries=flags, context=run.context,
                          cached=cached, memory_check=request.memory_check,
                          memory_limit_mib=request.memory_limit_mib, controls=controls)
  seconds = time.perf_counter() - t
  tps = float(res.lengths.sum()) / max(seconds, 1e-9)
  out = []
  for b in range(request.num_samples):
    raw = res.tokens[b, :res.lengths[b]]
    if run.tables.eos_id >= 0 and len(raw) and raw[-1] == run.tables.eos_id:
      stopped = "EOS"
    elif request.max_notes and res.notes[b] >= request.max_notes:
      stopped = f"notes ({request.max_notes} reached)"
    elif max_units is not None and res.units[b] >= max_units:
      stopped = (f"seconds ({request.max_seconds:g} s reached)" if plan is None
                 else "the end of what was asked")
    else:
      stopped = f"tokens (all {max_tokens} used)"
    gen = sampling.drop_partial_note(raw, run.tables, state)
    if max_units is not None:
      gen = sampling.trim_to_units(gen, run.tables, max_units, state)
    full = np.concatenate([ids, gen]).astype(np.int32)
    text = None
    if run.kind == "char":
      text = run.codec.ids_to_text(full)
      notes = run.codec.decode(text)
    elif plan is not None:
      notes = plan.finish(run.codec.decode_parts(full)[0])
    else:
      notes = run.codec.decode(full)
    out.append(Sample(notes, full, len(ids), len(gen), int(res.notes[b]), text, tps, stopped))
  return out


# ---------------------------------------------------------------------------- outputs


def summarize(notes: encoding.Notes, enc_config: encoding.EncodingConfig) -> str:
  """'N notes, S s, instruments: name (id) xK, ...'."""
  d = encoding.describe(notes, enc_config)
  top = sorted(d["instruments"], key=lambda i: -i["notes"])
  insts = ", ".join(f"{i['name']} ({i['instrument']}) x{i['notes']}" for i in top[:6])
  if len(top) > 6:
    insts += f", +{len(top) - 6} more"
  return f"{d['notes']} notes, {d['seconds']:.1f} s, instruments: {insts or 'none'}"


def write_piece(notes: encoding.Notes, enc_config: encoding.EncodingConfig, stem: str, *,
                text: Optional[str] = None, sf2: Optional[str] = None, audio: bool = True,
                title: str = "") -> list[str]:
  """Writes stem.mid, stem.png (+ stem.txt, + stem.wav); returns the paths written and prints
  the audio skip reason if any."""
  from virtuoso_jax import render  # pylint: disable=g-import-not-at-top
  written = []
  if text is not None:
    paths.write_text(stem + ".txt", text)
    written.append(stem + ".txt")
  encoding.notes_to_midi(notes, stem + ".mid", config=enc_config)
  written.append(stem + ".mid")
  written.append(render.piano_roll(notes, stem + ".png", config=enc_config,
                                   title=title or paths.name(stem)))
  if audio:
    ok, message = render.midi_to_wav(stem + ".mid", stem + ".wav", sf2=sf2)
    if ok:
      written.append(stem + ".wav")
    else:
      print(message, flush=True)
  return written


def write_outputs(run: Run, samples: Sequence[Sample], out_dir: str, *,
                  sf2: Optional[str] = None, audio: bool = True, prefix: str = "sample") -> list[str]:
  """Writes every sample to `out_dir` (local or remote, see virtuoso_jax.paths) and prints a
  one-line summary per sample; returns the paths."""
  paths.makedirs(out_dir)
  written = []
  for i, s in enumerate(samples):
    stem = paths.join(out_dir, f"{prefix}_{i:02d}")
    piece = write_piece(s.notes, run.enc_config, stem, text=s.text, sf2=sf2, audio=audio,
                        title=f"{paths.name(run.workdir)} step {run.step}: {prefix} {i}")
    written += piece
    print(f"{paths.name(stem)}: {summarize(s.notes, run.enc_config)}; {s.new_tokens} new "
          f"tokens, {s.new_notes} new notes, stopped: {s.stopped or 'unknown'} "
          f"({s.tokens_per_s:.0f} tokens/s over the batch, compilation included) -> "
          f"{', '.join(piece)}", flush=True)
    audio = audio and piece[-1].endswith(".wav")  # Say "skipping audio" once.
  return written


def write_config_sample(workdir: str, out_dir: str, *, audio: bool = False,
                        run: Optional[Run] = None, why: str = "config.sample.write_at_end"
                        ) -> list[str]:
  """Samples a run as its config.sample says (number, length, temperature, top-k, top-p;
  seed 0) and writes the pieces to `out_dir`; returns the paths written. `run`: an in-memory
  model (the trainer's sample action); default the latest checkpoint of `workdir`."""
  run = run or load_run(workdir)
  s = run.config.sample
  request = SampleRequest(num_samples=s.num_samples, seed=0, temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, max_tokens=s.max_new_tokens)
  print(f"Writing {s.num_samples} sample(s) of up to {s.max_new_tokens} tokens to {out_dir} "
        f"({why})", flush=True)
  return write_outputs(run, generate(run, request), out_dir, audio=audio)
