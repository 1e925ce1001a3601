r"""Evaluates music models and music: held-out likelihood, statistics against real music, copying.

  # Held-out NLL per token and per note, bits per second (whole songs, strided windows):
  python -m virtuoso_jax.evaluate --workdir=runs/quickstart --split=test
  python -m virtuoso_jax.evaluate --workdir=runs/quickstart --midi_dir=my_midi/
  # Statistics of 32 generated pieces against the test split, and a copying check:
  python -m virtuoso_jax.evaluate --workdir=runs/quickstart --split=test --samples=32
  # Any two folders of MIDI (no model needed):
  python -m virtuoso_jax.evaluate --generated_dir=out/ --reference_dir=real/

Writes `<out>/eval.json` (every figure) and `<out>/features.png` (the distributions); prints a
table. `--out` defaults to `<workdir>/eval` (or `./eval` without a workdir).
"""

from __future__ import annotations

import io
import math
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import numpy as np

from virtuoso_jax import encoding
from virtuoso_jax import evaluation
from virtuoso_jax import music_stats
from virtuoso_jax import paths

MIDI_SUFFIXES = (".mid", ".midi")
COPY_NGRAM = 8  # n of the "share of n-grams found in the training split" figure.

flags.DEFINE_string("workdir", None, "A training run (config.json, checkpoints/).")
flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number.")
flags.DEFINE_string("split", None, "Held-out split of the run's dataset (e.g. test, validation): "
                    "scored, and the reference for --samples.")
flags.DEFINE_string("midi_dir", None, "Score this folder of MIDI with the run's codec instead.")
flags.DEFINE_integer("stride", 0, "Window stride for scoring (0 = half the model's context).")
flags.DEFINE_integer("batch_size", 8, "Windows scored at once.")
flags.DEFINE_integer("samples", 0, "Generate this many pieces with the run and compare them.")
flags.DEFINE_string("generated_dir", None, "Compare this folder of MIDI instead of generating.")
flags.DEFINE_string("reference_dir", None, "Reference MIDI folder (default: --split's songs).")
flags.DEFINE_integer("continue_notes", 0, "Generate continuations of the first N notes of "
                     "reference songs (0 = from scratch); reports key agreement.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_float("temperature", None, "Sampling temperature (default the run's config).")
flags.DEFINE_integer("top_k", None, "0 = off (default the run's config).")
flags.DEFINE_float("top_p", None, "1.0 = off (default the run's config).")
flags.DEFINE_integer("max_notes", 200, "New notes per generated piece.")
flags.DEFINE_bool("copying", True, "Check generated pieces for copies of the training split.")
flags.DEFINE_string("out", None, "Output folder (default <workdir>/eval, else ./eval).")

FLAGS = flags.FLAGS


class EvalError(ValueError):
  """A bad evaluation request; the message names the flag or path and the reason."""


def _progress(what: str):
  state = {"t": time.perf_counter(), "shown": -1}

  def show(done: int, total: int):
    pct = int(100 * done / max(total, 1))
    if pct // 10 != state["shown"] // 10 or done == total:
      state["shown"] = pct
      print(f"  {what}: {done}/{total} ({pct}%), {time.perf_counter() - state['t']:.0f} s",
            flush=True)
  return show


def read_midi_dir(path: str, enc_config: encoding.EncodingConfig
                  ) -> tuple[list[tuple[str, encoding.Notes]], list[tuple[str, str]]]:
  """(name, notes) of every readable MIDI file under `path` (recursively, sorted), and
  (name, reason) of every file skipped."""
  if not paths.is_dir(path):
    raise EvalError(f"{path} is not a folder of MIDI files")
  root = paths.absolute(path).rstrip("/")
  good, skipped = [], []
  files = sorted(p for p in paths.walk_files(root) if p.suffix.lower() in MIDI_SUFFIXES
                 and (paths.is_remote(root) or p.is_file()))  # (Local: no dangling links.)
  for p in files:
    name = str(p)[len(root) + 1:]
    try:
      notes = encoding.midi_to_notes(str(p), enc_config)
    except encoding.MidiError as e:
      skipped.append((name, e.reason if hasattr(e, "reason") else str(e)))
      continue
    if not len(notes):
      skipped.append((name, "no notes"))
      continue
    good.append((name, notes))
  if not good:
    raise EvalError(f"{path}: no readable MIDI file among {len(files)} "
                    f"({len(skipped)} skipped)")
  return good, skipped


def _notes_to_ids(run, name: str, notes: encoding.Notes) -> np.ndarray:
  if run.kind == "char":
    from virtuoso_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.char_ids(run.codec, run.codec.encode(notes, name=name))
  return run.codec.encode(notes).astype(np.int32)


def split_songs(run, split: str) -> list[tuple[str, np.ndarray, encoding.Notes]]:
  """(name, ids, notes) of every song of a split of the run's dataset."""
  from virtuoso_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    source = input_pipeline.SongSource(run.config, split, run.codec)
  except ValueError as e:
    raise EvalError(f"--split={split}: {e}") from e
  out = []
  for i in range(len(source)):
    ids = source[i]
    out.append((f"{split}[{i}]", ids, evaluation.ids_to_notes(run.codec, ids)))
  return out


# ------------------------------------------------------------------ the three parts


def likelihood(run, songs: Sequence[tuple[str, np.ndarray, encoding.Notes]], *,
               stride: int | None, batch_size: int) -> dict[str, Any]:
  scorer = evaluation.Scorer(run, stride=stride, batch_size=batch_size)
  grid = run.enc_config.grid_ms
  print(f"Scoring {len(songs)} songs with windows of {scorer.context} tokens, stride "
        f"{scorer.stride} (every target once, with >= {scorer.context - scorer.stride} tokens of "
        "context after the first window)", flush=True)
  scores = scorer.score([(name, ids, len(notes), evaluation.song_seconds(notes, grid))
                         for name, ids, notes in songs], progress=_progress("windows"))
  out = evaluation.summarize(scores, run.codec if run.kind == "token" else None)
  out["stride"], out["context"] = scorer.stride, scorer.context
  out["per_song"] = evaluation.per_song(scores)
  return out


def statistics(generated: Sequence[encoding.Notes], reference: Sequence[encoding.Notes],
               grid_ms: int) -> dict[str, Any]:
  gen = [music_stats.piece_features(n, grid_ms) for n in generated]
  ref = [music_stats.piece_features(n, grid_ms) for n in reference]
  return {"table": music_stats.compare_sets(gen, ref), "generated": gen, "reference": ref}


def copying(train: Sequence[encoding.Notes], pieces: dict[str, Sequence[encoding.Notes]]
            ) -> dict[str, Any]:
  """For each set of pieces: per piece the longest verbatim run (pitches; intervals) found in the
  training songs, and the share of its COPY_NGRAM-grams found there."""
  pitch_index = music_stats.CopyIndex(music_stats.pitch_sequence(n) for n in train)
  interval_index = music_stats.CopyIndex(music_stats.interval_sequence(n) for n in train)
  out = {}
  for label, notes_list in pieces.items():
    rows = []
    for n in notes_list:
      p, iv = music_stats.pitch_sequence(n), music_stats.interval_sequence(n)
      rows.append({"notes": len(p),
                   "longest_pitch_run": pitch_index.longest_match(p),
                   "longest_interval_run": interval_index.longest_match(iv),
                   f"pitch_{COPY_NGRAM}gram_share": pitch_index.shared(p, COPY_NGRAM),
                   f"interval_{COPY_NGRAM}gram_share": interval_index.shared(iv, COPY_NGRAM)})
    summary = {k: float(np.nanmean([r[k] for r in rows])) if rows else float("nan")
               for k in (rows[0] if rows else {})}
    summary["max_longest_interval_run"] = max((r["longest_interval_run"] for r in rows),
                                              default=0)
    out[label] = {"mean": summary, "pieces": rows}
  return out


# ------------------------------------------------------------------ output


def _fmt(x: float) -> str:
  if not isinstance(x, (int, float)) or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def print_report(report: dict[str, Any]) -> None:
  lk = report.get("likelihood")
  if lk:
    print(f"\nHeld-out likelihood ({lk['songs']} songs, {lk['notes']:,} notes, "
          f"{lk['seconds']:.0f} s of music):")
    print(f"  NLL {lk['nll_per_token']:.4f} nats/token, {lk['nll_per_note']:.3f} nats/note, "
          f"{lk['bits_per_note']:.3f} bits/note, {lk['bits_per_second']:.2f} bits/second")
    if lk.get("bits_per_note_by_field"):
      print("  bits per note by field: " + ", ".join(
          f"{k} {v:.3f}" for k, v in lk["bits_per_note_by_field"].items()))
    if lk.get("by_instrument"):
      top = sorted(lk["by_instrument"].items(), key=lambda kv: -kv[1]["notes"])[:8]
      print("  bits per note by instrument: " + ", ".join(
          f"{k} {v['bits_per_note']:.2f} ({v['notes']} notes)" for k, v in top))
  st = report.get("statistics")
  if st:
    n_gen, n_ref = report["counts"]["generated"], report["counts"]["reference"]
    print(f"\nMusic statistics: {n_gen} generated vs {n_ref} reference pieces "
          "(OA = overlapped area of the two distributions, 1 = identical)")
    print(f"  {'feature':<22}{'generated':>18}{'reference':>18}{'rel diff':>10}{'OA':>7}")
    for name, row in st["table"].items():
      print(f"  {name:<22}{_fmt(row['gen_mean']):>10} ±{_fmt(row['gen_std']):<7}"
            f"{_fmt(row['ref_mean']):>10} ±{_fmt(row['ref_std']):<7}"
            f"{_fmt(row['rel_diff']):>10}{_fmt(row['oa']):>7}")
  keys = report.get("key_agreement")
  if keys:
    print(f"\nKey of prompt = key of continuation: generated {keys['generated']:.2f}, "
          f"real {keys['reference']:.2f} ({keys['pieces']} prompts)")
  cp = report.get("copying")
  if cp:
    print(f"\nCopying (against {report['counts']['train']} training songs):")
    for label, v in cp.items():
      m = v["mean"]
      print(f"  {label:<10} longest verbatim run: pitches {_fmt(m['longest_pitch_run'])}, "
            f"intervals {_fmt(m['longest_interval_run'])} (max "
            f"{m['max_longest_interval_run']}); {COPY_NGRAM}-grams found in train: pitches "
            f"{_fmt(m[f'pitch_{COPY_NGRAM}gram_share'])}, intervals "
            f"{_fmt(m[f'interval_{COPY_NGRAM}gram_share'])}")


def plot_features(stats: dict[str, Any], path: str) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(music_stats.FEATURES)
  cols = 4
  fig, axes = plt.subplots(-(-len(names) // cols), cols, figsize=(16, 3 * -(-len(names) // cols)))
  for ax, name in zip(axes.flat, names):
    for label, rows, color in (("generated", stats["generated"], "tab:orange"),
                               ("reference", stats["reference"], "tab:blue")):
      vals = [r[name] for r in rows if math.isfinite(r[name])]
      if vals:
        ax.hist(vals, bins=15, alpha=0.5, density=True, color=color, label=label)
    oa = stats["table"][name]["oa"]
    ax.set_title(f"{name} (OA {_fmt(oa)})", fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png")
  plt.close(fig)
  paths.write_bytes(path, png.getvalue())
  return path


def _json_safe(x):
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x


# ------------------------------------------------------------------ the binary



def evaluate(f) -> dict[str, Any]:
  """The binary's work, from parsed flags; returns the report written to eval.json."""
  if not f.workdir and (f.split or f.midi_dir or f.samples):
    raise EvalError("--split, --midi_dir and --samples need --workdir (a trained run)")
  if f.split and f.midi_dir:
    raise EvalError("give --split or --midi_dir, not both")
  if f.samples < 0 or f.continue_notes < 0 or f.stride < 0 or f.batch_size < 1:
    raise EvalError("--samples, --continue_notes and --stride must be >= 0, --batch_size >= 1")
  if f.samples and f.generated_dir:
    raise EvalError("give --samples or --generated_dir, not both")
  if (f.samples or f.generated_dir) and not (f.split or f.reference_dir):
    raise EvalError("music statistics need a reference: --split or --reference_dir")
  if not (f.split or f.midi_dir or f.generated_dir or f.samples):
    raise EvalError("nothing to do: give --split/--midi_dir (likelihood) and/or --samples/"
                    "--generated_dir (statistics)")
  report: dict[str, Any] = {"counts": {}}
  run = None
  enc_config = encoding.EncodingConfig()
  if f.workdir:
    from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
    run = inference.load_run(f.workdir, f.checkpoint)
    enc_config = run.enc_config
    print(f"Run {run.workdir}: {run.config.model.name}, {run.kind} codec, step {run.step}",
          flush=True)
  held_out = None
  if f.split:
    held_out = split_songs(run, f.split)
  elif f.midi_dir:
    good = _read_reporting(f.midi_dir, enc_config, report)
    held_out = [(name, _notes_to_ids(run, name, notes), notes) for name, notes in good]
  if held_out is not None:
    report["likelihood"] = likelihood(run, held_out, stride=f.stride or None,
                                      batch_size=f.batch_size)

  if f.samples or f.generated_dir:
    if f.reference_dir:
      reference = [n for _, n in _read_reporting(f.reference_dir, enc_config, report)]
    else:
      reference = [notes for _, _, notes in held_out]
    prompts: list[encoding.Notes] = []
    if f.generated_dir:
      generated = [n for _, n in _read_reporting(f.generated_dir, enc_config, report)]
    else:
      generated, prompts = _generate(run, f, reference)
    if prompts:
      k = f.continue_notes
      new = [_after(g, len(p)) for g, p in zip(generated, prompts)]
      real_next = [_after(r, k) for r in reference[:len(prompts)]]
      agree = lambda a, b: music_stats.keys_agree(music_stats.estimate_key(a),
                                                  music_stats.estimate_key(b))
      report["key_agreement"] = {
          "pieces": len(prompts),
          "generated": float(np.mean([agree(p, g) for p, g in zip(prompts, new)])),
          "reference": float(np.mean([agree(_first(r, k), n)
                                      for r, n in zip(reference, real_next)]))}
      generated = new
    report["counts"].update(generated=len(generated), reference=len(reference))
    report["statistics"] = statistics(generated, reference, enc_config.grid_ms)
    if f.copying and run is not None:
      train = [notes for _, _, notes in split_songs(run, run.config.data.train_split)]
      report["counts"]["train"] = len(train)
      report["copying"] = copying(train, {"generated": generated, "real": reference})
  return report


def _read_reporting(path: str, enc_config, report: dict[str, Any]):
  """read_midi_dir, with each skipped file printed and listed in the report."""
  good, skipped = read_midi_dir(path, enc_config)
  for name, reason in skipped:
    print(f"  skipped {paths.join(path, name)}: {reason}", flush=True)
  report.setdefault("skipped", []).extend(
      {"file": paths.join(path, n), "reason": r} for n, r in skipped)
  return good


def _first(notes: encoding.Notes, k: int) -> encoding.Notes:
  return encoding.Notes(*(np.asarray(getattr(notes, c))[:k] for c in encoding.notes.FIELDS))


def _after(notes: encoding.Notes, k: int) -> encoding.Notes:
  return encoding.Notes(*(np.asarray(getattr(notes, c))[k:] for c in encoding.notes.FIELDS))


def _generate(run, f, reference) -> tuple[list[encoding.Notes], list[encoding.Notes]]:
  """--samples pieces (continuations of reference songs' first notes with --continue_notes)."""
  from virtuoso_jax import inference  # pylint: disable=g-import-not-at-top
  s = run.config.sample
  pick = lambda flag, default: default if flag is None else flag
  common = dict(temperature=pick(f.temperature, s.temperature), top_k=pick(f.top_k, s.top_k),
                top_p=pick(f.top_p, s.top_p), max_notes=f.max_notes)
  print(f"Generating {f.samples} pieces of {f.max_notes} notes (temperature "
        f"{common['temperature']}, top_k {common['top_k']}, top_p {common['top_p']})", flush=True)
  if not f.continue_notes:
    samples = inference.generate(run, inference.SampleRequest(num_samples=f.samples,
                                                              seed=f.seed, **common))
    return [x.notes for x in samples], []
  generated, prompts = [], []
  usable = [r for r in reference if len(r) > f.continue_notes]
  if not usable:
    raise EvalError(f"--continue_notes={f.continue_notes}: no reference piece is that long")
  for i in range(f.samples):
    prompt = _first(usable[i % len(usable)], f.continue_notes)
    samples = inference.generate(run, inference.SampleRequest(
        num_samples=1, seed=f.seed + i, prompt_notes=prompt, **common))
    generated.append(samples[0].notes)
    prompts.append(run.codec.quantize(prompt) if hasattr(run.codec, "quantize") else prompt)
    _progress("continuations")(i + 1, f.samples)
  return generated, prompts


def main(argv):
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.quiet_library_logs()  # Orbax's INFO chatter; our lines are printed.
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = FLAGS
  from virtuoso_jax import run_dir  # pylint: disable=g-import-not-at-top
  try:
    report = evaluate(f)
  except (EvalError, run_dir.RunError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  out = f.out or paths.join(f.workdir or ".", "eval")
  paths.makedirs(out)
  print_report(report)
  written = [paths.join(out, "eval.json")]
  paths.write_json(written[0], _json_safe(report), indent=1, sort_keys=True)
  if "statistics" in report:
    written.append(plot_features(report["statistics"], paths.join(out, "features.png")))
  print("\nWrote " + ", ".join(written), flush=True)


def run():
  """Console-script entry point (`virtuoso-evaluate`)."""
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # Before JAX starts: this process's CPU settings.
  app.run(main)


if __name__ == "__main__":
  run()
