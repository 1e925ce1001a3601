"""Grammar-constrained, KV-cached sampling in one compiled loop (jittable; no absl, no I/O).

  tables = codec.grammar()                         # TokenCodec or CharCodec: an encoding.Grammar
  result = sampling.generate(model, prompt_ids, tables, SampleOptions(...), seed=0,
                             num_samples=4, max_new_tokens=1024)
  result.tokens   # int32 [B, max_new_tokens] generated ids (PAD after a row stops)
  result.lengths  # int32 [B] generated ids per row (EOS included)

How it works:
- One compiled program per request over a batch of rows: an outer `jax.lax.while_loop` over
  context windows around an inner one over tokens. Each inner iteration samples one id per
  row from the logits of the previous one and feeds it through `model.decode` (one [B, 1]
  step over the KV cache); the window slide (below) happens between inner loops, so the
  per-token loop holds no conditional. No per-token Python dispatch.
- Grammar: the codec's `encoding.Grammar` holds its automaton (`allowed[S, V]`,
  `next_state[S, V]`), `completes_note[S, V]` (emitting the id ends a note) and
  `advance[S, V]` (grid units the id moves time forward). Every row keeps its state; logits of
  illegal ids are masked before temperature / top-k / top-p, so only legal ids are ever drawn
  and every sample decodes. Instrument restriction is one more bool[V] mask.
- Stops per row: EOS; `max_new_tokens` (the static buffer); `max_notes` notes; `max_units` grid
  units of generated time (checked at note boundaries; `trim_to_units` cuts the one note that
  may start past the limit on the host).
- Beyond the context: the cache holds `context` (= the model's max_len) tokens. When a row's
  window is full, every row's window is rebuilt from its token history: the most recent
  `keep` tokens, cut at the first note boundary inside them, are re-prefilled at positions
  0.. (the layout of a training window), and sampling continues.
- `cached=False` runs the same loop with a full forward pass over the current window at every
  step instead of the cache (the reference the tests compare against; same PRNG stream:
  the key of step i is fold_in(key, i)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from virtuoso_jax import preflight
from virtuoso_jax.encoding.grammar import Grammar

_NEG = -1e30  # Finite "minus infinity" for masked logits (exp() = 0, no inf - inf).
NO_LIMIT = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------- logits -> ids


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """Sampling knobs. temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
      raise ValueError(f"top_k must be an int >= 0, got {self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: jax.Array, allowed: jax.Array, options: SampleOptions) -> jax.Array:
  """Masks illegal ids, then applies temperature, top-k and top-p. float32 [B, V] -> [B, V].

  Masked entries are -1e30. At least one legal id per row is required (the grammar ensures it).
  top-k and top-p only ever remove legal ids, never all of them.
  """
  x = jnp.where(allowed, logits.astype(jnp.float32), _NEG)
  if options.temperature > 0:
    x = jnp.where(allowed, x / options.temperature, _NEG)
  v = x.shape[-1]
  if 0 < options.top_k < v:
    kth = jax.lax.top_k(x, options.top_k)[0][..., -1:]
    x = jnp.where(x >= kth, x, _NEG)
  if options.top_p < 1.0:
    srt = jnp.sort(x, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Mass of the strictly larger ids.
    keep = before < options.top_p  # The first (largest) is always kept.
    thr = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x >= thr, x, _NEG)
  return x


def sample_ids(key, logits: jax.Array, allowed: jax.Array, options: SampleOptions) -> jax.Array:
  """One id per row: argmax (temperature 0) or a draw from the filtered distribution."""
  x = filter_logits(logits, allowed, options)
  if options.temperature == 0:
    return jnp.argmax(x, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class Controls:
  """Control notes the sampler forces (token codec version 2; `TokenCodec.control_arrays`).

  Attributes:
    onset: int [C] each control's onset in grid units from where generation starts, ascending.
    fields: int [C, T-1] each control group's ids after its control-time id.
    entry_states: bool [S] grammar states where a control group may start.
    time_lo, time_size: the control-time id range (id = time_lo + offset).
    anticipation: units before its onset that a control enters.
    release: optional int [I * 128]: per instrument and pitch (instrument * 128 + pitch), the
      units (from where generation starts) by which a generated note of them must end
      (NO_LIMIT: none); the sampler cuts a longer duration drawn to end then (an infilled
      span's notes end where their voice's kept music resumes;
      `TokenCodec.control_arrays(resume=...)`).
    instrument_of, pitch_of, duration_of: int [V] with `release`: the instrument and the pitch
      an id names (-1: none) and the duration it carries (0: none),
      `TokenCodec.event_field_tables`.
    duration_step: with `release`: ids between a duration id and the one a unit shorter with
      the same other fields (`TokenCodec.duration_step`); a drawn duration past the bound is
      cut to it.
  """

  onset: np.ndarray
  fields: np.ndarray
  entry_states: np.ndarray
  time_lo: int
  time_size: int
  anticipation: int
  release: Optional[np.ndarray] = None
  instrument_of: Optional[np.ndarray] = None
  pitch_of: Optional[np.ndarray] = None
  duration_of: Optional[np.ndarray] = None
  duration_step: int = 1

  @classmethod
  def none(cls, num_states: int) -> "Controls":
    return cls(np.zeros(0, np.int32), np.zeros((0, 1), np.int32), np.zeros(num_states, bool), 0,
               1, 0)

  @property
  def bounded(self) -> bool:
    """Whether generated notes' durations are bounded (`release`)."""
    return self.release is not None

  def arrays(self, num_states: int, vocab_size: int):
    n = len(self.onset)
    if self.entry_states.shape != (num_states,):
      raise ValueError(f"Controls.entry_states must be bool[{num_states}]")
    onset = np.full(max(n, 1), NO_LIMIT, np.int32)
    onset[:n] = self.onset
    fields = np.zeros((max(n, 1), self.fields.shape[1]), np.int32)
    fields[:n] = self.fields
    # Unbounded, the loop never reads the release arrays: one-element placeholders.
    release = np.full(1, NO_LIMIT, np.int32)
    instrument_of, pitch_of = np.full(1, -1, np.int32), np.full(1, -1, np.int32)
    duration_of = np.zeros(1, np.int32)
    if self.bounded:
      if self.instrument_of is None or self.pitch_of is None or self.duration_of is None:
        raise ValueError("Controls.release needs instrument_of, pitch_of and duration_of")
      # Per-id tables padded to the model's vocabulary (ids past the codec's name nothing).
      instrument_of = np.full(vocab_size, -1, np.int32)
      pitch_of = np.full(vocab_size, -1, np.int32)
      duration_of = np.zeros(vocab_size, np.int32)
      v = len(self.instrument_of)
      instrument_of[:v], pitch_of[:v] = self.instrument_of, self.pitch_of
      duration_of[:v] = self.duration_of
      release = np.asarray(self.release, np.int32)
    return (jnp.asarray(onset), jnp.asarray(fields), jnp.int32(n),
            jnp.asarray(self.entry_states, bool), jnp.int32(self.time_lo),
            jnp.int32(self.time_size), jnp.int32(self.anticipation), jnp.asarray(release),
            jnp.asarray(instrument_of), jnp.asarray(pitch_of), jnp.asarray(duration_of),
            jnp.int32(self.duration_step))


class SampleResult(NamedTuple):
  tokens: np.ndarray  # int32 [B, max_new_tokens]
  lengths: np.ndarray  # int32 [B]
  notes: np.ndarray  # int32 [B] notes completed
  units: np.ndarray  # int32 [B] grid units of generated time
  slides: int  # how many times the window was rebuilt


def _window_start(bflag, total, size):
  """Per row: the first note boundary in [total - size, total) (0 if total <= size; the
  exact cut total - size if no boundary lies there). bflag [B, N] bool, total scalar."""
  n = bflag.shape[1]
  lo = jnp.maximum(total - size, 0)
  idx = jnp.arange(n)
  cand = (idx[None, :] >= lo) & (idx[None, :] < total) & (bflag | (idx[None, :] == 0))
  first = jnp.min(jnp.where(cand, idx[None, :], n), axis=1)
  return jnp.where(first < n, first, lo).astype(jnp.int32)


def _rows_slice(history, starts, size):
  return jax.vmap(lambda h, s: jax.lax.dynamic_slice(h, (s,), (size,)))(history, starts)


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "prompt_len", "max_new",
                                             "context", "keep", "cached", "forced", "bounded"))
def _generate_jit(state, prompt, bflag0, gstate0, allowed_extra, tables, key, max_notes,
                  max_units, controls, *, graphdef, options, prompt_len, max_new, context, keep,
                  cached, forced, bounded):
  model = nnx.merge(graphdef, state)
  allowed_t, next_t, completes_t, advance_t, boundary, eos, pad = tables
  (ctl_onset, ctl_fields, n_ctl, entry_t, ctl_time_lo, ctl_time_size, anticipation, release,
   instrument_of, pitch_of, duration_of, duration_step) = controls
  n_fields = ctl_fields.shape[1]
  b = prompt.shape[0]
  # History: prompt, generated ids, then `context` spare slots so fixed-size slices never clamp.
  n_hist = prompt_len + max_new + context
  history = jnp.zeros((b, n_hist), jnp.int32).at[:, :prompt_len].set(prompt)
  bflag = jnp.zeros((b, n_hist), bool).at[:, :prompt_len].set(bflag0)

  def window_logits(history, bflag, total, size, cache):
    """Re-prefills each row's last <= size tokens cut at a note boundary; positions from 0."""
    start = _window_start(bflag, total, size)
    wlen = total - start
    win = _rows_slice(history, start, size)
    if cached:
      logits, cache = model.decode(win, cache, 0)  # 0: a fresh window, old cache unread
      cache = dict(cache, pos=wlen)
    else:
      logits = model(win[:, :size])
    last = jnp.take_along_axis(logits, (wlen - 1)[:, None, None], axis=1)[:, 0]
    return last, cache, start, wlen

  def step_logits(history, start, wlen):
    """Uncached: full forward over the current window (fixed [B, context]; causal)."""
    win = _rows_slice(history, start, context)
    logits = model(win)
    return jnp.take_along_axis(logits, (wlen - 1)[:, None, None], axis=1)[:, 0]

  cache = model.init_cache(b, context) if cached else None
  first = min(prompt_len, context)
  logits, cache, start, wlen = window_logits(history, bflag, prompt_len, first, cache)

  carry = dict(i=jnp.int32(0), logits=logits, cache=cache, history=history, bflag=bflag,
               g=gstate0, done=jnp.zeros((b,), bool), notes=jnp.zeros((b,), jnp.int32),
               units=jnp.zeros((b,), jnp.int32), ngen=jnp.zeros((b,), jnp.int32),
               start=start, wlen=wlen, slides=jnp.int32(0), cptr=jnp.zeros((b,), jnp.int32),
               force=jnp.zeros((b,), jnp.int32), ins=jnp.zeros((b,), jnp.int32),
               pitch=jnp.zeros((b,), jnp.int32))

  def running(c):
    return (c["i"] < max_new) & ~jnp.all(c["done"])

  def full(c):
    return jnp.any(c["wlen"] >= context)

  def sample_one(c):
    """Samples token i of every row; returns the updated carry fields and the token."""
    i, g, done = c["i"], c["g"], c["done"]
    total = prompt_len + i
    allowed = allowed_t[g] & allowed_extra[None, :]
    allowed = jnp.where(done[:, None], jnp.arange(allowed.shape[1])[None, :] == pad, allowed)
    tok = sample_ids(jax.random.fold_in(key, i), c["logits"], allowed, options)
    if bounded:
      # A note must end by its voice's `release` (an infilled span's notes end where their
      # voice's kept music resumes): its onset is `units` (its time id has been written), its
      # instrument and pitch the last ones named. A duration drawn past it is cut to end
      # there (the id `duration_step` apart per unit carries the same other fields): the model's
      # mass past the bound folds onto the bound, so a note it holds over the seam ends at the
      # seam, where masking those durations and redrawing among the shorter ones ended the
      # span's last notes early (a thin or silent seam). At least one unit stays, so a note past
      # the bound (one the span drops) still completes.
      room = jnp.maximum(release[c["ins"] * 128 + c["pitch"]] - c["units"], 1)
      tok = tok - jnp.maximum(duration_of[tok] - room, 0) * duration_step
    # Control notes (given notes: infilling's right context, an accompaniment's kept part) are
    # forced, as training placed them: a control enters at the last position (between groups)
    # before the sampled id would carry time past its onset minus the anticipation (or end the
    # piece); its group is then emitted over the next steps and sampling resumes after it.
    # `forced` (static): a request without controls compiles none of this per-token work.
    cptr, force = c["cptr"], c["force"]
    if forced:
      forcing = force > 0
      k = jnp.minimum(cptr, ctl_onset.shape[0] - 1)
      forced_field = ctl_fields[jnp.maximum(cptr - 1, 0),
                                jnp.clip(n_fields - force, 0, n_fields - 1)]
      onset = ctl_onset[k]
      crosses = (~forcing & (cptr < n_ctl) & entry_t[g]
                 & ((c["units"] + advance_t[g, tok] > onset - anticipation) | (tok == eos)))
      tok = jnp.where(forcing, forced_field, tok)
      tok = jnp.where(crosses, ctl_time_lo + jnp.clip(onset - c["units"], 0, ctl_time_size - 1),
                      tok)
      force = jnp.where(forcing, force - 1, jnp.where(crosses, n_fields, 0))
      cptr = cptr + crosses
    tok = jnp.where(done, pad, tok)
    ins, pitch = c["ins"], c["pitch"]
    if bounded:
      ins = jnp.where(instrument_of[tok] >= 0, instrument_of[tok], ins)
      pitch = jnp.where(pitch_of[tok] >= 0, pitch_of[tok], pitch)
    live = ~done
    history = c["history"].at[:, total].set(tok)
    bflag = c["bflag"].at[:, total].set(live & (g == boundary) & (tok != eos))
    notes = c["notes"] + (completes_t[g, tok] & live)
    units = c["units"] + jnp.where(live, advance_t[g, tok], 0)
    new_g = next_t[g, tok]
    at_boundary = new_g == boundary
    stop = (tok == eos) | (at_boundary & ((notes >= max_notes) | (units >= max_units)))
    return dict(c, i=i + 1, history=history, bflag=bflag, g=new_g, done=done | (live & stop),
                notes=notes, units=units, ngen=c["ngen"] + live, cptr=cptr, force=force,
                ins=ins, pitch=pitch), tok

  def advance_step(c):
    """One token while the window has room: sample it, then append it to the cache."""
    c, tok = sample_one(c)
    wlen = c["wlen"] + 1
    if cached:
      logits, cache = model.decode(tok[:, None], c["cache"])
      return dict(c, logits=logits[:, 0], cache=cache, wlen=wlen)
    return dict(c, logits=step_logits(c["history"], c["start"], wlen), wlen=wlen)

  def slide_step(c):
    """One token when the window is full: sample it, then re-prefill the last `keep` tokens."""
    c, _ = sample_one(c)
    total1 = prompt_len + c["i"]
    logits, cache, start, wlen = window_logits(c["history"], c["bflag"], total1, keep, c["cache"])
    return dict(c, logits=logits, cache=cache, start=start, wlen=wlen, slides=c["slides"] + 1)

  def window(c):
    """Decodes until the window is full (or the request ends), then slides once if needed.
    The per-token loop holds no conditional: on CPU a cond around the decode step made XLA
    copy every layer's KV cache in and out of it on each token."""
    c = jax.lax.while_loop(lambda c: running(c) & ~full(c), advance_step, c)
    return jax.lax.cond(running(c) & full(c), slide_step, lambda c: c, c)

  out = jax.lax.while_loop(running, window, carry)
  gen = jax.lax.dynamic_slice_in_dim(out["history"], prompt_len, max_new, axis=1)
  return gen, out["ngen"], out["notes"], out["units"], out["slides"]


def generate(model, prompt, tables: Grammar, options: SampleOptions = SampleOptions(), *,
             seed: int = 0, num_samples: int = 1, max_new_tokens: int = 1024,
             max_notes: Optional[int] = None, max_units: Optional[int] = None,
             allowed_ids: Optional[np.ndarray] = None, prompt_state: Optional[int] = None,
             prompt_boundaries: Optional[np.ndarray] = None, context: Optional[int] = None,
             keep: Optional[int] = None, cached: bool = True, memory_check: str = "refuse",
             memory_limit_mib: int = 0, controls: Optional[Controls] = None) -> SampleResult:
  """Samples `num_samples` continuations of one prompt in one compiled loop.

  Args:
    model: a `virtuoso_jax.models` decoder (its parameters are used as they are).
    prompt: int ids [P] (P >= 1), e.g. `[BOS]` or `codec.encode(notes, add_eos=False)`. Every
      row starts from it. Ids must follow the grammar (else ValueError).
    tables: `codec.grammar()`.
    options: temperature / top-k / top-p.
    seed: PRNG seed (same seed, same prompt, same options: same samples).
    num_samples: batch size B.
    max_new_tokens: hard cap on generated ids per row (the static loop length).
    max_notes: stop a row after this many complete notes.
    max_units: stop a row at the first note boundary once this many grid units were generated
      (then `trim_to_units` drops a note that started past the limit).
    allowed_ids: optional bool[V], ids to allow at all (instrument restriction); combined with
      the grammar.
    prompt_state, prompt_boundaries: grammar state after the prompt and its boundary flags
      (bool[P]); default: walked from `tables.start_state` (a leading BOS is skipped).
    context: cache / window length (default `model.max_len`).
    keep: tokens kept when the window slides (default context // 2).
    cached: False runs the uncached reference (full forward per step).
    memory_check: the memory pre-flight of the compiled sampler (its KV caches: rows x context x
      layers) against the free memory (virtuoso_jax.preflight): "refuse" raises
      preflight.OutOfMemoryError naming a num_samples or context that fits, "warn" logs, "off".
    memory_limit_mib: plan for at most this much memory (0: all that is free).
    controls: control notes to force (a version-2 token codec's `Controls`), or None.

  Returns:
    SampleResult (host numpy arrays).
  """
  prompt = np.asarray(prompt, np.int64).reshape(-1)
  if prompt.size < 1:
    raise ValueError("the prompt must hold at least one id (e.g. BOS)")
  v = tables.vocab_size
  if model.vocab_size < v:
    raise ValueError(f"the model's vocabulary ({model.vocab_size}) is smaller than the codec's "
                     f"({v})")
  if prompt_state is None:
    body = prompt[1:] if prompt[0] == tables.bos_id else prompt
    prompt_state, flags = tables.walk(body)
    prompt_boundaries = np.concatenate([[True], flags]) if len(body) < len(prompt) else flags
  if prompt_boundaries is None:
    prompt_boundaries = np.zeros(len(prompt), bool)
  prompt_boundaries = np.asarray(prompt_boundaries, bool).reshape(-1)
  if len(prompt_boundaries) != len(prompt):
    raise ValueError(f"prompt_boundaries has {len(prompt_boundaries)} flags for {len(prompt)} ids")
  if not tables.allowed[prompt_state].any():
    raise ValueError(f"no id is legal after the prompt (grammar state {prompt_state}: the prompt "
                     "ended the song)")
  context = int(context or model.max_len)
  if context > model.max_len and getattr(model, "learned_pos", True):
    raise ValueError(f"context {context} > model.max_len {model.max_len}")
  keep = int(keep or max(1, context // 2))
  if not 1 <= keep < context:
    raise ValueError(f"keep must be in 1..context-1, got {keep} (context {context})")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if memory_check not in ("refuse", "warn", "off"):
    raise ValueError(f"memory_check must be 'refuse', 'warn' or 'off', got {memory_check!r}")
  extra = np.ones(v, bool) if allowed_ids is None else np.asarray(allowed_ids, bool)
  if extra.shape != (v,):
    raise ValueError(f"allowed_ids must be bool[{v}], got shape {extra.shape}")
  if model.vocab_size > v:  # Ids the codec does not know are never sampled.
    pad_cols = model.vocab_size - v
    tab = lambda a, fill: np.concatenate([a, np.full((a.shape[0], pad_cols), fill, a.dtype)], 1)
    allowed, nxt = tab(tables.allowed, False), tab(tables.next_state, 0)
    completes, adv = tab(tables.completes_note, False), tab(tables.advance, 0)
    extra = np.concatenate([extra, np.zeros(pad_cols, bool)])
  else:
    allowed, nxt, completes, adv = (tables.allowed, tables.next_state, tables.completes_note,
                                    tables.advance)
  b = int(num_samples)
  ctl = (controls or Controls.none(tables.num_states)).arrays(tables.num_states,
                                                             max(v, model.vocab_size))
  graphdef, state = nnx.split(model)
  jt = (jnp.asarray(allowed), jnp.asarray(nxt, jnp.int32), jnp.asarray(completes),
        jnp.asarray(adv, jnp.int32), jnp.int32(tables.boundary_state), jnp.int32(tables.eos_id),
        jnp.int32(tables.pad_id))

  def args(rows):
    return (state, jnp.asarray(np.broadcast_to(prompt, (rows, len(prompt))), jnp.int32),
            jnp.asarray(np.broadcast_to(prompt_boundaries, (rows, len(prompt)))),
            jnp.full((rows,), prompt_state, jnp.int32), jnp.asarray(extra), jt,
            jax.random.key(seed), jnp.int32(NO_LIMIT if max_notes is None else max_notes),
            jnp.int32(NO_LIMIT if max_units is None else max_units), ctl)

  def compiled(rows, ctx):  # JAX caches a repeated lower().compile() of the same program.
    return _generate_jit.lower(*args(rows), graphdef=graphdef, options=options,
                               prompt_len=len(prompt), max_new=int(max_new_tokens), context=ctx,
                               keep=keep if ctx == context else max(1, ctx // 2),
                               cached=cached,
                               forced=controls is not None and len(controls.onset) > 0,
                               bounded=controls is not None and controls.bounded).compile()

  program = compiled(b, context)
  if memory_check != "off":
    budget = preflight.budget(limit_mib=memory_limit_mib)
    fewer = [r for r in (b // 2, b // 4, b // 8, 1) if 0 < r < b]
    shorter = [c for c in (context // 2, context // 4) if c >= 64 and c > len(prompt)]
    preflight.check(
        f"the sampler ({b} rows x {context} tokens of KV cache)", preflight.footprint(program),
        budget,
        mode=memory_check, override="memory_check='warn' (the sample binary: --memory_check=warn)",
        options=lambda: [
            [preflight.Option(f"num_samples={r}", functools.partial(compiled, r, context),
                              "run the rest in further calls") for r in sorted(set(fewer),
                                                                               reverse=True)],
            [preflight.Option(f"context={c}", functools.partial(compiled, b, c), "a shorter window")
             for c in shorter]])
  out = program(*args(b))
  gen, ngen, notes, units, slides = jax.device_get(out)
  return SampleResult(np.asarray(gen), np.asarray(ngen), np.asarray(notes), np.asarray(units),
                      int(slides))


def trim_to_units(ids: np.ndarray, tables: Grammar, max_units: int,
                  state: Optional[int] = None) -> np.ndarray:
  """Cuts generated `ids` before the first note whose onset is >= max_units grid units after
  the start of `ids` (`state`: the grammar state before them; default the start state)."""
  ids = np.asarray(ids)
  state = tables.start_state if state is None else int(state)
  t, group_start = 0, 0
  for i, tok in enumerate(ids.tolist()):
    if state == tables.boundary_state:
      group_start = i
    t += int(tables.advance[state, tok])
    if tables.completes_note[state, tok] and t >= max_units:
      return ids[:group_start]
    state = int(tables.next_state[state, tok])
  return ids


def drop_partial_note(ids: np.ndarray, tables: Grammar,
                      state: Optional[int] = None) -> np.ndarray:
  """Cuts generated `ids` after the last complete note (or EOS): a row stopped by the token
  limit may end inside a note, which the decoder would skip. `state`: the grammar state before
  `ids` (default the start state)."""
  ids = np.asarray(ids)
  state = tables.start_state if state is None else int(state)
  end = 0
  for i, tok in enumerate(ids.tolist()):
    if tok == tables.eos_id:
      return ids[:i + 1]
    state = int(tables.next_state[state, tok])
    if state == tables.boundary_state:
      end = i + 1
  return ids[:end]
