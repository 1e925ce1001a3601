r"""What the controls do, measured on held-out music (issue 18, point 4).

  python -m benchmarks.controls_bench --workdir=runs/control [--pieces=21] [--samples=4]

For a run trained beyond continuation (e.g. configs/rga.py:control) and the test split of its
dataset, one JSON line per figure:
  kept_exact_share         given notes found unchanged in the output, over every mode and sample
  infill_span_nll_per_note the span's notes (NLL per note, teacher-forced) given the music after
                           the span as anticipated controls, and without it (`no_right_context`)
  infill_pitch_nll_per_note the same for the pitch id alone, for the span's top line (`part`
                           top, its melody) and its other notes
  infill_span_nll_per_id   the span's ids (NLL per id) where the right context has begun to
                           enter (`where`: controls entered), and before it, where only the
                           task id differs; `transposed_controls`: the same ids with the right
                           context a tritone off (its timing kept, its pitches wrong), which
                           parts what the controls' content gives from what their presence costs
  infill_seams             around each seam of an infilled span (`seam` start / end, +- 0.5 s;
                           `resume`: where the kept music resumes, the new music's end;
                           `mid`: the span's middle, no seam, both sides sampled: the floor):
                           seconds with no note sounding and the mean number of notes sounding,
                           sampled against the source; `gap_share` / `pileup_share`: seams
                           whose silence grew by over 0.1 s / whose mean notes sounding grew by
                           over half a note; `thinning_share`: fell by over half a note;
                           `off_share`: either; `span_notes_sounding`: over the whole span,
                           sample and source. Each
                           span is infilled twice: its notes ending where their voice's kept
                           music resumes (the default) and with `infill_ties`;
                           `notes_sounding_before_after`: the half second before the seam and
                           the half second after it apart (notes crammed in before the kept
                           music resumes, or sounding on under it); `onsets_before`: distinct
                           onsets in the half second before the seam (a span that rushes)
  accompany_onset_share    generated onsets that coincide with the kept melody's onsets, for
                           `--keep_melody` and for unconditioned music of the same length
                           (`baseline`), and the real accompaniment (`real`)
  density_notes_per_s      generated notes per second for each requested density bin (with
                           its standard error), whether they rise with the bin, and the share
                           landing in the requested bin (`--density_samples` per bin)
  attribute_nll_gain       for each binned attribute, held-out music scored (teacher-forced)
                           with its own bin stated and with each other bin: NLL per note saved
                           by the true bin over the mean of the wrong ones (0 = ignored), and
                           the share of excerpts scored best under their true bin (chance
                           1 / bins)
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
import numpy as np

from benchmarks import common
from virtuoso_jax.encoding import token_codec as tc

_WORKDIR = flags.DEFINE_string("workdir", None, "A run trained beyond continuation.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number.")
_PIECES = flags.DEFINE_integer("pieces", 21, "Test pieces used (at most the split's).")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Samples per piece and mode.")
_SPLIT = flags.DEFINE_string("split", "test", "Held-out split of the run's dataset.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Length of each piece's excerpt (seconds).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_DENSITY_SAMPLES = flags.DEFINE_integer("density_samples", 32, "Unprompted 10 s samples per "
                                        "requested density bin.")
_SPANS = flags.DEFINE_integer("spans_per_piece", 3, "Spans scored (teacher-forced NLL) per "
                              "piece; the first is also infilled by sampling.")
flags.mark_flag_as_required("workdir")


def _given(notes, given) -> np.ndarray:
  """bool per note of `notes`: one of the `given` notes (matched as a multiset)."""
  left = {}
  for r in given.to_rows():
    left[r] = left.get(r, 0) + 1
  out = np.zeros(len(notes), bool)
  for i, r in enumerate(notes.to_rows()):
    if left.get(r, 0):
      left[r] -= 1
      out[i] = True
  return out


def _kept(out, given) -> tuple[int, int]:
  """(given notes found unchanged in `out`, given notes)."""
  return int(_given(out, given).sum()), len(given)


def _pieces(run, split: str, count: int, seconds: float):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import dataset  # pylint: disable=g-import-not-at-top
  src = tfds.data_source(dataset.dataset_name(run.config), split=split,
                         data_dir=dataset.data_dir(run.config))
  units = int(seconds * 1000 / run.enc_config.grid_ms)
  out = []
  for i in range(min(count, len(src))):
    notes = run.codec.decode(np.asarray(src[i]["ids"]))
    out.append(notes[notes.onset < units])
  return [p for p in out if len(p) >= 16]


def _span_nll(run, scorer, piece, start: int, end: int) -> tuple | None:
  """(NLL per span note with the music after it as controls, without it, span notes,
  {"top" | "other": (pitch NLL summed with, without, notes)} for the span's top line and the
  rest, and {"controls entered" | "before controls": (NLL summed with, without, ids, with the
  controls transposed)})."""
  from virtuoso_jax import tasks  # pylint: disable=g-import-not-at-top
  codec = run.codec
  events, after = tasks.split_at(piece, end)
  after = tasks.sampler_horizon(codec, after, end)  # The rest cannot enter before the end.
  prefix = events[events.onset < start]
  room = run.context + 1 - (len(after) + 2) * codec.tokens_per_note - 8
  while len(prefix) and (len(events) + 2) * codec.tokens_per_note > room:
    keep = np.arange(len(events)) >= 1  # Drop the earliest history note to fit the context.
    events, prefix = events[keep], prefix[np.arange(len(prefix)) >= 1]
  n_span = len(events) - len(prefix)
  if n_span < 2 or not len(after):
    return None
  # No trailing controls: the WAITs that would let the last controls enter after the span's
  # last event are not the span's notes, and `without` has none to compare them with.
  def infilled(controls):
    return codec.encode_controlled(events, controls, codec.task_attribute("infill"),
                                   add_eos=False, trailing_controls=False, infill=True)

  with_ctx, is_ctl = infilled(after)
  without, _ = codec.encode_controlled(events, None, add_eos=False)
  # The same controls a tritone off: the same ids at the same places, the wrong music.
  transposed, _ = infilled(after.replace(
      pitch=np.where(after.pitch + 6 <= 127, after.pitch + 6, after.pitch - 6)))
  n_prefix = len(codec.encode_controlled(prefix, None, add_eos=False)[0])
  if max(len(with_ctx), len(without)) > run.context + 1:
    return None

  a, b, c = _nll(scorer, with_ctx, without, transposed)
  # The event stream inside the controlled sequence (not the controls, not the task id).
  event_pos = np.flatnonzero(~codec.inputs_only(with_ctx, is_ctl))
  span_targets_a = event_pos[n_prefix:] - 1  # Target index = position - 1.
  span_targets_b = np.arange(n_prefix, len(without)) - 1
  if len(span_targets_a) != len(span_targets_b):
    raise RuntimeError("the event streams with and without controls differ")
  # Where the right context acts: span ids after the first control entered, and before it
  # (there the two sequences differ only by the task id).
  entered = span_targets_a + 1 > (np.flatnonzero(is_ctl)[0] if is_ctl.any() else len(with_ctx))
  where = {name: (float(a[span_targets_a[pick]].sum()), float(b[span_targets_b[pick]].sum()),
                  int(pick.sum()), float(c[span_targets_a[pick]].sum()))
           for name, pick in (("controls entered", entered), ("before controls", ~entered))}
  # The pitch id of each span note, split into the span's top line (its melody) and the other
  # notes: which part the right context helps or hurts. without[i] is with_ctx[event_pos[i]].
  pitch_at = np.flatnonzero(np.isin(codec.kinds(without), (tc.K_PITCH, tc.K_INS_PITCH)))
  parts = {}
  if len(pitch_at) == len(events):
    top = tasks.melody(events.canonical())
    for name, pick in (("top", top), ("other", ~top)):
      pos = pitch_at[pick & (np.arange(len(events)) >= len(prefix))]
      parts[name] = (float(a[event_pos[pos] - 1].sum()), float(b[pos - 1].sum()), len(pos))
  return (float(a[span_targets_a].sum()) / n_span, float(b[span_targets_b].sum()) / n_span,
          n_span, parts, where)


def _nll(scorer, *sequences) -> list[np.ndarray]:
  """Per-target NLL (nats) of each id sequence (each fits the context), teacher-forced, with
  the evaluate binary's scorer."""
  return [s.nll for s in scorer.score([("", np.asarray(ids), 0, 0.0) for ids in sequences])]


def _attribute_gain(run, scorer, pieces, name: str) -> tuple[float, float, int]:
  """(NLL per note saved by stating the true bin of `name` over the mean of the wrong bins,
  share of excerpts best under their true bin, excerpts) on the start of each piece that fits
  the context."""
  codec = run.codec
  bins = len(codec.controls.edges(name)) + 1
  gains, best = [], []
  fits = lambda n: len(codec.encode_controlled(n, None, {name: 0})[0]) <= run.context + 1
  for piece in pieces:
    notes = piece.canonical()[:max(4, (run.context - 16) // codec.tokens_per_note)]
    while len(notes) > 4 and not fits(notes):
      notes = notes[:len(notes) - 8]
    true = codec.attributes(notes)[name]
    # The prefix holds one attribute id (position 1); the targets from position 2 on are the music.
    scored = _nll(scorer, *(codec.encode_controlled(notes, None, {name: b})[0]
                            for b in range(bins)))
    per_bin = np.array([nll[1:].sum() for nll in scored]) / len(notes)
    gains.append(float(np.delete(per_bin, true).mean() - per_bin[true]))
    best.append(int(np.argmin(per_bin)) == true)
  return float(np.mean(gains)), float(np.mean(best)), len(gains)


def _onsets_before(notes, at: int, width: int) -> int:
  """Distinct onsets in the `width` units before `at`: a span that rushes into the kept music
  (more chords than the source in its last half second)."""
  on = np.asarray(notes.onset)
  return len(np.unique(on[(on >= at - width) & (on < at)]))


def _onset_share(generated, melody) -> float:
  if not len(generated):
    return float("nan")
  return float(np.isin(generated.onset, melody.onset).mean())


def main(argv):
  del argv
  from virtuoso_jax import evaluation  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import music_stats  # pylint: disable=g-import-not-at-top
  from virtuoso_jax import tasks  # pylint: disable=g-import-not-at-top
  run = inference.load_run(_WORKDIR.value, _CHECKPOINT.value)
  if getattr(run.codec, "version", 1) < 2:
    raise app.UsageError(f"{_WORKDIR.value} was trained for continuation only")
  scorer = evaluation.Scorer(run)
  tag = {"workdir": run.workdir, "step": run.step, "split": _SPLIT.value}
  pieces = _pieces(run, _SPLIT.value, _PIECES.value, _SECONDS.value)
  grid_s = run.enc_config.grid_ms / 1000.0
  rng = np.random.default_rng(_SEED.value)
  found = total = 0
  spans, acc, base, real = [], [], [], []
  # (silence share, notes sounding) of the sample and the source, per (seam, --infill_ties).
  seams = {(name, ties): [] for ties in (False, True)
           for name in ("start", "mid", "end", "resume")}
  half = int(round(0.5 / grid_s))
  for k, piece in enumerate(pieces):
    t1 = int(piece.onset.max())
    for j in range(_SPANS.value):
      a = int(rng.uniform(0.3, 0.6) * t1)
      b = a + int(0.2 * t1)
      if j == 0:
        start, end = a, b
      scored = _span_nll(run, scorer, piece, a, b)
      if scored:
        spans.append(scored)
    outside = (piece.onset < start) | (piece.onset >= end)
    # "mid", the span's middle, is no seam: both sides are sampled, so how far its figures
    # stray from the source's there is what a different, sound span gives anywhere (the floor
    # for the seams' shares). "resume": where the kept music resumes (its first onset from
    # `end`), which the new music runs to: the hand-over itself.
    mid, resume = (start + end) // 2, int(piece.onset[piece.onset >= end].min())
    for ties in (False, True):  # The span's notes bounded by the kept music (default) or not.
      req = inference.SampleRequest(num_samples=_SAMPLES.value, seed=_SEED.value + k,
                                    prompt_notes=piece, infill=(start * grid_s, end * grid_s),
                                    infill_ties=ties, memory_check="off")
      for s in inference.generate(run, req):
        f, n = _kept(s.notes, piece[outside])
        found, total = found + f, total + n
        # Each row also holds the span's own mean notes sounding, sample and source.
        span = [music_stats.seam(notes, mid, (end - start) // 2)[1] for notes in (s.notes, piece)]
        for name, at in (("start", start), ("mid", mid), ("end", end), ("resume", resume)):
          # The whole second, then its halves before and after the seam (notes sounding).
          seams[name, ties].append([
              *music_stats.seam(s.notes, at, half), *music_stats.seam(piece, at, half),
              *(music_stats.seam(notes, at + side * (half // 2), half // 2)[1]
                for side in (-1, 1) for notes in (s.notes, piece)),
              *(_onsets_before(notes, at, half) for notes in (s.notes, piece)), *span])
    top = tasks.melody(piece)
    melody = piece[top]
    req = inference.SampleRequest(num_samples=_SAMPLES.value, seed=_SEED.value + k,
                                  prompt_notes=piece, keep_melody=True, memory_check="off")
    for s in inference.generate(run, req):
      f, n = _kept(s.notes, melody)
      found, total = found + f, total + n
      acc.append(_onset_share(_generated_part(s.notes, melody), melody))
    length = float((melody.onset + melody.duration).max()) * grid_s
    req = inference.SampleRequest(num_samples=_SAMPLES.value, seed=_SEED.value + k,
                                  max_seconds=length, memory_check="off")
    for s in inference.generate(run, req):
      base.append(_onset_share(s.notes, melody))
    real.append(_onset_share(piece[~top], melody))
    print(f"piece {k + 1}/{len(pieces)}", file=sys.stderr, flush=True)
  common.emit("kept_exact_share", found / max(total, 1), "fraction", notes=total, **tag)
  if spans:
    common.emit("infill_span_nll_per_note", float(np.mean([s[0] for s in spans])), "nats",
                no_right_context=float(np.mean([s[1] for s in spans])),
                spans=len(spans), notes=int(sum(s[2] for s in spans)), **tag)
    for part in ("top", "other"):
      got = [s[3][part] for s in spans if part in s[3]]
      n = sum(g[2] for g in got)
      if n:
        common.emit("infill_pitch_nll_per_note", sum(g[0] for g in got) / n, "nats", part=part,
                    no_right_context=sum(g[1] for g in got) / n, notes=n, **tag)
    for where in ("controls entered", "before controls"):
      got = [s[4][where] for s in spans]
      n = sum(g[2] for g in got)
      if n:
        common.emit("infill_span_nll_per_id", sum(g[0] for g in got) / n, "nats", where=where,
                    no_right_context=sum(g[1] for g in got) / n,
                    transposed_controls=sum(g[3] for g in got) / n, ids=n, **tag)
  for (name, ties), rows in seams.items():
    x = np.asarray(rows, np.float64).reshape(-1, 12)
    if len(x):
      silent = x[:, [0, 2]] * 2 * half * grid_s
      common.emit("infill_seams", float(silent[:, 0].mean()), "s silent per 1 s", seam=name,
                  infill_ties=ties, source=float(silent[:, 1].mean()),
                  notes_sounding=float(x[:, 1].mean()),
                  source_notes_sounding=float(x[:, 3].mean()),
                  gap_share=float(np.mean(silent[:, 0] - silent[:, 1] > 0.1)),
                  pileup_share=float(np.mean(x[:, 1] - x[:, 3] > 0.5)),
                  thinning_share=float(np.mean(x[:, 3] - x[:, 1] > 0.5)),
                  off_share=float(np.mean(np.abs(x[:, 1] - x[:, 3]) > 0.5)),
                  span_notes_sounding=[float(x[:, 10].mean()), float(x[:, 11].mean())],
                  notes_sounding_before_after=[float(x[:, 4].mean()), float(x[:, 6].mean())],
                  source_before_after=[float(x[:, 5].mean()), float(x[:, 7].mean())],
                  onsets_before=float(x[:, 8].mean()), source_onsets_before=float(x[:, 9].mean()),
                  seams=len(x), **tag)
  common.emit("accompany_onset_share", float(np.nanmean(acc)), "fraction",
              baseline=float(np.nanmean(base)), real=float(np.nanmean(real)), **tag)
  per_bin, errors, hits = [], [], []
  edges = run.codec.controls.density_edges
  for b in range(len(edges) + 1):
    req = inference.SampleRequest(num_samples=_DENSITY_SAMPLES.value, seed=_SEED.value + b,
                                  max_seconds=10.0, attributes={"density": b},
                                  memory_check="off")
    rates = []
    for s in inference.generate(run, req):
      rates.append(len(s.notes) / 10.0)
      hits.append(run.codec.attributes(s.notes)["density"] == b if len(s.notes) else b == 0)
    per_bin.append(float(np.mean(rates)))
    errors.append(float(np.std(rates) / np.sqrt(len(rates))))
  common.emit("density_notes_per_s", per_bin, "notes/s", standard_error=errors,
              monotonic=bool(np.all(np.diff(per_bin) >= 0)),
              in_requested_bin=float(np.mean(hits)), samples_per_bin=_DENSITY_SAMPLES.value,
              **tag)
  for name in ("density", "polyphony", "pitch_range"):
    gain, best, n = _attribute_gain(run, scorer, pieces, name)
    common.emit("attribute_nll_gain", gain, "nats/note", attribute=name, best_under_true_bin=best,
                chance=1.0 / (len(run.codec.controls.edges(name)) + 1), excerpts=n, **tag)


def _generated_part(notes, melody):
  """The notes of an accompaniment output that are not the kept melody."""
  return notes[~_given(notes, melody)]


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()
  app.run(main)
