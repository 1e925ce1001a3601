r"""Samples music from a trained run: MIDI, piano-roll PNG, TXT (char models), WAV (FluidSynth).

  python -m virtuoso_jax.sample --workdir=runs/quickstart            # -> runs/quickstart/samples
  python -m virtuoso_jax.sample --workdir=runs/rga --out=out --num_samples=4 --seed=1 \
      --temperature=0.9 --top_p=0.95 --max_seconds=30
  python -m virtuoso_jax.sample --workdir=runs/rga --prompt_midi=song.mid --prompt_notes=64 \
      --instruments=0,40,128 --max_notes=200
  python -m virtuoso_jax.sample --workdir=runs/char --prompt_text='SONG=Relax_with_300_notes'

It restores the model parameters only (the latest checkpoint, or `--checkpoint=best` / a step),
rebuilds the model from <workdir>/config.json and the codec from the dataset's encoding (cached
in <workdir>/encoding.json after the first use), and writes <out>/sample_XX.{mid,png} (+ .txt
for char models, + .wav when FluidSynth is installed). Generation is one compiled loop over a
KV cache (virtuoso_jax.sampling); every sample follows the codec's grammar, so it decodes.

Library use (compose.py, the trainer's end-of-run sample):
  run = sample.load_run(workdir)
  results = sample.generate(run, SampleRequest(num_samples=2, max_notes=100))
  sample.write_outputs(run, results, out_dir)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from virtuoso_jax import config_lib
from virtuoso_jax import encoding

ENCODING_FILE = "encoding.json"
SEED_MAX = 2**32 - 1  # Seeds are uint32 (what every PRNG here and in numpy takes).
MAX_TOKENS = 1_000_000  # Per sample: the sampler's history buffer is [samples, prompt + this].
DEFAULT_MAX_TOKENS = 1024  # No length asked for at all (the library's default).


class SampleError(ValueError):
  """A bad sampling request: missing workdir/checkpoint, unreadable prompt, config mismatch."""


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
  kind: str  # "token" | "char"
  codec: Any  # TokenCodec | CharCodec
  model: Any  # virtuoso_jax.models decoder
  step: int
  tables: Any  # sampling.GrammarTables

  @property
  def enc_config(self) -> encoding.EncodingConfig:
    return self.codec.config

  @property
  def context(self) -> int:
    return int(self.config.model.max_len)


def _load_codec(workdir: str, config, kind: str):
  """The codec from <workdir>/encoding.json, else from the dataset (then cached there)."""
  path = os.path.join(workdir, ENCODING_FILE)
  if os.path.isfile(path):
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
      enc = encoding.EncodingConfig.from_dict(saved["encoding"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise SampleError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to rebuild "
                        "it from the dataset") from e
    if saved.get("kind", kind) != kind:
      raise SampleError(f"{path} is for a {saved.get('kind')} codec but {workdir}/config.json "
                        f"trains a {kind} model (data.tfds_config={config.data.tfds_config})")
    return encoding.CharCodec(enc) if kind == "char" else encoding.TokenCodec(enc)
  from virtuoso_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not input_pipeline.is_prepared(config):
    raise SampleError(
        f"{workdir} has no {ENCODING_FILE} and its dataset {input_pipeline.dataset_name(config)} "
        f"is not in {input_pipeline.data_dir(config)}, so the codec cannot be rebuilt; prepare it "
        f"with: {' '.join(input_pipeline.prepare_command(config))}")
  codec = input_pipeline.load_codec(config)
  try:
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"kind": kind, "encoding": codec.config.to_dict(),
                 "dataset": input_pipeline.dataset_name(config)}, f, indent=2, sort_keys=True)
  except OSError:  # A read-only workdir still samples; it just is not cached.
    pass
  return codec


def load_codec(workdir: str):
  """(config, kind, codec) of a training run, without JAX, a model or a checkpoint (what
  compose's accept/undo/show/export and prompt reading need).

  config.json is validated with config_lib.validate first: a hand-edited config is a
  SampleError naming the file and the field before anything else is touched."""
  from virtuoso_jax import config_lib  # pylint: disable=g-import-not-at-top  (no jax)
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise SampleError(f"workdir {workdir} does not exist (train first: python -m "
                      f"virtuoso_jax.main --config=configs/rga.py:tiny --workdir={workdir})")
  cfg_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(cfg_path):
    raise SampleError(f"{cfg_path} not found: {workdir} is not a training workdir")
  try:
    config = _with_schema_defaults(config_lib.from_json_file(cfg_path))
    config_lib.validate(config)
    kind = config_lib.encoding_kind(config)
    if not (isinstance(config.model.vocab_size, int) and config.model.vocab_size > 0):
      raise ValueError(f"model.vocab_size={config.model.vocab_size!r} (a trained run's is > 0)")
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise SampleError(f"{cfg_path} is not a valid virtuoso_jax run config: "
                      f"{e if isinstance(e, config_lib.ConfigError) else f'{type(e).__name__}: {e}'}"
                      ) from e
  codec = _load_codec(workdir, config, kind)
  if config.model.vocab_size < codec.vocab_size:
    raise SampleError(f"{cfg_path}: model.vocab_size={config.model.vocab_size} is smaller than "
                      f"the codec's vocabulary ({codec.vocab_size}); the config does not belong "
                      "to this dataset")
  return config, kind, codec


def _with_schema_defaults(config):
  """A run's config.json over today's schema (configs/default.py): a field added to the schema
  after the run was trained takes its default, so older runs still validate and sample."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import config_lib  # pylint: disable=g-import-not-at-top
  default_file = config_lib.REPO_ROOT / "configs" / "default.py"
  if not default_file.is_file():
    return config
  merged = config_lib.load_config(str(default_file)).to_dict()

  def overlay(base, top):
    for k, v in top.items():
      if isinstance(v, dict) and isinstance(base.get(k), dict):
        overlay(base[k], v)
      else:
        base[k] = v

  overlay(merged, config.to_dict())
  return ml_collections.ConfigDict(merged)


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
  from virtuoso_jax import checkpointing, config_lib, models, sampling  # pylint: disable=g-import-not-at-top

  workdir = os.path.abspath(workdir)
  cfg_path = os.path.join(workdir, "config.json")
  config, kind, codec = load_codec(workdir)
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
  return Run(workdir, config, kind, codec, model, int(step), sampling.grammar_tables(codec))


# ---------------------------------------------------------------------------- prompts


def read_prompt_midi(path: str, enc_config: encoding.EncodingConfig, *, last_notes: int = 0,
                     last_seconds: float = 0.0) -> encoding.Notes:
  """The last `last_notes` notes (or those starting in the last `last_seconds` seconds; 0: all)
  of a MIDI file, shifted to start at 0. Raises SampleError naming the file and the reason."""
  if last_notes < 0 or last_seconds < 0:
    raise SampleError("--prompt_notes and --prompt_seconds must be >= 0")
  if not os.path.isfile(path):
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
                        f"(data.tfds_config={run.config.data.tfds_config}); use --prompt_midi")
    notes = request.prompt_notes
    if notes is None or not len(notes):
      ids = np.array([run.codec.bos_id], np.int32)
    else:
      ids = run.codec.encode(notes, add_eos=False).astype(np.int32)
    body = ids[1:]
    state, flags = run.tables.walk(body)
    return ids, state, np.concatenate([[True], flags])
  from virtuoso_jax import sampling  # pylint: disable=g-import-not-at-top
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
    state, flags = sampling.char_prompt_state(run.tables, text, run.codec)
  except (ValueError, KeyError) as e:
    raise SampleError(f"char prompt {text[:60]!r} cannot be encoded: {e}") from e
  return run.codec.text_to_ids(text).astype(np.int32), state, flags


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
  ids, state, flags = build_prompt(run, request)
  allowed = None
  if request.instruments:
    try:
      allowed = run.codec.instrument_mask(list(request.instruments))
    except ValueError as e:
      raise SampleError(f"--instruments: {e}") from e
  max_units = None
  if request.max_seconds:
    max_units = max(1, int(round(request.max_seconds * 1000.0 / run.enc_config.grid_ms)))
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
                          memory_limit_mib=request.memory_limit_mib)
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
      stopped = f"seconds ({request.max_seconds:g} s reached)"
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
  paths = []
  if text is not None:
    with open(stem + ".txt", "w", encoding="utf-8") as f:
      f.write(text)
    paths.append(stem + ".txt")
  encoding.notes_to_midi(notes, stem + ".mid", config=enc_config)
  paths.append(stem + ".mid")
  paths.append(render.piano_roll(notes, stem + ".png", config=enc_config,
                                 title=title or os.path.basename(stem)))
  if audio:
    ok, message = render.midi_to_wav(stem + ".mid", stem + ".wav", sf2=sf2)
    if ok:
      paths.append(stem + ".wav")
    else:
      print(message, flush=True)
  return paths


def write_outputs(run: Run, samples: Sequence[Sample], out_dir: str, *,
                  sf2: Optional[str] = None, audio: bool = True, prefix: str = "sample") -> list[str]:
  """Writes every sample and prints a one-line summary per sample; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for i, s in enumerate(samples):
    stem = os.path.join(out_dir, f"{prefix}_{i:02d}")
    paths = write_piece(s.notes, run.enc_config, stem, text=s.text, sf2=sf2, audio=audio,
                        title=f"{os.path.basename(run.workdir)} step {run.step}: {prefix} {i}")
    written += paths
    print(f"{os.path.basename(stem)}: {summarize(s.notes, run.enc_config)}; {s.new_tokens} new "
          f"tokens, {s.new_notes} new notes, stopped: {s.stopped or 'unknown'} "
          f"({s.tokens_per_s:.0f} tokens/s over the batch, compilation included) -> "
          f"{', '.join(paths)}", flush=True)
    audio = audio and paths[-1].endswith(".wav")  # Say "skipping audio" once.
  return written


def write_config_sample(workdir: str, out_dir: str, *, audio: bool = False) -> list[str]:
  """Samples the run in `workdir` (its latest checkpoint) as its config.sample says (number,
  length, temperature, top-k, top-p; seed 0) and writes the pieces to `out_dir`: what
  `config.sample.write_at_end` asks of the training binary. Returns the paths written."""
  run = load_run(workdir)
  s = run.config.sample
  request = SampleRequest(num_samples=s.num_samples, seed=0, temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, max_tokens=s.max_new_tokens)
  print(f"Writing {s.num_samples} sample(s) of up to {s.max_new_tokens} tokens to {out_dir} "
        "(config.sample.write_at_end)", flush=True)
  return write_outputs(run, generate(run, request), out_dir, audio=audio)


# ---------------------------------------------------------------------------- the binary


def _flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags
  f.DEFINE_string("workdir", None, "Training run directory (config.json, checkpoints/).")
  f.DEFINE_string("out", None, "Output folder (default <workdir>/samples).")
  f.DEFINE_string("checkpoint", "latest", "latest | best | a step number.")
  f.DEFINE_integer("num_samples", None, "Samples generated together (default config.sample).")
  f.DEFINE_integer("seed", 0, "PRNG seed.")
  f.DEFINE_float("temperature", None, "0 = greedy (default config.sample.temperature).")
  f.DEFINE_integer("top_k", None, "0 = off (default config.sample.top_k).")
  f.DEFINE_float("top_p", None, "1.0 = off (default config.sample.top_p).")
  f.DEFINE_integer("max_tokens", None, "New tokens per sample (default config.sample.max_new_tokens).")
  f.DEFINE_integer("max_notes", None, "Stop after this many new notes.")
  f.DEFINE_float("max_seconds", None, "Stop after this many seconds of new music.")
  f.DEFINE_string("prompt_midi", None, "Continue this MIDI file.")
  f.DEFINE_integer("prompt_notes", 0, "Use the prompt's last N notes (0 = all).")
  f.DEFINE_float("prompt_seconds", 0.0, "Use the notes of the prompt's last S seconds.")
  f.DEFINE_string("prompt_text", None, "Char models: a TXT prompt, e.g. 'SONG=Relax_with_300_notes'.")
  f.DEFINE_list("instruments", None, "Restrict generated instruments (GM programs, 128 = drums).")
  f.DEFINE_string("sf2", None, "Soundfont for the WAV (default: pretty_midi's GM soundfont).")
  f.DEFINE_bool("audio", True, "Write a WAV when FluidSynth is installed.")
  f.DEFINE_enum("memory_check", "refuse", ["refuse", "warn", "off"],
                "Memory pre-flight of the compiled sampler (KV caches): refuse a batch that "
                "cannot fit, naming one that does; warn; or off.")
  f.DEFINE_integer("memory_limit_mib", 0, "Plan for at most this much memory (0 = all free).")
  return flags.FLAGS


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.quiet_library_logs()  # Orbax's INFO chatter; our lines are printed.
  del app
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
  f = FLAGS
  try:
    if not f.workdir:
      raise SampleError("--workdir is required (the training run to sample from)")
    # Everything the flags alone decide is checked before the model loads (seconds).
    check_knobs(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed)
    instruments = parse_instruments(f.instruments)
    pick = lambda flag, default: default if flag is None else flag
    lengths = SampleRequest(num_samples=pick(f.num_samples, 1), max_tokens=f.max_tokens,
                            max_notes=f.max_notes, max_seconds=f.max_seconds,
                            instruments=instruments)
    if f.prompt_notes < 0 or f.prompt_seconds < 0:
      raise SampleError("--prompt_notes and --prompt_seconds must be >= 0")
    if f.prompt_midi and f.prompt_text is not None:
      raise SampleError("give --prompt_midi or --prompt_text, not both")
    if f.prompt_midi and not os.path.isfile(f.prompt_midi):
      raise SampleError(f"prompt MIDI {f.prompt_midi} does not exist")
    # The codec alone (no JAX) reads the prompt, so a bad prompt never waits for the model.
    _, _, codec = load_codec(f.workdir)
    prompt_notes = None
    if f.prompt_midi:
      prompt_notes = read_prompt_midi(f.prompt_midi, codec.config, last_notes=f.prompt_notes,
                                      last_seconds=f.prompt_seconds)
    token_budget(codec, lengths)  # A length that cannot be honoured is refused here.
    run = load_run(f.workdir, f.checkpoint)
    s = run.config.sample
    # Without a length flag the config's max_new_tokens is the length; with one, the budget is
    # sized to fit it (an explicit --max_tokens too small for it is refused).
    max_tokens = f.max_tokens
    if max_tokens is None and not f.max_notes and not f.max_seconds:
      max_tokens = s.max_new_tokens
    request = SampleRequest(
        num_samples=lengths.num_samples if f.num_samples is not None else s.num_samples,
        seed=f.seed, temperature=pick(f.temperature, s.temperature), top_k=pick(f.top_k, s.top_k),
        top_p=pick(f.top_p, s.top_p), max_tokens=max_tokens,
        max_notes=f.max_notes, max_seconds=f.max_seconds, prompt_notes=prompt_notes,
        prompt_text=f.prompt_text, instruments=instruments, memory_check=f.memory_check,
        memory_limit_mib=f.memory_limit_mib)
    _, why = token_budget(run.codec, request)
    out = f.out or os.path.join(run.workdir, "samples")
    print(f"Sampling {request.num_samples} x up to {why} from "
          f"{run.workdir} ({run.config.model.name}, {run.kind} codec, step {run.step}); "
          f"temperature {request.temperature}, top_k {request.top_k}, top_p {request.top_p}, "
          f"seed {request.seed}", flush=True)
    if prompt_notes is not None:
      print(f"Prompt: {f.prompt_midi}: {summarize(prompt_notes, run.enc_config)}", flush=True)
    samples = generate(run, request)
    write_outputs(run, samples, out, sf2=f.sf2, audio=f.audio)
  except (SampleError, FileNotFoundError, config_lib.ConfigError) as e:  # (memory pre-flight too)
    raise SystemExit(f"error: {e}") from None
  print(f"Wrote {len(samples)} sample(s) to {out}", flush=True)


FLAGS = None


def run():
  """Console-script entry point (`virtuoso-sample`); `python -m` runs the same."""
  global FLAGS
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # Before JAX starts: this process's CPU settings.
  from absl import app  # pylint: disable=g-import-not-at-top
  FLAGS = _flags()
  app.run(main)


if __name__ == "__main__":
  run()
