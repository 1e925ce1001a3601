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
  python -m virtuoso_jax.compose set --session=comp --temperature=0.9 --notes=16  # kept
  python -m virtuoso_jax.compose infill --session=comp --span=8:12 --candidates=3  # redo 8-12 s
  python -m virtuoso_jax.compose accompany --session=comp --keep_melody  # (or --keep_instruments)
  python -m virtuoso_jax.compose accept --session=comp --candidate=1
  python -m virtuoso_jax.compose undo --session=comp
  python -m virtuoso_jax.compose show --session=comp
  python -m virtuoso_jax.compose export --session=comp --out=final     # final.mid / final.png

`continue` writes <session>/candidate_XX.{mid,png} (the composition plus that candidate block);
`accept` makes one the composition (<session>/composition.{mid,png}); `continue` again replaces
the candidates (a new seed each time). Flags given to `continue` apply to that block only;
`set` (or `continue --keep`) makes them the session's settings, which `show` prints.
Only `start` and `continue` load the model; accept/undo/show/set/export read the run's codec
(config.json, encoding.json) and never import JAX.

state.json is checked against an explicit schema on every load and before every save
(`validate_state`): a damaged or hand-edited file is one error naming the file and the field.
The sessions are virtuoso_jax.composition's; this binary reads flags and prints.
"""

import dataclasses

from absl import app
from absl import flags

from virtuoso_jax import composition
from virtuoso_jax import inference
from virtuoso_jax import paths
from virtuoso_jax import run_dir

COMMANDS = ("start", "continue", "infill", "accompany", "set", "accept", "undo", "show",
            "export")

flags.DEFINE_string("session", None, "Session folder (holds state.json and the rendered files).")
flags.DEFINE_string("workdir", None, "start: the trained run to compose with.")
flags.DEFINE_string("checkpoint", "latest", "start: latest | best | a step number.")
flags.DEFINE_string("midi", None, "start: begin from this MIDI file.")
flags.DEFINE_string("song", None, "start: begin from a dataset song (index or name).")
flags.DEFINE_string("split", "train", "start: the dataset split of --song.")
flags.DEFINE_integer("prompt_notes", 0, "start: keep the first N notes of --song, or the last N "
                     "of --midi (0 = all).")
flags.DEFINE_bool("overwrite", False, "start: replace an existing session.")
flags.DEFINE_integer("seed", 0, "start: the first block's seed (each continue adds one).")
flags.DEFINE_integer("notes", None, "continue/set: notes per block.")
flags.DEFINE_float("seconds", None, "continue/set: seconds per block (instead of notes).")
flags.DEFINE_integer("candidates", None, "continue/set: candidate blocks to generate.")
flags.DEFINE_float("temperature", None, "continue/set: sampling temperature (0 = greedy).")
flags.DEFINE_integer("top_k", None, "continue/set: top-k (0 = off).")
flags.DEFINE_float("top_p", None, "continue/set: top-p (1.0 = off).")
flags.DEFINE_list("instruments", None, "continue/set: restrict to these instruments (128 = "
                  "drums); 'any' lifts the restriction.")
flags.DEFINE_bool("keep", False, "continue: also make this block's flags the session's settings "
                  "(as `set` does); without it they apply to this block only.")
flags.DEFINE_string("span", None, "infill: START_S:END_S of the composition to redo (a model "
                    "trained beyond continuation, e.g. configs/rga.py:control).")
flags.DEFINE_list("keep_instruments", None, "accompany: keep these parts (GM programs, 128 = "
                  "drums) and write the others.")
flags.DEFINE_bool("keep_melody", False, "accompany: keep the melody (top line), write the rest.")
flags.DEFINE_integer("candidate", 0, "accept: which candidate.")
flags.DEFINE_string("out", None, "export: output stem (default <session>/composition).")
flags.DEFINE_string("sf2", None, "export: soundfont for the WAV.")
flags.DEFINE_bool("audio", True, "export: also write a WAV when FluidSynth is installed.")

FLAGS = flags.FLAGS


def _setting_changes(f) -> dict:
  """The settings flags given (continue / set), checked before anything loads."""
  instruments = None
  if f.instruments is not None:
    if [x.strip().lower() for x in f.instruments] == ["any"]:
      instruments = "any"
    else:
      instruments = inference.parse_instruments(f.instruments)
  inference.check_knobs(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p)
  changes = dict(temperature=f.temperature, top_k=f.top_k, top_p=f.top_p,
                 candidates=f.candidates, instruments=instruments)
  if f.seconds is not None and f.notes is not None:
    raise composition.SampleError("give --notes or --seconds per block, not both")
  if f.seconds is not None:
    changes["block_seconds"], changes["block_notes"] = f.seconds, 0
  elif f.notes is not None:
    changes["block_notes"], changes["block_seconds"] = f.notes, 0.0
  return changes


def _command(cmd: str, f) -> None:
  if cmd == "start":
    if not f.workdir:
      raise composition.SampleError("start needs --workdir (the trained run)")
    if f.midi and f.song is not None:
      raise composition.SampleError("start takes --midi or --song, not both")
    inference.check_knobs(seed=f.seed)
    if f.prompt_notes < 0:
      raise composition.SampleError(f"--prompt_notes must be >= 0, got {f.prompt_notes}")
    if paths.exists(paths.join(f.session, composition.STATE_FILE)) and not f.overwrite:
      raise composition.SampleError(f"session {paths.absolute(f.session)} already exists (pass --overwrite "
                        "to start over, or use continue/accept/undo to go on with it)")
    notes, source = None, "nothing"
    if f.midi:  # Read with the codec alone, before the model loads.
      config, codec = run_dir.load_codec(f.workdir)
      notes = inference.read_prompt_midi(f.midi, codec.config, last_notes=f.prompt_notes)
      notes, source = codec.quantize(notes) if config.data.encoding == "token" else notes, f.midi
    run = inference.load_run(f.workdir, f.checkpoint)
    if f.song is not None:
      title, notes = composition.dataset_song(run, f.song, f.split)
      notes, source = composition.first_notes(notes, f.prompt_notes), f"dataset song {title!r}"
    session = composition.Session.create(f.session, f.workdir, checkpoint=f.checkpoint, notes=notes,
                             source=source, seed=f.seed, overwrite=f.overwrite)
    session._run = run  # pylint: disable=protected-access
    if len(session.notes):
      written = session.export()
      print(f"Started {session.path} from {source}: {len(session.notes)} notes -> "
            f"{', '.join(written)}")
    else:
      print(f"Started {session.path} from nothing")
    return
  changes = _setting_changes(f) if cmd in ("continue", "set", "infill", "accompany") else {}
  session = composition.Session.load(f.session)
  if cmd in ("infill", "accompany"):
    knobs = {k: changes.get(k) for k in ("temperature", "top_k", "top_p", "candidates",
                                         "instruments")}
    if cmd == "infill":
      try:
        start, end = (float(x) for x in (f.span or "").split(":"))
      except ValueError:
        raise composition.SampleError(f"infill needs --span=START_S:END_S (seconds), got "
                                      f"{f.span!r}") from None
      cands = session.infill(start, end, **knobs)
      what = f"span {start:g}-{end:g} s redone"
    else:
      if f.keep_instruments is None and not f.keep_melody:
        raise composition.SampleError("accompany needs --keep_instruments=... or --keep_melody")
      cands = session.accompany(keep_instruments=f.keep_instruments, keep_melody=f.keep_melody,
                                **knobs)
      what = "melody kept" if f.keep_melody else f"instruments {f.keep_instruments} kept"
    enc = session.enc_config
    for i, c in enumerate(cands):
      written = inference.write_piece(c, enc, paths.join(session.path, f"candidate_{i:02d}"),
                                    audio=False, title=f"candidate {i}: {what}")
      print(f"candidate {i} ({what}): {inference.summarize(c, enc)} -> {', '.join(written)}")
    print(f"accept one with: python -m virtuoso_jax.compose accept --session={f.session} "
          f"--candidate=N")
    return
  if cmd == "continue":
    settings = session.block_settings(**changes)  # Checked before the model loads.
    before, seed = len(session.notes), session.state["seed"]
    cands = session.continue_(keep=f.keep, **changes)
    enc = session.enc_config
    kept = " (kept as the session's settings)" if f.keep else " (this block only)"
    print(f"block: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items())
          + kept + f"; seed {seed}")
    for i, c in enumerate(cands):
      stem = paths.join(session.path, f"candidate_{i:02d}")
      written = inference.write_piece(c, enc, stem, audio=False,
                                     title=f"candidate {i}: +{len(c) - before} notes")
      stopped = session.last_samples[i].stopped
      print(f"candidate {i}: +{len(c) - before} notes -> {inference.summarize(c, enc)}; "
            f"stopped: {stopped} -> {', '.join(written)}")
    print(f"accept one with: python -m virtuoso_jax.compose accept --session={f.session} "
          f"--candidate=N")
  elif cmd == "set":
    if not any(v is not None for v in changes.values()):
      raise composition.SampleError("set needs at least one of --notes, --seconds, --candidates, "
                        "--temperature, --top_k, --top_p, --instruments")
    settings = session.set_settings(**changes)
    print("settings: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items()))
  elif cmd == "accept":
    notes = session.accept(f.candidate)
    written = session.export()
    print(f"Accepted candidate {f.candidate}: composition now {len(notes)} notes -> "
          f"{', '.join(written)}")
  elif cmd == "undo":
    notes = session.undo()
    msg = f"Undone: composition back to {len(notes)} notes"
    if len(notes):
      msg += " -> " + ", ".join(session.export())
    print(msg)
  elif cmd == "show":
    print(session.describe())
  elif cmd == "export":
    written = session.export(f.out, sf2=f.sf2, audio=f.audio)
    print(f"Exported {len(session.notes)} notes -> {', '.join(written)}")


def main(argv):
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.quiet_library_logs()  # Orbax's INFO chatter; our lines are printed.
  usage = f"python -m virtuoso_jax.compose {{{'|'.join(COMMANDS)}}} --session=DIR [flags]"
  if len(argv) < 2:
    raise SystemExit(f"error: no command; usage: {usage}")
  if len(argv) > 2 or argv[1] not in COMMANDS:
    raise SystemExit(f"error: unknown command {' '.join(argv[1:])!r}; usage: {usage}")
  if not FLAGS.session:
    raise SystemExit("error: --session is required (the session folder)")
  try:
    _command(argv[1], FLAGS)
  except (composition.SampleError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None


def run():
  """Console-script entry point (`virtuoso-compose`); `python -m` runs the same."""
  from virtuoso_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_binary()  # Before JAX starts: this process's CPU settings.
  app.run(main)


if __name__ == "__main__":
  run()
