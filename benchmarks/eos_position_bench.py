"""Where do samples end? EOS at the end of the first context window (a windowing artefact).

  python benchmarks/eos_position_bench.py --workdir=runs/quickstart
  # Another checkout's code (e.g. a worktree of an older commit): its package must be imported.
  cd /tmp/base && PYTHONPATH=/tmp/base python /work/main/benchmarks/eos_position_bench.py \
      --workdir=/tmp/runs/qs_before

A model whose training windows always put a song's EOS at the last window position (the
windowing before 2026-12-02) learns "position L-1 => EOS" and many samples stop at exactly
token L (BOS at index 0, EOS at index L = predicted at position L-1). Prints one JSON line per
figure:
  eos_at_context_share    share of samples whose EOS is token index L (== context)
  eos_share               share of samples that end with EOS at all (within --max_tokens)
  end_position_hist       generated ids per sample (EOS included), in bins of --bin tokens
  notes_per_sample        mean complete notes generated per sample
  p_eos_window_end        mean P(EOS) (grammar-masked, temperature 1, the sampler's
                          distribution) at position L-1 of the first window, and
  p_eos_other_boundaries  ... at the other note boundaries of that window (samples long
                          enough to fill it); from one forward pass
  eval_nll_per_note       eval-split NLL per note under both windowings ("slide_back": the old
                          one, each song's last window slid back to end at its end; "padded":
                          stride L from the song start, the last window padded, as eval uses
                          since the fix), so runs trained with either code compare on the same
                          windows; needs the prepared dataset (skipped otherwise)
Uses the inference library (inference.load_run / generate / SampleRequest) and
steps.note_marker_table.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
import numpy as np

_WORKDIR = flags.DEFINE_string("workdir", None, "The training run to sample from.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "Checkpoint step, or 'latest'.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Samples to generate.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_MAX_TOKENS = flags.DEFINE_integer("max_tokens", 1024, "Most new tokens per sample.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
_BIN = flags.DEFINE_integer("bin", 64, "Bin width (tokens) of end_position_hist.")
_EVAL_NLL = flags.DEFINE_integer("eval_nll", 1, "0 skips the eval-split NLL.")
flags.mark_flag_as_required("workdir")


def emit(figure: str, value, **extra) -> None:
  print(json.dumps({"figure": figure, "value": value, **extra}), flush=True)


def first_window_p_eos(run, samples, context: int):
  """(P(EOS) at position L-1, mean P(EOS) at the other boundaries, n) over samples whose ids
  fill the first window (EOS allowed = a note boundary)."""
  import jax
  import jax.numpy as jnp
  t = run.tables
  eos = t.eos_id
  rows = [s.ids[:context] for s in samples if len(s.ids) > context]
  if not rows:
    return None, None, 0, 0
  x = np.stack(rows).astype(np.int32)
  logits = np.asarray(jax.jit(lambda v: run.model(v, deterministic=True))(jnp.asarray(x)))
  logits = logits[..., :t.vocab_size]
  end, other = [], []
  for r, ids in enumerate(x):
    state = t.start_state  # After BOS (position 0).
    for i in range(context):
      if i > 0:
        state = int(t.next_state[state, ids[i]])
      allowed = t.allowed[state]
      if not allowed[eos]:
        continue
      z = np.where(allowed, logits[r, i], -np.inf)
      z = z - z.max()
      p = float(np.exp(z[eos]) / np.exp(z).sum())
      (end if i == context - 1 else other).append(p)
  return (float(np.mean(end)) if end else None,
          float(np.mean(other)) if other else None, len(rows), len(end))


def windows(lengths, seq_len: int, scheme: str):
  """[(song, start, first counted position, end counted position)] for the eval split."""
  out = []
  for s, n in enumerate(lengths):
    n = int(n)
    if n < 2:
      continue
    st = 0
    while True:
      if st + seq_len >= n - 1:  # This window reaches the song's last target.
        out.append((s, st, 0, n - 1 - st))
        break
      out.append((s, st, 0, seq_len))
      nxt = st + seq_len
      if scheme == "slide_back" and nxt + seq_len + 1 > n:
        last = n - seq_len - 1
        out.append((s, last, nxt - last, seq_len))
        break
      st = nxt
  return out


def eval_nll_per_note(run, songs, batch: int = 32) -> dict:
  import jax
  import jax.numpy as jnp
  from virtuoso_jax import steps
  seq_len = run.context
  table = steps.note_marker_table(run.codec, run.kind)
  pad = int(run.codec.pad_id)
  fwd = jax.jit(lambda v: jax.nn.log_softmax(run.model(v, deterministic=True), axis=-1))
  out = {}
  for scheme in ("slide_back", "padded"):
    ws = windows([len(s) for s in songs], seq_len, scheme)
    nll = notes = count = eos_nll = 0.0
    for b in range(0, len(ws), batch):
      part = ws[b:b + batch]
      tok = np.full((batch, seq_len + 1), pad, np.int32)
      mask = np.zeros((batch, seq_len), np.float32)
      for r, (s, st, lo, hi) in enumerate(part):
        piece = songs[s][st:st + seq_len + 1]
        tok[r, :len(piece)] = piece
        mask[r, lo:hi] = 1.0
      lp = np.asarray(fwd(jnp.asarray(tok[:, :-1])))
      tgt = tok[:, 1:]
      tok_nll = -np.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0] * mask
      nll += tok_nll.sum()
      count += mask.sum()
      notes += (table[tgt] * mask).sum()
      eos_nll += tok_nll[tgt == run.tables.eos_id].sum()
    out[scheme] = {"nll_per_note": float(nll / notes), "nll_per_token": float(nll / count),
                   "eos_nll_mean": float(eos_nll / len(songs)), "windows": len(ws)}
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import virtuoso_jax
  from virtuoso_jax import inference
  run = inference.load_run(_WORKDIR.value, _CHECKPOINT.value)
  context = run.context
  tag = {"workdir": run.workdir, "step": run.step, "code": virtuoso_jax.__file__}
  samples = inference.generate(run, inference.SampleRequest(
      num_samples=_NUM_SAMPLES.value, seed=_SEED.value, max_tokens=_MAX_TOKENS.value,
      temperature=_TEMPERATURE.value))
  eos = run.tables.eos_id
  gen = np.array([s.new_tokens for s in samples])  # Generated ids, EOS included.
  ended = np.array([len(s.ids) > s.prompt_len and s.ids[-1] == eos for s in samples])
  at_context = ended & (np.array([len(s.ids) - 1 for s in samples]) == context)
  emit("eos_at_context_share", float(at_context.mean()), count=int(at_context.sum()),
       of=len(samples), context=context, **tag)
  emit("eos_share", float(ended.mean()), **tag)
  edges = np.arange(0, _MAX_TOKENS.value + _BIN.value, _BIN.value)
  hist, _ = np.histogram(gen, bins=edges + 0.5)  # Bin k: k*bin+1 .. (k+1)*bin ids.
  emit("end_position_hist", {f"{lo}-{lo + _BIN.value - 1}": int(h)
                             for lo, h in zip(edges[:-1] + 1, hist)},
       ended_with_eos=sorted(int(g) for g in gen[ended]), **tag)
  emit("notes_per_sample", float(np.mean([s.new_notes for s in samples])), **tag)
  p_end, p_other, n_rows, n_end = first_window_p_eos(run, samples, context)
  emit("p_eos_window_end", p_end, samples=n_rows, boundary_at_end=n_end, **tag)
  emit("p_eos_other_boundaries", p_other, samples=n_rows, **tag)

  if _EVAL_NLL.value:
    try:
      import tensorflow_datasets as tfds
      from virtuoso_jax import dataset
      src = tfds.data_source(dataset.dataset_name(run.config),
                             split=run.config.data.eval_split,
                             data_dir=dataset.data_dir(run.config))
      songs = [np.asarray(src[i]["ids"], np.int32) for i in range(len(src))]
    except Exception as e:  # pylint: disable=broad-except
      emit("eval_nll_per_note", None, skipped=f"{type(e).__name__}: {e}", **tag)
      return
    emit("eval_nll_per_note", eval_nll_per_note(run, songs), songs=len(songs), **tag)


if __name__ == "__main__":
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # What the binaries set on a CPU host, before JAX starts.
  app.run(main)
