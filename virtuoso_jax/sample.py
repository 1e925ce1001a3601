r"""Samples music from a trained run: MIDI, piano-roll PNG, TXT (char models), WAV (FluidSynth).

  python -m virtuoso_jax.sample --workdir=runs/quickstart            # -> runs/quickstart/samples
  python -m virtuoso_jax.sample --workdir=runs/rga --out=out --num_samples=4 --seed=1 \
      --temperature=0.9 --top_p=0.95 --max_seconds=30
  python -m virtuoso_jax.sample --workdir=runs/rga --prompt_midi=song.mid --prompt_notes=64 \
      --instruments=0,40,128 --max_notes=200
  python -m virtuoso_jax.sample --workdir=runs/char --prompt_text='SONG=Relax_with_300_notes'
  # Models trained beyond continuation (configs/rga.py:control):
  python -m virtuoso_jax.sample --workdir=runs/control --prompt_midi=song.mid --infill=8:12
  python -m virtuoso_jax.sample --workdir=runs/control --prompt_midi=song.mid --keep_melody
  python -m virtuoso_jax.sample --workdir=runs/control --prompt_midi=song.mid --keep_instruments=0
  python -m virtuoso_jax.sample --workdir=runs/control --density=3 --polyphony=1 --max_notes=200

It restores the model parameters only (the latest checkpoint, or `--checkpoint=best` / a step),
rebuilds the model from <workdir>/config.json and the codec from <workdir>/encoding.json (or the
dataset's encoding), and writes <out>/sample_XX.{mid,png} (+ .txt for char models, + .wav when
FluidSynth is installed). The work is virtuoso_jax.inference's; this binary reads flags.
"""

from absl import app
from absl import flags

from virtuoso_jax import config_lib
from virtuoso_jax import inference
from virtuoso_jax import paths
from virtuoso_jax import run_dir

flags.DEFINE_string("workdir", None, "Training run directory (config.json, checkpoints/); local or gs://.")
flags.DEFINE_string("out", None, "Output folder, local or gs:// (default <workdir>/samples).")
flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number.")
flags.DEFINE_integer("num_samples", None, "Samples generated together (default config.sample).")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_float("temperature", None, "0 = greedy (default config.sample.temperature).")
flags.DEFINE_integer("top_k", None, "0 = off (default config.sample.top_k).")
flags.DEFINE_float("top_p", None, "1.0 = off (default config.sample.top_p).")
flags.DEFINE_integer("max_tokens", None, "New tokens per sample (default config.sample.max_new_tokens).")
flags.DEFINE_integer("max_notes", None, "Stop after this many new notes.")
flags.DEFINE_float("max_seconds", None, "Stop after this many seconds of new music.")
flags.DEFINE_string("prompt_midi", None, "Continue this MIDI file.")
flags.DEFINE_integer("prompt_notes", 0, "Use the prompt's last N notes (0 = all).")
flags.DEFINE_float("prompt_seconds", 0.0, "Use the notes of the prompt's last S seconds.")
flags.DEFINE_string("prompt_text", None, "Char models: a TXT prompt, e.g. 'SONG=Relax_with_300_notes'.")
flags.DEFINE_list("instruments", None, "Restrict generated instruments (GM programs, 128 = drums).")
flags.DEFINE_string("sf2", None, "Soundfont for the WAV (default: pretty_midi's GM soundfont).")
flags.DEFINE_bool("audio", True, "Write a WAV when FluidSynth is installed.")
flags.DEFINE_enum("memory_check", "refuse", ["refuse", "warn", "off"],
                  "Memory pre-flight of the compiled sampler (KV caches): refuse a batch that "
                  "cannot fit, naming one that does; warn; or off.")
flags.DEFINE_integer("memory_limit_mib", 0, "Plan for at most this much memory (0 = all free).")
# Beyond continuation: models trained with data.*_rate > 0 (e.g. configs/rga.py:control).
flags.DEFINE_string("infill", None, "START_S:END_S: regenerate the notes of --prompt_midi "
                    "starting in that span given the music before and after it; every note "
                    "outside it is kept, and the new music runs until the kept music resumes.")
flags.DEFINE_bool("infill_ties", False, "Let the infilled span's notes sound on into the kept "
                  "music after it (default: each ends where its voice's kept music resumes, "
                  "so the end seam has no notes piled up under it).")
flags.DEFINE_list("keep_instruments", None, "Keep these parts of --prompt_midi exactly (GM "
                  "programs, 128 = drums) and generate the others around them.")
flags.DEFINE_bool("keep_melody", False, "Keep the melody (top line) of --prompt_midi exactly and "
                  "generate the accompaniment.")
flags.DEFINE_integer("density", None, "Note density bin, 0 = sparsest .. N-1 = busiest; the "
                     "run's bins are quantiles of its training music (edges in notes/s: the "
                     "run's encoding.json, controls.density_edges).")
flags.DEFINE_integer("polyphony", None, "Polyphony bin, 0 = fewest notes sounding together .. "
                     "N-1 = thickest (edges: controls.polyphony_edges).")
flags.DEFINE_integer("pitch_range", None, "Pitch range bin, 0 = narrowest .. N-1 = widest "
                     "(edges in semitones: controls.pitch_range_edges).")

FLAGS = flags.FLAGS


def main(argv):
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.quiet_library_logs()  # Orbax's INFO chatter; our lines are printed.
  if len(argv) > 1:
    raise SystemExit(f"error: unexpected arguments {' '.join(argv[1:])} (flags are --name=value)")
  f = FLAGS
  try:
    if not f.workdir:
      raise inference.SampleError("--workdir is required (the training run to sample from)")
    # Everything the flags alone decide is checked before the model loads (seconds).
    inference.check_knobs(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed)
    instruments = inference.parse_instruments(f.instruments)
    pick = lambda flag, default: default if flag is None else flag
    lengths = inference.SampleRequest(
        num_samples=pick(f.num_samples, 1), max_tokens=f.max_tokens, max_notes=f.max_notes,
        max_seconds=f.max_seconds, instruments=instruments)
    if f.prompt_notes < 0 or f.prompt_seconds < 0:
      raise inference.SampleError("--prompt_notes and --prompt_seconds must be >= 0")
    if f.prompt_midi and f.prompt_text is not None:
      raise inference.SampleError("give --prompt_midi or --prompt_text, not both")
    if f.prompt_midi and not paths.is_file(f.prompt_midi):
      raise inference.SampleError(f"prompt MIDI {f.prompt_midi} does not exist")
    infill = None
    if f.infill is not None:
      try:
        infill = tuple(float(x) for x in f.infill.split(":"))
        if len(infill) != 2:
          raise ValueError(f.infill)
      except ValueError:
        raise inference.SampleError(f"--infill must be START_S:END_S (seconds), got "
                                    f"{f.infill!r}") from None
    attributes = {k: v for k, v in (("density", f.density), ("polyphony", f.polyphony),
                                    ("pitch_range", f.pitch_range)) if v is not None}
    # The codec alone (no JAX) reads the prompt, so a bad prompt never waits for the model.
    _, codec = run_dir.load_codec(f.workdir)
    prompt_notes = None
    if f.prompt_midi:
      prompt_notes = inference.read_prompt_midi(
          f.prompt_midi, codec.config, last_notes=f.prompt_notes, last_seconds=f.prompt_seconds,
          shift=infill is None and f.keep_instruments is None and not f.keep_melody)
    inference.token_budget(codec, lengths)  # A length that cannot be honoured is refused here.
    run = inference.load_run(f.workdir, f.checkpoint)
    s = run.config.sample
    # Without a length flag the config's max_new_tokens is the length; with one, the budget is
    # sized to fit it (an explicit --max_tokens too small for it is refused).
    max_tokens = f.max_tokens
    if max_tokens is None and not f.max_notes and not f.max_seconds:
      max_tokens = s.max_new_tokens
    request = inference.SampleRequest(
        num_samples=lengths.num_samples if f.num_samples is not None else s.num_samples,
        seed=f.seed, temperature=pick(f.temperature, s.temperature), top_k=pick(f.top_k, s.top_k),
        top_p=pick(f.top_p, s.top_p), max_tokens=max_tokens,
        max_notes=f.max_notes, max_seconds=f.max_seconds, prompt_notes=prompt_notes,
        prompt_text=f.prompt_text, instruments=instruments, memory_check=f.memory_check,
        memory_limit_mib=f.memory_limit_mib, infill=infill, infill_ties=f.infill_ties,
        keep_instruments=f.keep_instruments, keep_melody=f.keep_melody,
        attributes=attributes or None)
    _, why = inference.token_budget(run.codec, request)
    out = f.out or paths.join(run.workdir, "samples")
    print(f"Sampling {request.num_samples} x up to {why} from "
          f"{run.workdir} ({run.config.model.name}, {run.kind} codec, step {run.step}); "
          f"temperature {request.temperature}, top_k {request.top_k}, top_p {request.top_p}, "
          f"seed {request.seed}", flush=True)
    if prompt_notes is not None:
      print(f"Prompt: {f.prompt_midi}: {inference.summarize(prompt_notes, run.enc_config)}",
            flush=True)
    samples = inference.generate(run, request)
    inference.write_outputs(run, samples, out, sf2=f.sf2, audio=f.audio)
  # (ConfigError: the memory pre-flight's refusal too.)
  except (inference.SampleError, FileNotFoundError, config_lib.ConfigError) as e:
    raise SystemExit(f"error: {e}") from None
  print(f"Wrote {len(samples)} sample(s) to {out}", flush=True)


def run():
  """Console-script entry point (`virtuoso-sample`); `python -m` runs the same."""
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # Before JAX starts: this process's CPU settings.
  app.run(main)


if __name__ == "__main__":
  run()
